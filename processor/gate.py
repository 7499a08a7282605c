"""The admission gate in front of one backend: its window (static or adaptive) and its
circuit breaker. Thin asyncio around the pure ``limiter`` and ``breaker`` policies.

A slot is held only for the duration of one backend call, so a record sleeping in retry
backoff holds none. A crash (:class:`CrashWatch`: every call in flight failed together) opens
the breaker at once, so records hold instead of feeding retries to a server that is restarting,
and reaches the window as outcome ``crash``, so it drops and remembers where it hurt.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping

import structlog

from processor.breaker import Breaker
from processor.errors import Stage, Systemic, Transient, VoxlineError
from processor.lanes import PRIORITY, may_start
from processor.limiter import FAILURES, Limit, Outcome, Sample
from processor.ratelimit import RateLimit
from processor.steps import Park

log = structlog.get_logger("voxline.gate")


def outcome_of(error: BaseException | None) -> Outcome:
    """How a call's result reads to the window policy."""
    if error is None:
        return "ok"
    if isinstance(error, asyncio.CancelledError):
        return "dropped"
    if isinstance(error, VoxlineError):
        if error.error_type == "timeout":
            return "timeout"
        if error.http_status in (429, 503) or error.retry_after is not None:
            return "overload"
        if isinstance(error, Transient | Systemic):
            return "error"
        return "ok"  # the server answered; the request was at fault
    return "error"


#: A ``Retry-After`` longer than this says the backend is unavailable for everyone (a quota or
#: maintenance answer), not busy for a moment.
LONG_RETRY_AFTER_S = 60.0


def is_outage(error: BaseException | None) -> bool:
    """Failures that say the backend is down for everyone, not busy and not this request's."""
    if not isinstance(error, VoxlineError):
        return False
    if isinstance(error, Systemic):
        return True
    if not isinstance(error, Transient):
        return False
    if error.retry_after is not None:
        return error.retry_after > LONG_RETRY_AFTER_S
    # A run of 5xx across many requests is an outage too (a bare 500 included: many TTS servers
    # answer nothing else when broken). Past-capacity 500s mostly come with a window set too
    # large by hand; the adaptive window keeps them rare.
    return error.error_type in ("connect", "timeout") or (error.http_status or 0) >= 500


class CrashWatch:
    """Recognises a crash-type overload (pure): errors or timeouts in a row, with no answer
    between, of at least ``calls`` and ``share`` of the calls that were on the server, then of a
    call sent after them that got no answer at all (refused: the server is restarting). A
    server that fails only its excess, answers 429/503 or answers the next call with a 5xx is
    up; one that was down before the calls were sent took none of them down."""

    __slots__ = ("_calls", "_first_at", "_level", "_reported", "_share", "_victims")

    def __init__(self, calls: int = 3, share: float = 0.75) -> None:
        self._calls, self._share = calls, share
        self._victims = self._level = 0
        self._first_at = math.inf  # when the run's first failure came back
        self._reported = False

    def see(self, sample: Sample, answered: bool = False) -> Sample:
        """``sample`` (``answered``: a failure with an HTTP status), or once per crash the same
        call as outcome ``crash`` with ``in_flight`` the most calls in flight when a call the
        crash took down started: where it crashed."""
        if sample.outcome in ("ok", "overload"):  # an answer: the server is up
            self._up()
            return sample
        if sample.outcome not in FAILURES:
            return sample
        self._first_at = min(self._first_at, sample.now)
        if sample.started < self._first_at:  # on the server when it fell
            self._victims += 1
            self._level = max(self._level, sample.in_flight)
            return sample
        if answered:  # sent after the fall, and answered: it is up
            self._up()
            return sample
        fell = self._victims >= max(self._calls, self._share * self._level)
        if self._reported or not fell:  # or this one, sent after, did not fail
            return sample
        self._reported = True
        return dataclasses.replace(sample, outcome="crash", in_flight=self._level)

    def _up(self) -> None:
        self._victims = self._level = 0
        self._first_at, self._reported = math.inf, False


@dataclasses.dataclass(slots=True)
class Call:
    """Filled in by the caller: what became of the call."""

    error: BaseException | None = None


