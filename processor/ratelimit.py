"""Rate limits for metered backends: requests per second and characters per minute, each a
token bucket with a burst, taken before the call (``gate.Gate.call``, before the window).

A call reserves its tokens at once (a bucket may go into debt) and waits until the debt is
paid, so callers are served in the order they asked and a long text waits its turn rather
than starving behind short ones. A 429 from the server halves the effective rate (at most once
per second: one overload, many calls in flight); it climbs back to the configured rate over
``recover_s`` without another 429. Pure apart from :meth:`RateLimit.acquire`, which sleeps.

The configured limits are the whole consumer group's: each member takes its share of the
group's partitions (:meth:`RateLimit.set_share`, after every rebalance) of both rates and
bursts, so N processors together stay under one quota without being told N.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

#: The effective rate never drops below this share of the configured one.
FLOOR = 0.05


@dataclasses.dataclass(frozen=True, slots=True)
class RateConfig:
    """Per backend; 0 turns a limit off."""

    requests_per_s: float = 0.0
    #: Calls that may go at once after a quiet spell (0: one second's worth, at least 1).
    requests_burst: float = 0.0
    chars_per_min: float = 0.0
    #: Characters that may go at once (0: one minute's worth).
    chars_burst: float = 0.0
    #: Seconds after a 429 for the effective rate to climb back to the configured one.
    recover_s: float = 30.0

    @property
    def enabled(self) -> bool:
        return self.requests_per_s > 0 or self.chars_per_min > 0


class Bucket:
    """A token bucket refilled at ``rate`` per second up to ``burst``; pure (times given)."""

    __slots__ = ("_at", "_level", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, max(1.0, burst)
        self._level, self._at = self.burst, now

    def reserve(self, amount: float, now: float, factor: float = 1.0, share: float = 1.0) -> float:
        """Take ``amount`` tokens (at most one burst's worth: a text longer than the burst
        waits for a full bucket, not forever); the seconds to wait before the call. The
        rate runs at ``factor * share`` of itself, the burst at ``share``."""
        rate, burst = self.rate * factor * share, max(1.0, self.burst * share)
        self._level = min(burst, self._level + (now - self._at) * rate)
        self._at = now
        self._level -= min(amount, burst)
        return 0.0 if self._level >= 0 else -self._level / rate


class RateLimit:
    """The buckets of one backend, and the 429 back-off of its effective rate."""

    def __init__(self, config: RateConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        now = clock()
        c = config
        self._requests = (
            Bucket(c.requests_per_s, c.requests_burst or c.requests_per_s, now)
            if c.requests_per_s > 0
            else None
        )
        self._chars = (
            Bucket(c.chars_per_min / 60, c.chars_burst or c.chars_per_min, now)
            if c.chars_per_min > 0
            else None
        )
        self._factor, self._factor_at, self._last_cut = 1.0, now, -1e9
        #: This member's share of its consumer group's partitions (1.0: alone).
        self.share = 1.0
        #: Seconds callers have waited in all, and 429s seen (metrics read these).
        self.waited_s = 0.0
        self.throttles = 0

    def factor(self, now: float) -> float:
        """The share of the configured rate in effect now (1 without recent 429s)."""
        climbed = (now - self._factor_at) / max(self.config.recover_s, 1e-9)
        self._factor = min(1.0, self._factor + climbed * (1 - FLOOR))
        self._factor_at = now
        return self._factor

    def set_share(self, share: float) -> None:
        """From now on take ``share`` (0, 1] of the configured rates and bursts."""
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share must be in (0, 1], got {share!r}")
        self.share = share

    def effective(self) -> tuple[float, float]:
        """(requests per second, characters per minute) this member takes now; 0 where off."""
        f = self.factor(self._clock()) * self.share
        return self.config.requests_per_s * f, self.config.chars_per_min * f

    def reserve(self, chars: float) -> float:
        """Tokens for one call of ``chars`` characters; seconds to wait before it."""
        now = self._clock()
        f = self.factor(now)
        wait = 0.0
        if self._requests is not None:
            wait = max(wait, self._requests.reserve(1, now, f, self.share))
        if self._chars is not None:
            wait = max(wait, self._chars.reserve(chars, now, f, self.share))
        self.waited_s += wait
        return wait

    async def acquire(self, chars: float) -> None:
        wait = self.reserve(chars)
        if wait > 0:
            await asyncio.sleep(wait)

    def throttled(self) -> None:
        """The server answered 429: halve the effective rate (once per second at most)."""
        now = self._clock()
        self.throttles += 1
        if now - self._last_cut < 1.0:
            return
        self._last_cut = now
        self._factor = max(FLOOR, self.factor(now) / 2)
