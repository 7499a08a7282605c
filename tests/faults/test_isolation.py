"""Isolation between backends: two backends (each a fake in its own process), one of them
down mid-run; the other's throughput during the outage stays at least 0.9 of what it was
before, nothing is dead-lettered and nothing is lost.

The outage lasts ``VOXLINE_ISOLATION_OUTAGE_S`` seconds (10 by default, the CI size; the
issue's full size is 60: ``VOXLINE_ISOLATION_OUTAGE_S=60 .venv/bin/pytest
tests/faults/test_isolation.py``). Each backend has a fixed window of 4 calls and answers in
0.4 s, so its throughput is bounded by the fake's pace (10 calls/s), not by this machine's CPU:
the ratio measures admission, not load.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from tests.faults.support import FakeBackend, drill, produce, report_and_check, seconds
from tests.integration.services import Services

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

OUTAGE_S = float(os.environ.get("VOXLINE_ISOLATION_OUTAGE_S", "10"))
#: Seconds measured before the outage (after a warm-up of ``WARM`` outcomes).
BEFORE_S = 8.0
WARM = 20
PACE = ("--latency-ms", "400", "--jitter-ms", "0", "--ms-per-char", "60")  # a voice's pace
WINDOW = 4
#: Calls per second one backend can answer with its window full.
RATE = WINDOW / 0.4

CONFIG = """
default_backend = "a"
[backends.a]
kind = "openai"
url = "{url}"
max_in_flight = 4
adaptive = false
[backends.b]
kind = "openai"
url = "B_URL"
max_in_flight = 4
adaptive = false
"""


def requests(name: str, n_b: int, every: int) -> list[tuple[bytes, bytes]]:
    """``n_b`` requests for b with one for a after every ``every`` of them."""
    out: list[tuple[bytes, bytes]] = []
    for i in range(n_b):
        for backend in ("b", "a") if i % every == 0 else ("b",):
            rid = f"{name}-{backend}-{i:05d}"
            body = {"request_id": rid, "text": f"Isolation drill {i}.", "backend": backend}
            out.append((rid.encode(), json.dumps(body).encode()))
    return out


def rate(stamps: list[int], start: float, end: float) -> float:
    """Outcomes per second stamped in [start, end) (wall clock, seconds)."""
    inside = sum(start * 1000 <= s < end * 1000 for s in stamps)
    return inside / (end - start)


async def outage(fake: FakeBackend, lasting: float) -> tuple[float, float, int]:
    """``fake`` drops every connection for ``lasting`` seconds: (began, ended, calls dropped)."""
    await fake.control(down=True)
    began = time.time()
    try:
        await asyncio.sleep(lasting)  # the fault window
    finally:
        stats = await fake.control(down=False)
    return began, time.time(), int(stats["statuses"].get("0", 0))


async def test_one_backend_down_leaves_the_other_at_full_pace(
    services: Services, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = await FakeBackend.start(tmp_path / "fake-b.log", *PACE)
    try:
        config = CONFIG.replace("B_URL", other.url)
        async with drill(services, tmp_path, "isolation", fake_args=PACE, config=config) as run:
            # Enough of b's work to last the whole run at its fastest, and as much of a's, so
            # that a has a backlog of its own all through the outage.
            n_b = int((BEFORE_S + OUTAGE_S + 5) * RATE * 1.2)
            batch = requests(run.name, n_b, every=1)
            await produce(run.settings, batch)
            ids = {k.decode() for k, _ in batch}
            await run.fleet.start()

            def b_stamps() -> list[int]:
                return [s.timestamp_ms for r, s in run.completions.first.items() if "-b-" in r]

            await run.completions.wait_count(WARM, timeout=120)
            measured = time.time()
            await asyncio.sleep(BEFORE_S)  # the measurement window before the fault
            began, ended, dropped = await outage(run.fake, OUTAGE_S)
            report = await run.account(ids)
            stamps = b_stamps()
            before, during = rate(stamps, measured, began), rate(stamps, began, ended)
            a_during = sum(
                began * 1000 <= s.timestamp_ms < ended * 1000
                for r, s in run.completions.first.items()
                if "-a-" in r
            )
            figures = {
                "outage_s": round(ended - began, 1),
                "calls_dropped": dropped,
                "b_per_s_before": round(before, 2),
                "b_per_s_during": round(during, 2),
                "b_ratio": round(during / before, 3) if before else None,
                "a_outcomes_during": a_during,
                "recovery_s": seconds(run.completions.resumed_after(ended)),
            }
            report_and_check(run, report, capsys, **figures)
            assert dropped > 0, "the outage never reached the processor"
            assert report.failed == report.dead_letter_records == 0
            assert before > 0
            assert during >= 0.9 * before, (before, during)
    finally:
        await other.stop()
