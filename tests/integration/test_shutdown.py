"""SIGTERM drains and exits 0; a restarted processor finishes the rest; nothing is lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.support import Fleet, processor_env
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


async def test_sigterm_drains_exits_zero_and_a_restart_finishes(
    services: Services, tmp_path: Path
) -> None:
    settings = unique_settings(services, "term")
    ids = [f"term-{i:03d}" for i in range(120)]
    text = "Graceful shutdown keeps every request; none is lost or skipped."
    await produce(settings, [request(rid, text) for rid in ids])
    # One log for both processors; espeak-ng, a window of 4 and 20 s to drain.
    env = processor_env(
        settings,
        "",
        VOXLINE_BACKEND="espeak",
        VOXLINE_BACKEND_URL=None,
        VOXLINE_MAX_IN_FLIGHT="4",
        VOXLINE_DRAIN_TIMEOUT="20",
    )
    fleet = Fleet(settings, env, tmp_path)
    first = await fleet.start("processor")

    async def some_done() -> bool:
        return len(await events_by_id(settings)) >= 15

    await wait_for(some_done, timeout=120, what="the first processor's first events")
    code = await fleet.terminate(first)
    assert code == 0, first.log_text()[-3000:]
    done_before = set(await events_by_id(settings))
    assert len(done_before) < len(ids), "SIGTERM came too late to test anything"
    offsets = await committed(settings)
    # Every committed record has its event: commits never pass unfinished work.
    assert sum(offsets.values()) <= len(done_before)

    second = await fleet.start("processor")
    try:
        events = await wait_for_events(settings, set(ids), timeout=180)
    finally:
        assert await fleet.terminate(second) == 0
    assert set(events) == set(ids)
    assert all(m.json()["status"] == "succeeded" for ms in events.values() for m in ms)
    # Duplicates are limited to what was in flight at the SIGTERM (at most the window).
    assert sum(len(ms) for ms in events.values()) - len(ids) <= 4
