"""Several processors, each with its own adaptive window, in front of one server: the bench's
``instances`` scenario (bench/instances_scenario.py) as a deterministic discrete-event
simulation.

The server is the bench's ``fail`` fake: ``C = 12`` calls served at once, more wait in a FIFO
queue, and a call arriving with ``floor(1.5 C) = 18`` calls already in the server (queued or
served) fails after 50 ms (an HTTP 500). Service time is 0.25 s at the mean text length, in
proportion to the text (+-10 %). Each instance has its own window, breaker and crash watch and
its own monotonic clock (they share only the wall clock); they start a few seconds apart, as
processors joining a group do, so the later ones measure their first baseline on a server the
others already load.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections import deque

import pytest

from processor.breaker import Breaker, BreakerConfig
from processor.gate import CrashWatch
from processor.limiter import AdaptiveLimit, Limit, LimiterConfig, Outcome, Sample, StaticLimit

CAPACITY, KNEE, MEAN_S, FAIL_S = 12, 18, 0.25, 0.05
#: Seconds between instances joining, and from the last join to the measured box.
JOIN_S, SETTLE_S = 4.0, 2.0
BREAKER = BreakerConfig(open_for_s=1.0, max_open_for_s=5.0)


@dataclasses.dataclass
class Instance:
    window: Limit
    #: Monotonic seconds at wall time 0 (each process has its own monotonic clock).
    boot: float
    joins_at: float
    breaker: Breaker = dataclasses.field(default_factory=lambda: Breaker(BREAKER))
    watch: CrashWatch = dataclasses.field(default_factory=CrashWatch)
    in_flight: int = 0
    oks: list[float] = dataclasses.field(default_factory=list)
    failed: int = 0
    limits: list[tuple[float, int]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Call:
    owner: Instance
    started: float
    in_flight: int
    work: float
    outcome: Outcome = "ok"


@dataclasses.dataclass
class Fleet:
    instances: list[Instance]
    #: Wall seconds from which every instance has joined and settled.
    settled: float
    until: float

    def goodput(self) -> float:
        oks = sum(self.settled <= t < self.until for i in self.instances for t in i.oks)
        return oks / (self.until - self.settled)

    def failed_share(self) -> float:
        failed = sum(i.failed for i in self.instances)
        return failed / max(1, failed + sum(len(i.oks) for i in self.instances))

    def shares(self) -> list[float]:
        counts = [sum(self.settled <= t < self.until for t in i.oks) for i in self.instances]
        return [c / max(1, sum(counts)) for c in counts]


def simulate(instances: list[Instance], until: float, seed: int = 0) -> Fleet:
    """Each instance has an endless backlog and starts calls whenever its window allows."""
    rng = random.Random(seed)
    events: list[tuple[float, int, _Call]] = []  # (finish, serial, call) of calls answered
    queue: deque[_Call] = deque()
    serving = serial = 0
    now = 0.0

    def finish(call: _Call, at: float) -> None:
        nonlocal serial
        serial += 1
        heapq.heappush(events, (at, serial, call))

    def service() -> float:
        return MEAN_S * rng.uniform(0.9, 1.1)

    while now < until:
        for inst in instances:
            mono = now + inst.boot
            while (
                now >= inst.joins_at
                and inst.in_flight < inst.window.limit
                and inst.breaker.allow(mono)
            ):
                inst.in_flight += 1
                call = _Call(inst, mono, inst.in_flight, rng.uniform(0.2, 1.8))
                if serving + len(queue) >= KNEE:
                    call.outcome = "error"
                    finish(call, now + FAIL_S)
                elif serving < CAPACITY:
                    serving += 1
                    finish(call, now + service() * call.work)
                else:
                    queue.append(call)
        wake = now + 0.05
        if not events or events[0][0] > wake:
            now = wake
            continue
        now, _, done = heapq.heappop(events)
        if done.outcome == "ok":
            serving -= 1
            if queue:
                serving += 1
                waited = queue.popleft()
                finish(waited, now + service() * waited.work)
        _settle(done, now)
    settled = max(i.joins_at for i in instances) + SETTLE_S
    return Fleet(instances, settled, until)


def _settle(call: _Call, now: float) -> None:
    """What the instance's gate does with a finished call."""
    inst = call.owner
    inst.in_flight -= 1
    mono = now + inst.boot
    sample = Sample(mono - call.started, call.work * 100.0, call.outcome, call.in_flight, mono)
    inst.window.update(inst.watch.see(sample, answered=True))
    if call.outcome == "ok":
        inst.oks.append(now)
        inst.breaker.record_success(mono)
    else:
        inst.failed += 1
        inst.breaker.record_failure(mono, systemic=True)
    inst.limits.append((now, inst.window.limit))


def adaptive(boot: float, phase: float) -> AdaptiveLimit:
    # As processor.app builds it: from 4, ceiling 32. Wall time is simulated time + phase.
    return AdaptiveLimit(LimiterConfig(initial_limit=4, max_limit=32), wall_offset=phase - boot)


def fleet(size: int, box_s: float, seed: int, phase: float) -> Fleet:
    """``size`` instances joining ``JOIN_S`` apart, measured for ``box_s`` once all joined."""
    rng = random.Random(1000 + seed)
    instances = []
    for k in range(size):
        boot = rng.uniform(0.0, 10_000.0)
        instances.append(Instance(adaptive(boot, phase), boot, joins_at=JOIN_S * k))
    return simulate(instances, JOIN_S * (size - 1) + SETTLE_S + box_s, seed)


def best_fixed(until: float) -> float:
    fixed = (simulate([Instance(StaticLimit(w), 0.0, 0.0)], until) for w in (8, 12, 16, 18))
    return max(result.goodput() for result in fixed)


@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("phase", [0.0, 2.5, 5.0, 7.5])
def test_instances_share_one_server_without_overloading_it(size: int, phase: float) -> None:
    # The bench's box: 25 s from just after the last instance joined. ``phase``: where the
    # probes' wall-clock ticks (every 10 s) fall against the joins.
    best = best_fixed(60.0)
    for seed in range(3):
        result = fleet(size, 25.0, seed, phase)
        shares = result.shares()
        print(
            f"x{size} phase={phase} seed={seed}: goodput {result.goodput() / best:.3f} of the "
            f"best fixed window, failed {result.failed_share():.2%}, shares "
            f"{[round(s, 3) for s in shares]}"
        )
        assert result.goodput() >= 0.9 * best
        assert result.failed_share() <= 0.01
        if size < 3:  # with three, the last joiner is still catching up in 25 s (below)
            assert min(shares) * size >= 0.5


def test_a_late_joiner_gets_its_share_once_the_probes_line_up() -> None:
    # The last instance measures its first baseline on a server the others load; the next
    # common probe measures the no-load latency for all, and the shares even out.
    best = best_fixed(60.0)
    for seed in range(3):
        result = fleet(3, 120.0, seed, 0.0)
        assert result.goodput() >= 0.9 * best
        assert result.failed_share() <= 0.01
        assert min(result.shares()) * 3 >= 0.5
