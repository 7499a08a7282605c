"""The adaptive window against the three ways a GPU TTS server overloads, in a deterministic
discrete-event simulation of the gate (window, crash watch, breaker) in front of one server.

The server (:class:`Shape`) serves ``C`` calls at full speed and shares itself past that (every
call in flight slows, ``in_server / C``); past the knee ``K = 1.5 C`` it either

* ``queue``: keeps everything but thrashes (each call slows a further ``in_server / K``),
* ``fail``: fails each call beyond the knee after 50 ms and keeps serving the rest, or
* ``crash``: fails every call in flight at once and refuses connections for ``restart_s``.

``no_warning`` crashes past ``C`` itself, with no slowdown before: only a crash tells where the
knee is. Calls take 0.25 s of work on average (+-10 %, text lengths vary 10x), so a second of
simulated time is about four rounds of the window.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
import statistics
from collections.abc import Callable
from typing import Literal

import pytest

from processor.breaker import Breaker, BreakerConfig
from processor.errors import Stage, Transient
from processor.gate import CrashWatch, is_outage
from processor.limiter import AdaptiveLimit, Limit, Outcome, Sample, StaticLimit

Mode = Literal["queue", "fail", "crash", "no_warning"]
MEAN_S = 0.25
#: The breaker the processor builds (processor.app.BREAKER).
BREAKER = BreakerConfig(open_for_s=1.0, max_open_for_s=5.0)
REFUSED = Transient("refused", stage=Stage.SYNTHESIZE, error_type="connect")


@dataclasses.dataclass(frozen=True)
class Shape:
    mode: Mode
    capacity: Callable[[float], int] = lambda _: 12
    restart_s: float = 5.0

    def knee(self, now: float) -> int:
        c = self.capacity(now)
        return c if self.mode == "no_warning" else math.floor(1.5 * c)


@dataclasses.dataclass
class Trace:
    oks: list[float] = dataclasses.field(default_factory=list)
    failed: int = 0
    crashes: list[float] = dataclasses.field(default_factory=list)
    limits: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    #: When the crash watch called a crash (the gate trips the breaker then).
    called: list[float] = dataclasses.field(default_factory=list)
    #: Calls started while the server was restarting (refused at once).
    refused: int = 0

    def goodput(self, start: float, end: float) -> float:
        return sum(start <= t < end for t in self.oks) / (end - start)

    def failed_share(self) -> float:
        return self.failed / max(1, self.failed + len(self.oks))

    def limit_at(self, t: float) -> int:
        return [limit for at, limit in self.limits if at <= t][-1]


@dataclasses.dataclass
class _Call:
    started: float
    in_flight: int
    work: float
    outcome: Outcome = "ok"


def simulate(window: Limit, shape: Shape, until: float, seed: int = 0) -> Trace:
    """Calls start whenever the window and the breaker let them (an endless backlog)."""
    rng = random.Random(seed)
    breaker, watch, trace = Breaker(BREAKER), CrashWatch(), Trace()
    pending: list[tuple[float, int, _Call]] = []
    now, serial, down_until = 0.0, 0, -1.0
    while now < until:
        while len(pending) < window.limit and breaker.allow(now):
            serial += 1
            call = _Call(now, len(pending) + 1, rng.uniform(20.0, 200.0))
            if now < down_until:
                call.outcome, finish = "error", now + 0.002
                trace.refused += 1
            elif call.in_flight > shape.knee(now) and shape.mode in ("crash", "no_warning"):
                trace.crashes.append(now)
                down_until = now + shape.restart_s
                for _, _, victim in pending:
                    victim.outcome = "error"
                pending = [(now + 0.001, n, c) for _, n, c in pending]  # a 500 each
                heapq.heapify(pending)
                call.outcome, finish = "error", now + 0.001
            elif call.in_flight > shape.knee(now) and shape.mode == "fail":
                call.outcome, finish = "error", now + 0.05
            else:
                finish = now + _service(shape, call, now, rng)
            heapq.heappush(pending, (finish, serial, call))
        wake = now + max(0.05, breaker.retry_in(now))
        if pending and pending[0][0] <= wake:
            now, _, done = heapq.heappop(pending)
            _settle(window, breaker, watch, trace, done, now)
        else:
            now = wake
        trace.limits.append((now, window.limit))
    return trace


def _service(shape: Shape, call: _Call, now: float, rng: random.Random) -> float:
    seconds = MEAN_S * call.work / 110.0 * rng.uniform(0.9, 1.1)
    seconds *= max(1.0, call.in_flight / shape.capacity(now))
    if shape.mode == "queue":
        seconds *= max(1.0, call.in_flight / shape.knee(now))
    return seconds


def _settle(
    window: Limit, breaker: Breaker, watch: CrashWatch, trace: Trace, call: _Call, now: float
) -> None:
    """What the gate does with a finished call."""
    sample = watch.see(Sample(now - call.started, call.work, call.outcome, call.in_flight, now))
    window.update(sample)
    if call.outcome == "ok":
        trace.oks.append(now)
        breaker.record_success(now)
        return
    trace.failed += 1
    assert is_outage(REFUSED)
    breaker.record_failure(now, systemic=True)
    if sample.outcome == "crash":
        trace.called.append(now)
        breaker.trip(now, "crash")


SHAPES: tuple[Mode, ...] = ("queue", "fail", "crash")
SWEEP = (4, 8, 12, 16, 24, 32)


def best_fixed(shape: Shape, until: float) -> float:
    return max(simulate(StaticLimit(w), shape, until).goodput(0, until) for w in SWEEP)


# --- each shape, steady capacity ------------------------------------------------------------


@pytest.mark.parametrize("mode", SHAPES)
@pytest.mark.parametrize("seed", range(3))
def test_adaptive_gets_at_least_nine_tenths_of_the_best_fixed_window(mode: Mode, seed: int) -> None:
    shape = Shape(mode)
    trace = simulate(AdaptiveLimit(), shape, 120.0, seed)
    best = best_fixed(shape, 120.0)
    ratio = trace.goodput(0, 120.0) / best
    late = [limit for t, limit in trace.limits if t > 20]
    print(
        f"{mode} seed={seed}: {ratio:.3f} of the best fixed window, window "
        f"{statistics.mean(late):.1f} ({min(late)}-{max(late)}), failed "
        f"{trace.failed_share():.2%}, crashes at {[round(t, 1) for t in trace.crashes]}"
    )
    assert ratio >= 0.9
    assert trace.failed_share() <= 0.01
    assert len(trace.crashes) <= 1


# --- capacity that halves and comes back ------------------------------------------------------


def halving(t: float) -> int:
    return 6 if 60.0 <= t < 90.0 else 12


def in_band(trace: Trace, start: float, end: float, capacity: int) -> float:
    """Seconds after ``start`` from which the window stays in [0.9 C, knee) until ``end``."""
    outside = [
        t
        for t, limit in trace.limits
        if start <= t < end and not (0.9 * capacity <= limit <= 1.5 * capacity)
    ]
    return max(outside, default=start) - start


@pytest.mark.parametrize("mode", SHAPES)
@pytest.mark.parametrize("seed", range(3))
def test_capacity_halves_and_comes_back(mode: Mode, seed: int) -> None:
    trace = simulate(AdaptiveLimit(), Shape(mode, halving), 120.0, seed)
    down, up = in_band(trace, 60.0, 90.0, 6), in_band(trace, 90.0, 120.0, 12)
    print(
        f"{mode} seed={seed}: in band {down:.1f} s after C 12->6, {up:.1f} s after 6->12; "
        f"failed {trace.failed_share():.2%}, crashes at {[round(t, 1) for t in trace.crashes]}"
    )
    assert down <= 10.0
    assert up <= 10.0
    # The halving itself crashes a crashing server (14 calls were in it); nothing else does.
    assert len(trace.crashes) == (mode == "crash")
    assert all(59.9 < t < 61.0 for t in trace.crashes)
    assert trace.failed_share() <= (0.02 if mode == "crash" else 0.01)


# --- a crash without warning -------------------------------------------------------------------


def test_a_server_that_crashes_without_warning_is_crashed_rarely_and_ever_more_rarely() -> None:
    # C = K = 12: no slowdown before the crash, so only a crash shows the knee. The memory
    # holds the window below it; one call more is tried after memory_s, then after twice that.
    limiter = AdaptiveLimit()
    trace = simulate(limiter, Shape("no_warning"), 1000.0)
    gaps = [b - a for a, b in zip(trace.crashes, trace.crashes[1:], strict=False)]
    print(f"crashes at {[round(t) for t in trace.crashes]}, hurt level {limiter.hurt_level}")
    assert len(trace.crashes) <= 3
    assert trace.crashes[0] < 10.0
    assert gaps[0] >= 300.0
    assert all(later >= 2 * 300.0 for later in gaps[1:])
    assert limiter.hurt_level == 13
    best = simulate(StaticLimit(12), Shape("no_warning"), 1000.0).goodput(0, 1000.0)
    assert trace.goodput(0, 1000.0) >= 0.9 * best


def test_a_crash_opens_the_breaker_for_the_restart_and_the_window_starts_low() -> None:
    limiter = AdaptiveLimit()
    trace = simulate(limiter, Shape("crash", halving), 75.0)
    (crash,) = trace.crashes
    (called,) = trace.called
    assert called - crash < 0.01  # the watch calls it on the victims' answers
    # While the server restarts, only the breaker's probes (1, 2 then 4 s apart) are refused.
    assert trace.refused <= 4
    after = [limit for t, limit in trace.limits if crash + 5.0 < t < crash + 8.0]
    assert limiter.hurt_level is not None
    assert max(after) <= 0.5 * limiter.hurt_level
