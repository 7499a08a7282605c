"""The gate: a backend's window bounds concurrent calls, its breaker holds calls while the
backend is down, and the window policy hears every call's outcome."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from processor.breaker import Breaker, BreakerConfig
from processor.errors import Permanent, Stage, Systemic, Transient
from processor.gate import CrashWatch, Gate, is_outage, outcome_of
from processor.limiter import Outcome, Sample, StaticLimit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recording(StaticLimit):
    """A static window that remembers the samples it was given."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.samples: list[Sample] = []

    def update(self, sample: Sample) -> int:
        self.samples.append(sample)
        return super().update(sample)


def t(
    status: int | None = None, *, error_type: str = "x", retry_after: float | None = None
) -> Transient:
    return Transient(
        "t",
        stage=Stage.SYNTHESIZE,
        http_status=status,
        error_type=error_type,
        retry_after=retry_after,
    )


@pytest.mark.parametrize(
    ("error", "outcome", "outage"),
    [
        (None, "ok", False),
        (t(error_type="timeout"), "timeout", True),
        (t(error_type="connect"), "error", True),
        (t(429, retry_after=1.0), "overload", False),
        (t(503, retry_after=2.0), "overload", False),
        (t(503), "overload", True),
        (t(500), "error", True),
        (t(502), "error", True),
        (Systemic("down", stage=Stage.SYNTHESIZE, http_status=401), "error", True),
        (Permanent("bad", stage=Stage.SYNTHESIZE, http_status=422), "ok", False),
        (asyncio.CancelledError(), "dropped", False),
        (RuntimeError("bug"), "error", False),
    ],
)
def test_outcomes_and_outages(error: BaseException | None, outcome: str, outage: bool) -> None:
    assert outcome_of(error) == outcome
    assert is_outage(error) is outage


async def test_the_window_bounds_concurrent_calls() -> None:
    gate = Gate("b", StaticLimit(3))
    peak = 0
    release = asyncio.Event()
    three_in = asyncio.Event()

    async def one() -> None:
        nonlocal peak
        async with gate.call(work=10):
            peak = max(peak, gate.in_flight)
            if gate.in_flight == 3:
                three_in.set()
            await release.wait()

    tasks = [asyncio.create_task(one()) for _ in range(7)]
    await asyncio.wait_for(three_in.wait(), timeout=5)
    for _ in range(20):  # give the others every chance to get in
        await asyncio.sleep(0)
    assert gate.in_flight == 3
    release.set()
    await asyncio.gather(*tasks)
    assert peak == 3
    assert gate.in_flight == 0


async def test_samples_carry_latency_work_and_outcome() -> None:
    clock = Clock()
    window = Recording(4)
    gate = Gate("b", window, clock=clock)
    async with gate.call(work=120):
        clock.now += 2.5

    async def busy_call() -> None:
        async with gate.call(work=7):
            clock.now += 1.0
            raise t(429, retry_after=1.0)

    with pytest.raises(Transient):
        await busy_call()
    ok, busy = window.samples
    assert (ok.latency_s, ok.work, ok.outcome, ok.in_flight) == (2.5, 120, "ok", 1)
    assert (busy.latency_s, busy.work, busy.outcome) == (1.0, 7, "overload")


async def test_an_open_breaker_holds_calls_until_a_probe_succeeds() -> None:
    clock = Clock()
    breaker = Breaker(BreakerConfig(failure_threshold=2, open_for_s=5.0))
    gate = Gate("b", StaticLimit(4), breaker, clock=clock)

    async def refused() -> None:
        async with gate.call(work=1):
            raise t(error_type="connect")

    for _ in range(2):
        with pytest.raises(Transient):
            await refused()
    assert breaker.state == "open"
    assert gate.is_open

    waiting = asyncio.create_task(_enter(gate))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not waiting.done(), "no call may go to an open backend"
    clock.now += 5.0  # cool-down over: the next caller is the probe
    await asyncio.wait_for(waiting, timeout=5)
    state: str = breaker.state  # mypy narrowed it to "open" above
    assert state == "closed"
    assert not gate.is_open


