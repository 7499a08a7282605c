"""SIGTERM drains and exits 0; a restarted processor finishes the rest; nothing is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from processor.settings import Settings
from tests.integration.harness import (
    committed,
    events_by_id,
    produce,
    request,
    unique_settings,
    wait_for,
    wait_for_events,
)
from tests.integration.services import Services

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


async def _start(settings: Settings, log: Path) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "VOXLINE_GROUP_ID": settings.kafka.group_id,
        "VOXLINE_REQUEST_TOPIC": settings.kafka.request_topic,
        "VOXLINE_COMPLETION_TOPIC": settings.kafka.completion_topic,
        "VOXLINE_DLQ_TOPIC": settings.kafka.dlq_topic,
        "S3_ENDPOINT_URL": settings.store.endpoint_url or "",
        "S3_BUCKET": settings.store.bucket,
        "S3_PREFIX": settings.store.prefix,
        "VOXLINE_BACKEND": "espeak",
        "VOXLINE_MAX_IN_FLIGHT": "4",
        "VOXLINE_DRAIN_TIMEOUT": "20",
        "VOXLINE_HTTP_PORT": "-1",
    }
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "processor",
            "run",
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=out,
        )


async def test_sigterm_drains_exits_zero_and_a_restart_finishes(
    services: Services, tmp_path: Path
) -> None:
    settings = unique_settings(services, "term")
    ids = [f"term-{i:03d}" for i in range(120)]
    text = "Graceful shutdown keeps every request; none is lost or skipped."
    await produce(settings, [request(rid, text) for rid in ids])
    log = tmp_path / "processor.log"
    first = await _start(settings, log)

    async def some_done() -> bool:
        return len(await events_by_id(settings)) >= 15

    await wait_for(some_done, timeout=120, what="the first processor's first events")
    first.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(first.wait(), timeout=60)
    assert code == 0, log.read_text()[-3000:]
    done_before = set(await events_by_id(settings))
    assert len(done_before) < len(ids), "SIGTERM came too late to test anything"
    offsets = await committed(settings)
    # Every committed record has its event: commits never pass unfinished work.
    assert sum(offsets.values()) <= len(done_before)

    second = await _start(settings, log)
    try:
        events = await wait_for_events(settings, set(ids), timeout=180)
    finally:
        second.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(second.wait(), timeout=60) == 0
    assert set(events) == set(ids)
    assert all(m.json()["status"] == "succeeded" for ms in events.values() for m in ms)
    # Duplicates are limited to what was in flight at the SIGTERM (at most the window).
    assert sum(len(ms) for ms in events.values()) - len(ids) <= 4
