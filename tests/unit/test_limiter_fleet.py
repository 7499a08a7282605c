"""Several processors of one consumer group, each with its own adaptive window, in front of one
server that fails the calls past its knee (``test_limiter_overload``'s ``fail`` shape: C=12,
knee 18, 50 ms to fail a call past it, processor sharing past C).

No processor sees the others. What each one knows is its share of the group's partitions, told
after each rebalance (``AdaptiveLimit.set_share``); the records, and so the calls, split in
that proportion. The first member runs alone long enough to learn the server (its window grows
to the knee and its hurt level is set there); then the others join.
"""

from __future__ import annotations

import dataclasses
import heapq
import random

import pytest

from processor.breaker import Breaker
from processor.gate import CrashWatch
from processor.limiter import AdaptiveLimit, Limit, Outcome, Sample, StaticLimit
from tests.unit.test_limiter_overload import BREAKER, MEAN_S

CAPACITY, KNEE = 12, 18
JOIN_S, SETTLE_S, UNTIL_S = 20.0, 10.0, 80.0


@dataclasses.dataclass
class Member:
    window: Limit
    joins_at: float
    breaker: Breaker = dataclasses.field(default_factory=lambda: Breaker(BREAKER))
    watch: CrashWatch = dataclasses.field(default_factory=CrashWatch)
    pending: int = 0
    oks: list[float] = dataclasses.field(default_factory=list)
    failed: list[float] = dataclasses.field(default_factory=list)


def simulate(members: list[Member], *, tell_share: bool, seed: int = 0) -> None:
    """Every member calls whenever its window and breaker allow (an endless backlog)."""
    rng = random.Random(seed)
    events: list[tuple[float, int, int, float, int, float, bool]] = []
    now, serial, told = 0.0, 0, -1
    while now < UNTIL_S:
        here = [m for m in members if m.joins_at <= now]
        if tell_share and len(here) != told:  # a rebalance: each gets 1/n of the partitions
            told = len(here)
            for m in here:
                m.window.set_share(1.0 / told, now)
        for index, m in enumerate(members):
            while m in here and m.pending < m.window.limit and m.breaker.allow(now):
                serial, m.pending = serial + 1, m.pending + 1
                in_server = sum(x.pending for x in members)
                work = rng.uniform(20.0, 200.0)
                if in_server > KNEE:
                    finish, ok = now + 0.05, False
                else:
                    took = MEAN_S * work / 110.0 * rng.uniform(0.9, 1.1)
                    finish, ok = now + took * max(1.0, in_server / CAPACITY), True
                heapq.heappush(events, (finish, serial, index, now, m.pending, work, ok))
        if not events:
            now = min(m.joins_at for m in members if m.joins_at > now)
            continue
        now, _, index, started, in_flight, work, ok = heapq.heappop(events)
        m = members[index]
        m.pending -= 1
        outcome: Outcome = "ok" if ok else "error"
        m.window.update(m.watch.see(Sample(now - started, work, outcome, in_flight, now)))
        if ok:
            m.oks.append(now)
            m.breaker.record_success(now)
        else:
            m.failed.append(now)
            m.breaker.record_failure(now, systemic=True)


def fleet(size: int, *, tell_share: bool = True, seed: int = 0) -> list[Member]:
    members = [Member(AdaptiveLimit(), 0.0 if i == 0 else JOIN_S) for i in range(size)]
    simulate(members, tell_share=tell_share, seed=seed)
    return members


def counted(times: list[float]) -> int:
    return sum(JOIN_S + SETTLE_S <= t < UNTIL_S for t in times)


def best_fixed_goodput() -> int:
    runs = [[Member(StaticLimit(w), 0.0)] for w in (12, 14, 16, 18)]
    for run in runs:
        simulate(run, tell_share=False)
    return max(counted(run[0].oks) for run in runs)


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("seed", range(3))
def test_members_split_the_server_evenly_without_overloading_it(size: int, seed: int) -> None:
    members = fleet(size, seed=seed)
    oks = [counted(m.oks) for m in members]
    failed = sum(counted(m.failed) for m in members)
    joined = sum(JOIN_S <= t < UNTIL_S for m in members for t in m.failed)
    goodput = sum(oks) / best_fixed_goodput()
    lowest = min(oks) / (sum(oks) / size)
    print(
        f"x{size} seed={seed}: goodput {goodput:.3f} of the best fixed window, failed "
        f"{failed / (failed + sum(oks)):.2%} ({joined} from the join on), shares {oks}, "
        f"windows {[m.window.limit for m in members]}"
    )
    assert goodput >= 0.9
    assert failed <= 0.01 * (failed + sum(oks))
    assert lowest >= 0.5


def test_without_the_share_the_member_that_came_first_keeps_the_server() -> None:
    """The reason for ``set_share``: the joiners' slow start meets the first member's full
    window past the knee, and the hurt levels then learned stay unequal."""
    told, blind = fleet(3, seed=0), fleet(3, tell_share=False, seed=0)
    failed = [sum(JOIN_S <= t < JOIN_S + 5.0 for m in f for t in m.failed) for f in (told, blind)]
    assert failed[0] < failed[1]


def test_a_shrinking_share_scales_the_window_and_the_hurt_level() -> None:
    window = AdaptiveLimit()
    members = [Member(window, 0.0)]
    simulate(members, tell_share=False)
    now = UNTIL_S
    window.update(Sample(0.05, 100.0, "error", 19, now))  # past the knee, the most in flight
    before, hurt = window.limit, window.hurt_level
    assert hurt == 19
    assert before >= 12
    window.set_share(0.5, now)
    assert window.limit <= before / 2 + 1
    assert window.hurt_level == pytest.approx(hurt / 2)
    assert window.probing  # the baseline is measured again, while the others join
    window.set_share(1.0, now + 1)  # the other left again
    assert window.hurt_level == pytest.approx(hurt)
    with pytest.raises(ValueError, match="share"):
        window.set_share(0.0, now + 2)
