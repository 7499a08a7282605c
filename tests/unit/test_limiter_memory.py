"""The adaptive window's memory of where the server hurt, on short synthetic traces: what sets
the hurt level, how the window climbs back toward it, and what lets it rise again."""

from __future__ import annotations

import math

import pytest

from processor.limiter import AdaptiveLimit, LimiterConfig, Sample

#: Seconds per character of a calm call (no queueing), and a call's characters.
PER_CHAR, WORK = 0.002, 100.0
#: No baseline probes, and a memory that never fades (unless a test says otherwise).
STILL = LimiterConfig(probe_interval_s=math.inf, memory_s=math.inf)


class Feed:
    """Feeds one limiter calls a second apart; ``in_flight`` is the window unless given."""

    def __init__(self, config: LimiterConfig = STILL) -> None:
        self.limiter = AdaptiveLimit(config)
        self.now = 0.0

    def ok(self, n: int = 1, *, slower: float = 1.0, in_flight: int | None = None) -> int:
        for _ in range(n):
            self.call("ok", in_flight, PER_CHAR * WORK * slower)
        return self.limiter.limit

    def call(self, outcome: str, in_flight: int | None = None, latency: float = 0.05) -> int:
        self.now += 1.0
        used = self.limiter.limit if in_flight is None else in_flight
        sample = Sample(latency, WORK, outcome, used, self.now)  # type: ignore[arg-type]
        return self.limiter.update(sample)

    def until(self, limit: int, most: int = 2000) -> int:
        """Calm calls until the window reaches ``limit``; returns how many it took."""
        for n in range(1, most + 1):
            if self.ok() >= limit:
                return n
        raise AssertionError(f"the window stayed at {self.limiter.limit}, below {limit}")


def test_a_failure_at_the_top_sets_the_hurt_level_one_above_the_most_that_succeeded() -> None:
    feed = Feed()
    feed.until(16)
    assert feed.limiter.hurt_level is None
    # The window has grown to 16 but no call has yet succeeded with more than 15 in flight.
    feed.ok(in_flight=15)
    feed.limiter.update(Sample(0.05, WORK, "error", 16, feed.now + 1000.0))
    assert feed.limiter.hurt_level == 16
    assert feed.limiter.limit == 14  # 16 * 0.9, as before


def test_a_stray_failure_below_the_top_is_cut_for_but_not_remembered() -> None:
    feed = Feed()
    feed.until(16)
    assert feed.call("error", in_flight=5) == 14
    assert feed.limiter.hurt_level is None


def test_the_window_stays_below_the_hurt_level_while_latency_says_it_is_full() -> None:
    feed = Feed()
    feed.until(16)
    feed.call("error", in_flight=16)
    hurt = feed.limiter.hurt_level
    assert hurt is not None
    # Calm below 14 in flight, queueing (1.3x) from there: no evidence of more room.
    for _ in range(3000):
        limit = feed.limiter.limit
        feed.ok(in_flight=limit, slower=1.3 if limit >= 14 else 1.0)
        assert feed.limiter.limit <= hurt - 1
    assert feed.limiter.hurt_level == hurt


def test_calm_latency_at_the_cap_after_a_failure_is_evidence_of_more_room() -> None:
    feed = Feed()
    feed.until(16)
    feed.call("error", in_flight=16)
    assert feed.limiter.hurt_level == 16
    # The server grew: calls at the cap (15) are as fast as at no load. After a round at the
    # cap the level rises, and the window follows.
    feed.until(15)
    feed.ok(16)
    assert feed.limiter.hurt_level == pytest.approx(17.6)
    feed.until(18)


def test_a_crash_drops_the_window_to_half_and_the_restart_is_not_cut_for() -> None:
    feed = Feed()
    feed.until(16)
    feed.limiter.update(Sample(0.2, WORK, "crash", 17, feed.now + 1.0))
    feed.now += 1.0
    assert feed.limiter.hurt_level == 17
    assert feed.limiter.limit == 8  # half of 16, the most calls below the level
    # The restart: refused calls, then the server is back.
    for _ in range(20):
        assert feed.call("error", in_flight=1, latency=0.001) == 8
    feed.ok(in_flight=1)
    assert feed.call("error") == 7  # back up: failures count again


def test_after_a_crash_the_window_climbs_fast_below_the_level_and_slowly_near_it() -> None:
    feed = Feed()
    feed.until(20)
    feed.limiter.update(Sample(0.2, WORK, "crash", 21, feed.now + 1.0))
    assert feed.limiter.limit == 10
    fast = feed.until(16)  # 0.8 of the level: slow start, x1.25 per round
    slow = feed.until(20)
    print(f"10 -> 16 in {fast} calls, 16 -> 20 in {slow}")
    assert fast <= 3 * 16
    assert slow >= 4 * fast
    # A crash without latency warning gives no evidence: calm calls at the cap change nothing.
    feed.ok(500)
    assert feed.limiter.limit == 20
    assert feed.limiter.hurt_level == 21


def test_the_level_rises_by_one_call_after_memory_s_and_a_probe_that_hurts_doubles_the_wait() -> (
    None
):
    feed = Feed(LimiterConfig(probe_interval_s=math.inf, memory_s=1000.0))
    feed.until(12)
    feed.limiter.update(Sample(0.2, WORK, "crash", 13, feed.now))
    crashed_at = feed.now
    feed.until(12)
    while feed.limiter.hurt_level == 13:
        feed.ok()
    assert feed.now - crashed_at == pytest.approx(1000.0, abs=1.0)
    assert feed.limiter.hurt_level == 14
    feed.until(13)
    # One call more crashes it again: back to 13, and the next try waits twice as long.
    feed.limiter.update(Sample(0.2, WORK, "crash", 13, feed.now))
    crashed_at = feed.now
    assert feed.limiter.hurt_level == 13
    while feed.limiter.hurt_level == 13:
        feed.ok()
    assert feed.now - crashed_at == pytest.approx(2000.0, abs=1.0)
