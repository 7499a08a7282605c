"""Transient failures are retried, permanent ones dead-lettered at once, and a dead letter
replayed after the cause is fixed succeeds — against a fake OpenAI-compatible server."""

from __future__ import annotations

import pytest

from processor.ops.client import read_dead_letters, replay
from tests.fakes.openai_server import running_fake
from tests.integration.harness import (
    Msg,
    events_by_id,
    produce,
    read_topic,
    request,
    running,
    unique_settings,
    wait_for,
    wait_for_events,
)
from tests.integration.services import Services

pytestmark = pytest.mark.integration


async def test_transient_failures_are_retried_until_all_succeed(services: Services) -> None:
    ids = [f"flaky-{i}" for i in range(10)]
    async with running_fake(fail_first_n=8, latency_ms=5) as fake:
        settings = unique_settings(
            services, "flaky", backend="openai", backend_url=fake.url, max_in_flight=4
        )
        async with running(settings):
            await produce(settings, [request(rid, "a sentence to speak") for rid in ids])
            events = await wait_for_events(settings, set(ids), timeout=120)
        stats = fake.stats()
    bodies = [events[rid][0].json() for rid in ids]
    assert all(b["status"] == "succeeded" for b in bodies), bodies
    assert sum(b["attempts"] for b in bodies) == 10 + 8  # every failure was retried once more
    assert stats["requests"] == 18
    assert await read_topic(settings.kafka, settings.kafka.dlq_topic) == []


async def test_422_is_dead_lettered_after_one_attempt_then_replayed(services: Services) -> None:
    ids = [f"reject-{i}" for i in range(5)]
    async with running_fake(fail_status=422) as fake:
        settings = unique_settings(
            services, "reject", backend="openai", backend_url=fake.url, max_in_flight=4
        )
        async with running(settings):
            await produce(settings, [request(rid, "some text") for rid in ids])
            events = await wait_for_events(settings, set(ids), timeout=60)
            assert fake.stats()["requests"] == 5, "a 422 must not be retried"
            for rid in ids:
                body = events[rid][0].json()
                assert body["status"] == "failed"
                assert body["reason"] == "permanent"
                assert body["attempts"] == 1
                assert body["error"]["type"] == "http_422"
            letters = await read_dead_letters(settings.kafka)
            assert {d.request_id for d in letters} == set(ids)
            for d in letters:
                assert d.header("dlq.http.status") == "422"
                assert d.header("dlq.reason") == "permanent"
                assert d.header("dlq.stage") == "synthesize"
                assert d.header("dlq.attempts") == "1"

            # The cause is fixed: the server accepts the requests again.
            fake.set(fail_status=None)
            assert await replay(settings.kafka, letters) == 5

            replayed: dict[str, list[Msg]] = {}

            async def both_outcomes() -> bool:
                nonlocal replayed
                replayed = await events_by_id(settings)
                return all(len(replayed.get(rid, [])) >= 2 for rid in ids)

            await wait_for(both_outcomes, timeout=60, what="the replayed requests' events")
    for rid in ids:
        statuses = [m.json()["status"] for m in replayed[rid]]
        assert statuses == ["failed", "succeeded"], statuses
    resent = [
        m
        for m in await read_topic(settings.kafka, settings.kafka.request_topic)
        if m.headers.get("dlq.replay_count")
    ]
    assert len(resent) == 5
    assert {m.headers["dlq.replay_count"] for m in resent} == {"1"}