class Gate:
    def __init__(
        self,
        name: str,
        limit: Limit,
        breaker: Breaker | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[Gate], None] = lambda _: None,
        rate: RateLimit | None = None,
    ) -> None:
        self.name = name
        #: Requests/s and characters/min, taken before a call enters the window.
        self.rate = rate
        #: A call kept away by the breaker this long parks its record (None: waits on).
        self.park_after_s: float | None = None
        #: Lanes' minimum shares by priority (``processor.lanes``); calls by priority.
        self.shares: Mapping[int, float] = {}
        self._running: Counter[int] = Counter()
        self._waiting: Counter[int] = Counter()
        self.window = limit
        self.breaker = breaker
        self.in_flight = 0
        self._clock = clock
        self._changed = asyncio.Condition()
        self._on_change = on_change
        self.crashes = CrashWatch()

    @property
    def limit(self) -> int:
        return self.window.limit

    def set_share(self, share: float) -> None:
        """This instance's share of its consumer group's records changed (a rebalance)."""
        self.window.set_share(share, self._clock())
        if self.rate is not None:
            self.rate.set_share(share)
        self._on_change(self)

    @property
    def is_open(self) -> bool:
        """True while the breaker keeps new calls away (open, or probing)."""
        return self.breaker is not None and self.breaker.state != "closed"

    async def _admit(self, prio: int) -> bool:
        """Wait for a slot (higher lanes first, ``processor.lanes``) and the breaker's leave;
        True if this call is a breaker probe. Raises ``Park`` once the breaker has kept it
        away ``park_after_s``."""
        began = self._clock()
        async with self._changed:
            while True:
                now = self._clock()
                limit = self.window.limit
                if self.in_flight < limit and may_start(
                    prio, self._running, self._waiting, limit, self.shares
                ):
                    if self.breaker is None:
                        break
                    state = self.breaker.state
                    if self.breaker.allow(now):
                        self.in_flight += 1
                        return state != "closed"
                    self._park_if_long(now - began)
                    # Poll: the cool-down ends by the clock, not by a notification.
                    wait = min(0.5, max(0.05, self.breaker.retry_in(now)))
                else:
                    wait = 0.2 if self.shares else 1.0  # a waiter that left frees a turn
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=wait)
            self.in_flight += 1
            return False

    def _park_if_long(self, waited_s: float) -> None:
        if self.park_after_s is not None and waited_s >= self.park_after_s:
            error = Systemic(
                f"backend {self.name} unavailable (breaker open) for {waited_s:.0f} s",
                stage=Stage.SYNTHESIZE,
                error_type="breaker_open",
            )
            raise Park(error)

    @contextlib.asynccontextmanager
    async def call(self, work: float) -> AsyncIterator[Call]:
        if self.rate is not None:
            await self.rate.acquire(work)
        prio = PRIORITY.get()
        self._waiting[prio] += 1
        try:
            probe = await self._admit(prio)
        finally:
            self._waiting[prio] -= 1
        self._running[prio] += 1
        started = self._clock()
        in_flight = self.in_flight
        call = Call()
        self._on_change(self)
        try:
            yield call
        except BaseException as exc:
            call.error = call.error or exc
            raise
        finally:
            self.in_flight -= 1
            self._running[prio] -= 1
            self._settle(call.error, started, in_flight, work, probe)
            self._on_change(self)
            async with self._changed:
                self._changed.notify_all()

    def _settle(
        self, error: BaseException | None, started: float, in_flight: int, work: float, probe: bool
    ) -> None:
        now = self._clock()
        outcome = outcome_of(error)
        if self.rate is not None and getattr(error, "http_status", None) == 429:
            self.rate.throttled()
        sample = Sample(max(0.0, now - started), max(1.0, work), outcome, max(1, in_flight), now)
        if outcome != "error" or is_outage(error):  # a bug of ours says nothing of the server
            answered = isinstance(error, VoxlineError) and error.http_status is not None
            sample = self.crashes.see(sample, answered)
        self.window.update(sample)
        if self.breaker is None:
            return
        before = self.breaker.state
        if outcome == "dropped":
            if probe:
                self.breaker.release_probe()
        elif is_outage(error):
            self.breaker.record_failure(now, systemic=True)
            if sample.outcome == "crash":
                self.breaker.trip(now, "crash")
        else:
            self.breaker.record_success(now)
        after = self.breaker.state
        if after != before:
            log.warning(
                "breaker " + after,
                backend=self.name,
                was=before,
                crash=sample.outcome == "crash",
                error=getattr(error, "message", None),
            )
