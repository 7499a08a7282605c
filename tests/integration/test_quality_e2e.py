"""The quality gate end to end, on the real broker and store, against the fake OpenAI server
in each failure mode: a bad chunk is caught and regenerated and the request succeeds; a
backend bad on every try dead-letters the request as ``quality`` with its measures."""

from __future__ import annotations

import dataclasses

import pytest

from processor.ops.client import read_dead_letters
from processor.quality import Thresholds
from processor.settings import Settings
from tests.fakes.openai_server import running_fake
from tests.integration import harness as h
from tests.integration.services import Services

pytestmark = pytest.mark.integration

TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was "
    "the age of foolishness, it was the epoch of belief, it was the epoch of incredulity."
)
MODES = ("silence", "cut", "loop", "babble", "clipped", "nan")


def gated(settings: Settings) -> Settings:
    quality = Thresholds(enabled=True, attempts=3)
    return dataclasses.replace(
        settings, backends=dataclasses.replace(settings.backends, quality=quality)
    )


async def test_each_failure_mode_is_caught_and_regenerated(services: Services) -> None:
    async with running_fake(latency_ms=5) as fake:
        settings = gated(
            h.unique_settings(services, "quality", backend="openai", backend_url=fake.url)
        )
        async with h.running(settings):
            for mode in MODES:
                before = fake.stats()["requests"]
                assert isinstance(before, int)
                fake.set(bad_audio=mode, bad_first_n=1)
                await h.produce(settings, [h.request(f"q-{mode}", TEXT, language="en")])
                events = await h.wait_for_events(settings, {f"q-{mode}"}, timeout=60)
                body = events[f"q-{mode}"][0].json()
                assert body["status"] == "succeeded", (mode, body)
                assert fake.stats()["requests"] == before + 2, f"{mode}: one regeneration"
        assert await h.read_topic(settings.kafka, settings.kafka.dlq_topic) == []


async def test_bad_on_every_try_is_dead_lettered_as_quality(services: Services) -> None:
    async with running_fake(latency_ms=5, bad_audio="loop", bad_every=1) as fake:
        settings = gated(
            h.unique_settings(services, "quality-dead", backend="openai", backend_url=fake.url)
        )
        async with h.running(settings):
            await h.produce(settings, [h.request("q-dead", TEXT, language="en", seed=7)])
            events = await h.wait_for_events(settings, {"q-dead"}, timeout=60)
            (letter,) = await read_dead_letters(settings.kafka)
        assert fake.stats()["requests"] == 3
    body = events["q-dead"][0].json()
    assert (body["status"], body["reason"]) == ("failed", "quality")
    assert body["error"]["type"] == "quality_repetition"
    assert letter.header("dlq.reason") == "quality"
    assert letter.header("dlq.quality.checks") == "repetition"
    assert float(letter.header("dlq.quality.repetition") or 0) > 0.95
