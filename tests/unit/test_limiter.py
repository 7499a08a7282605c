"""The adaptive concurrency window, driven by a deterministic simulated TTS server.

The server (:func:`serve`) is a pure function: capacity ``C`` calls and ``per_work_s`` seconds
per unit of work. Up to ``C`` in flight a call takes ``per_work_s * work``; past ``C`` it queues
and takes ``in_flight / C`` times longer; past the knee (``1.25 C``) a share of calls fails, as
the CosyVoice sweep in BACKENDS.md did. Two drivers feed the limiter: rounds (each dispatches
``limit`` calls at once and waits for all) and a discrete-event loop (a new call starts as soon
as one finishes and the window allows it). Randomness is a seeded ``random.Random``.
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest

from processor.limiter import (
    FAILURES,
    AdaptiveLimit,
    Limit,
    LimiterConfig,
    Outcome,
    Sample,
)

WORK = (10.0, 2000.0)  # characters per request


@dataclass(frozen=True, slots=True)
class Server:
    """A simulated TTS server."""

    capacity: float
    per_work_s: float = 0.005
    knee_ratio: float = 1.25
    jitter: float = 0.1
    failure: Outcome = "error"
    timeout_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Round:
    """What one round of the simulation did."""

    limit: int
    probing: bool
    failures: int
    end: float


def serve(server: Server, in_flight: int, work: float, u_jitter: float, u_fail: float) -> Sample:
    """Latency and outcome of one call started with ``in_flight`` calls in flight (``now`` 0)."""
    latency = server.per_work_s * work * (1.0 + server.jitter * (2.0 * u_jitter - 1.0))
    latency *= max(1.0, in_flight / server.capacity)
    knee = server.knee_ratio * server.capacity
    if in_flight > knee and u_fail < (in_flight - knee) / in_flight:
        latency = server.timeout_s if server.failure == "timeout" else latency
        return Sample(latency, work, server.failure, in_flight, latency)
    return Sample(latency, work, "ok", in_flight, latency)


def run_rounds(
    limiter: Limit,
    server_at: Callable[[int], Server],
    rounds: int,
    *,
    seed: int = 0,
    work: tuple[float, float] = WORK,
    raw: bool = False,
) -> list[Round]:
    """Each round dispatches ``limiter.limit`` calls at once and feeds back their samples.

    ``raw`` hides the work from the limiter (``work=1``), so it sees raw latency.
    """
    rng = random.Random(seed)
    now, trace = 0.0, []
    for index in range(rounds):
        n, probing = limiter.limit, getattr(limiter, "probing", False)
        server = server_at(index)
        calls = sorted(
            (serve(server, n, rng.uniform(*work), rng.random(), rng.random()) for _ in range(n)),
            key=lambda call: call.latency_s,
        )
        for call in calls:
            seen = 1.0 if raw else call.work
            limiter.update(replace(call, work=seen, now=now + call.latency_s))
        now += max(call.latency_s for call in calls)
        failures = sum(call.outcome != "ok" for call in calls)
        trace.append(Round(n, probing, failures, now))
    return trace


def run_continuous(
    limiter: AdaptiveLimit, server_at: Callable[[float], Server], until: float, *, seed: int = 0
) -> list[tuple[float, int, bool]]:
    """Discrete events: calls start whenever the window has room; returns (time, limit, probing).

    A call's latency is fixed by the load when it starts (a simplification of processor sharing).
    """
    rng = random.Random(seed)
    pending: list[tuple[float, int, Sample]] = []  # (finish time, tie-breaker, sample)
    now, serial, trace = 0.0, 0, []
    while now < until:
        while len(pending) < limiter.limit:
            server, work = server_at(now), rng.uniform(*WORK)
            call = serve(server, len(pending) + 1, work, rng.random(), rng.random())
            call = replace(call, now=now + call.latency_s)
            heapq.heappush(pending, (call.now, serial, call))
            serial += 1
        now, _, done = heapq.heappop(pending)
        limiter.update(done)
        trace.append((now, limiter.limit, limiter.probing))
    return trace


def steady(trace: list[Round]) -> list[int]:
    """Limits of the rounds that were not baseline probes."""
    return [r.limit for r in trace if not r.probing]


def in_band(limit: float, capacity: float) -> bool:
    """Within [0.75 C, 1.25 C]: near capacity and below the knee."""
    return 0.75 * capacity <= limit <= 1.25 * capacity


def ok(latency_s: float, *, in_flight: int, now: float, work: float = 100.0) -> Sample:
    """A successful call."""
    return Sample(latency_s, work, "ok", in_flight, now)


# --- (a) convergence ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_converges_from_initial_4_to_capacity_12_and_stays(seed: int) -> None:
    limiter = AdaptiveLimit()
    trace = run_rounds(limiter, lambda _: Server(12), 200, seed=seed)
    first = next(i for i, r in enumerate(trace) if in_band(r.limit, 12))
    after = steady(trace[10:])
    print(  # shown with pytest -s: the figures quoted in the report
        f"seed={seed} in band at round {first}; rounds 10-199: mean {statistics.mean(after):.1f}"
        f" min {min(after)} max {max(after)}; probes {sum(r.probing for r in trace)}"
    )
    assert trace[0].limit == 4
    assert first <= 6
    assert all(in_band(limit, 12) for limit in after)
    assert sum(r.failures for r in trace[10:]) == 0  # stays below the knee
    assert sum(r.probing for r in trace) <= 0.1 * len(trace)  # probing costs little


def test_converges_under_continuous_dispatch() -> None:
    limiter = AdaptiveLimit()
    trace = run_continuous(limiter, lambda _: Server(12), until=3000.0)
    late = [limit for at, limit, probing in trace if at > 300.0 and not probing]
    assert statistics.mean(late) == pytest.approx(13.5, abs=1.5)
    assert all(in_band(limit, 12) for limit in late)
    assert sum(p for _, _, p in trace) < 0.1 * len(trace)


@pytest.mark.parametrize("capacity", [3, 6, 20, 40])
def test_converges_to_other_capacities(capacity: int) -> None:
    trace = run_rounds(AdaptiveLimit(), lambda _: Server(capacity), 150, seed=capacity)
    after = steady(trace[50:])
    assert 0.75 * capacity <= statistics.mean(after) <= 1.25 * capacity
    # Integer windows are coarse at small capacities (3 -> knee 3.75), hence a few failures.
    assert sum(r.failures for r in trace[50:]) <= 0.05 * sum(r.limit for r in trace[50:])


def test_reaches_max_limit_on_an_unbounded_server_and_stops_there() -> None:
    config = LimiterConfig(max_limit=30)
    trace = run_rounds(AdaptiveLimit(config), lambda _: Server(1000), 60)
    assert max(r.limit for r in trace) == 30
    assert trace[-1].limit == 30


# --- (b) capacity changes ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_follows_capacity_down_to_6_and_back_up_to_12(seed: int) -> None:
    def server_at(index: int) -> Server:
        return Server(6) if 100 <= index < 200 else Server(12)

    trace = run_rounds(AdaptiveLimit(), server_at, 300, seed=seed)
    down = next(i for i in range(100, 200) if trace[i].limit <= 1.25 * 6) - 100
    up = next(i for i in range(200, 300) if trace[i].limit >= 0.75 * 12) - 200
    print(f"seed={seed} down to <=7.5 in {down} rounds, back to >=9 in {up} rounds")
    assert in_band(statistics.mean(steady(trace[80:100])), 12)
    assert down <= 5
    assert all(r.limit <= 1.25 * 6 + 1 for r in trace[110:200])
    assert in_band(statistics.mean(steady(trace[120:200])), 6)
    assert up <= 10
    assert all(in_band(limit, 12) for limit in steady(trace[220:300]))


def test_server_twice_as_slow_for_good_is_relearned_not_mistaken_for_queueing() -> None:
    def server_at(index: int) -> Server:
        return Server(12, per_work_s=0.005 if index < 60 else 0.010)

    limiter = AdaptiveLimit()
    trace = run_rounds(limiter, server_at, 200)
    # Latency doubles: at first it reads as queueing and the window shrinks; a probe then finds
    # the no-load latency doubled and the window returns to the capacity.
    assert min(r.limit for r in trace[60:80]) < 9
    assert all(in_band(limit, 12) for limit in steady(trace[120:]))
    assert limiter.baseline == pytest.approx(0.010, rel=0.1)


def test_server_twice_as_fast_lowers_the_baseline() -> None:
    def server_at(index: int) -> Server:
        return Server(12, per_work_s=0.005 if index < 50 else 0.0025)

    limiter = AdaptiveLimit()
    trace = run_rounds(limiter, server_at, 150)
    # The long average follows at once, down to the loaded latency (the window may brush
    # the knee meanwhile); the next probe measures the new no-load latency.
    probe = next(i for i, r in enumerate(trace) if i > 50 and r.probing)
    assert probe - 50 <= 40
    assert limiter.baseline == pytest.approx(0.0025, rel=0.1)
    assert all(in_band(limit, 12) for limit in steady(trace[probe:]))
    assert sum(r.failures for r in trace[probe:]) == 0


# --- (c) failures -----------------------------------------------------------------------------


def converged(config: LimiterConfig | None = None) -> tuple[AdaptiveLimit, float]:
    """A limiter settled on a C=12 server, and the simulated time it got there."""
    limiter = AdaptiveLimit(config)
    trace = run_rounds(limiter, lambda _: Server(12), 40)
    return limiter, trace[-1].end


@pytest.mark.parametrize("outcome", sorted(FAILURES - {"crash"}))
def test_a_failure_cuts_the_limit_multiplicatively(outcome: Outcome) -> None:
    limiter, now = converged(LimiterConfig(probe_interval_s=math.inf))
    before = limiter.limit
    after = limiter.update(Sample(1.0, 100.0, outcome, before, now + 1.0))
    assert after == limiter.limit
    assert after == math.floor(min(before * 0.9, before - 1))


def test_one_burst_of_failures_is_one_cut_per_round() -> None:
    limiter, now = converged(LimiterConfig(probe_interval_s=math.inf))
    before = limiter.limit
    # A whole round launched together at `now` fails, completions spread over 5 s.
    for k in range(before):
        limiter.update(Sample(1.0 + 0.3 * k, 100.0, "overload", before, now + 1.0 + 0.3 * k))
    first_cut = limiter.limit
    assert first_cut == math.floor(min(before * 0.9, before - 1))
    # The next round started after the cut: its failure cuts again.
    later = now + 10.0
    limiter.update(Sample(1.0, 100.0, "timeout", first_cut, later + 1.0))
    assert limiter.limit == math.floor(min(first_cut * 0.9, first_cut - 1))


def test_failures_never_push_below_min_limit() -> None:
    limiter = AdaptiveLimit(LimiterConfig(initial_limit=20, min_limit=3))
    limits = [
        limiter.update(Sample(0.5, 100.0, "error", limiter.limit, float(t))) for t in range(60)
    ]
    assert limits[0] == 18
    assert limits[1] == 16
    assert min(limits) == 3
    assert limits[-1] == 3


def test_starting_past_the_knee_is_cut_back_by_failures_then_by_a_probe() -> None:
    limiter = AdaptiveLimit(LimiterConfig(initial_limit=30))
    trace = run_rounds(limiter, lambda _: Server(12, failure="timeout"), 80)
    assert trace[0].failures > 0
    # One cut per round: 30 -> 15 is 7 cuts of 0.9.
    below_knee = next(i for i, r in enumerate(trace) if r.limit <= 15 and not r.probing)
    assert below_knee <= 10
    # The first baseline was measured overloaded, so the gradient cannot see the knee; the
    # first probe measures it afresh and the window settles within two more rounds.
    probe = next(i for i, r in enumerate(trace) if r.probing)
    assert probe <= 10
    assert all(in_band(limit, 12) for limit in steady(trace[probe + 3 :]))
    assert sum(r.failures for r in trace[probe + 3 :]) == 0


def test_failed_calls_do_not_feed_the_latency_estimate() -> None:
    limiter = AdaptiveLimit(LimiterConfig(initial_limit=8))
    for t in range(10):
        limiter.update(ok(0.5, in_flight=8, now=float(t)))
    baseline = limiter.baseline
    # Fast 503s: if they counted as latency the baseline would drop a hundredfold.
    for t in range(10, 30):
        limiter.update(Sample(0.005, 100.0, "overload", 8, float(t)))
    assert limiter.baseline == baseline


# --- (d) work normalisation -------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_normalising_by_work_keeps_variable_texts_from_shaking_the_window(seed: int) -> None:
    normalised = run_rounds(AdaptiveLimit(), lambda _: Server(12), 200, seed=seed)[40:]
    raw = run_rounds(AdaptiveLimit(), lambda _: Server(12), 200, seed=seed, raw=True)[40:]
    norm_limits, raw_limits = steady(normalised), steady(raw)
    spread = statistics.pstdev(norm_limits) / statistics.mean(norm_limits)
    raw_spread = statistics.pstdev(raw_limits) / statistics.mean(raw_limits)
    raw_failures = sum(r.failures for r in raw)
    print(
        f"seed={seed} normalised {statistics.mean(norm_limits):.1f} ±{spread:.0%} range "
        f"{min(norm_limits)}-{max(norm_limits)}; raw {statistics.mean(raw_limits):.1f} "
        f"±{raw_spread:.0%} range {min(raw_limits)}-{max(raw_limits)}, {raw_failures} failures"
    )
    assert spread < 0.06
    assert max(norm_limits) - min(norm_limits) <= 3
    assert all(in_band(limit, 12) for limit in norm_limits)
    assert sum(r.failures for r in normalised) == 0
    # Fed raw latency, text length looks like noise (or queueing): the window wanders more,
    # now and then past the knee, where failures stop it (and the memory of them steadies it).
    assert raw_spread > 1.5 * spread
    assert max(raw_limits) - min(raw_limits) >= 4
    assert raw_failures >= 3


def test_constant_seconds_per_character_is_not_queueing_whatever_the_text_length() -> None:
    config = LimiterConfig(initial_limit=10, slow_start_step=0.0, probe_interval_s=math.inf)
    normalised, raw = AdaptiveLimit(config), AdaptiveLimit(config)
    rng = random.Random(7)
    limits, raw_limits = [], []
    for t in range(100):
        work = rng.uniform(*WORK)
        limits.append(normalised.update(Sample(0.005 * work, work, "ok", 10, float(t))))
        raw_limits.append(raw.update(Sample(0.005 * work, 1.0, "ok", 10, float(t))))
    # Only the queue allowance acts: the window grows and never shrinks.
    assert limits == sorted(limits)
    assert limits[-1] > 10
    # The same calls seen as raw seconds: long texts look like queueing, short ones like
    # headroom; the window grows more slowly and is cut on the way.
    assert raw_limits != sorted(raw_limits)
    assert raw_limits[-1] < limits[-1]


def test_zero_work_counts_as_min_work() -> None:
    limiter = AdaptiveLimit(LimiterConfig(min_work=50.0, probe_samples=5))
    for t in range(5):
        limiter.update(Sample(1.0, 0.0, "ok", 4, float(t)))
    assert limiter.baseline == pytest.approx(1.0 / 50.0)
