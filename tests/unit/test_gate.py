"""The gate: a backend's window bounds concurrent calls, its breaker holds calls while the
backend is down, and the window policy hears every call's outcome."""

from __future__ import annotations

import asyncio

import pytest

from processor.breaker import Breaker, BreakerConfig
from processor.errors import Permanent, Stage, Systemic, Transient
from processor.gate import Gate, is_outage, outcome_of
from processor.limiter import Sample, StaticLimit


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