async def _enter(gate: Gate) -> None:
    async with gate.call(work=1):
        pass


def failed(started: float, now: float, in_flight: int, outcome: Outcome = "error") -> Sample:
    return Sample(now - started, 10.0, outcome, in_flight, now)


def test_a_crash_is_every_call_on_the_server_failing_together_then_a_refusal() -> None:
    watch = CrashWatch()
    victims = [failed(float(k), 10.0 + 0.001 * k, k + 1) for k in range(6)]
    assert [watch.see(v) for v in victims] == victims  # could still be the excess failing
    crash = watch.see(failed(10.01, 10.011, 1))  # refused: sent after they fell
    assert (crash.outcome, crash.in_flight) == ("crash", 6)  # where it fell
    assert watch.see(failed(11.0, 11.001, 1)).outcome == "error"  # once per crash
    watch.see(failed(15.0, 15.2, 1, "ok"))  # the server is back
    for v in victims:
        watch.see(dataclasses.replace(v, now=v.now + 20.0))
    assert watch.see(failed(30.02, 30.021, 1)).outcome == "crash"  # and can crash again


@pytest.mark.parametrize(
    ("name", "trace"),
    [
        ("only the excess fails", [(0.0, 1.0, 9, "error"), (0.1, 1.1, 8, "ok")] * 4),
        ("busy, answering 503", [(0.0, 1.0, 9, "overload")] * 8 + [(1.5, 1.6, 1, "overload")]),
        ("the next call answered", [(0.0, 5.0, 4, "error")] * 4 + [(5.5, 5.6, 1, "error", True)]),
        ("down before the calls", [(float(k), k + 0.001, 1, "error") for k in range(8)]),
        ("half the calls failed", [(0.0, 5.0, 8, "error")] * 3 + [(5.5, 5.6, 1, "error")]),
        ("two calls on the server", [(0.0, 5.0, 2, "error")] * 2 + [(5.5, 5.6, 1, "error")] * 3),
    ],
)
def test_no_crash_while_the_server_answers_or_took_no_call_down(
    name: str, trace: list[tuple[Any, ...]]
) -> None:
    watch = CrashWatch()
    for started, now, in_flight, outcome, *answered in trace:
        sample = watch.see(failed(started, now, in_flight, outcome), *answered)
        assert sample.outcome != "crash", name


async def test_a_crash_opens_the_breaker_at_once_and_reaches_the_window() -> None:
    clock = Clock()
    window = Recording(8)
    breaker = Breaker(BreakerConfig(failure_threshold=100))  # only the crash can open it
    gate = Gate("b", window, breaker, clock=clock)
    inside, crash = asyncio.Event(), asyncio.Event()

    async def victim() -> None:
        async with gate.call(work=10):
            if gate.in_flight == 4:
                inside.set()
            await crash.wait()
            raise t(500)

    tasks = [asyncio.create_task(victim()) for _ in range(4)]
    await asyncio.wait_for(inside.wait(), timeout=5)
    clock.now += 1.0
    crash.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, Transient) for r in results)
    before: str = breaker.state
    assert before == "closed"  # four 500s: the excess failing, as far as anyone knows
    clock.now += 0.5
    with pytest.raises(Transient):
        async with gate.call(work=10):
            raise t(error_type="connect")
    assert breaker.state == "open"
    assert [s.outcome for s in window.samples] == ["error"] * 4 + ["crash"]
    assert window.samples[-1].in_flight == 4


def test_trip_opens_a_closed_breaker_and_doubles_a_half_open_ones_cool_down() -> None:
    breaker = Breaker(BreakerConfig(open_for_s=1.0, max_open_for_s=8.0))
    assert breaker.trip(10.0, "crash") == "open"
    assert breaker.retry_in(10.0) == 1.0
    assert breaker.trip(10.5, "crash") == "open"  # already open: the cool-down stands
    assert breaker.retry_in(10.5) == 0.5
    assert breaker.allow(11.0)
    assert breaker.trip(11.2, "crash") == "open"
    assert breaker.retry_in(11.2) == 2.0
