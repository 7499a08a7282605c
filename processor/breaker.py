"""Circuit breaker per backend: pure policy, no I/O, no clock (``now`` is passed in).

When a TTS server is down for everyone, sending it every record only burns retries and piles up
timeouts. The breaker notices and stops calls for a cool-down, then lets a probe through to see
whether the server is back. The gate that admits calls (written elsewhere) asks :meth:`allow`
before a call and reports the outcome with :meth:`record_success`, :meth:`record_failure` or,
for a call cancelled without an outcome, :meth:`release_probe`.

States::

    closed ──(threshold or ratio rule)──> open ──(cool-down passed, allow())──> half_open
      ^                                    ^                                       │
      │                                    └────(systemic failure; cool-down x2)───┤
      └─────────────────────(success or per-request failure)──────────────────────┘

* **Which failures count.** Only failures the caller marks *systemic* (connection refused, DNS,
  401/403, timeouts, 5xx): the server is unusable for everyone. A per-request failure (a 4xx such
  as 422) proves the server is alive and answering, so it is recorded like a success.
* **Opening.** From closed, either rule opens it: ``failure_threshold`` systemic failures in a
  row, or, once the sliding window of the last ``window`` outcomes holds at least ``min_calls``,
  a share of systemic failures of at least ``failure_ratio``. The first rule reacts fast to a
  dead server; the second catches a flapping one that never fails ``failure_threshold`` times in
  a row. :meth:`trip` opens it at once, for a caller that knows the server is gone (the gate,
  when every call in flight failed together: a crash, then a restart).
* **Cool-down.** ``open_for_s`` after opening from closed; each failed probe doubles it, capped
  at ``max_open_for_s``. Closing resets it, the consecutive count and the window.
* **Half-open.** The first :meth:`allow` after the cool-down moves to half_open and hands out up
  to ``half_open_probes`` concurrent probe slots; every other call is refused. One success (or
  per-request failure) closes the breaker; one systemic failure re-opens it.
* **Late outcomes.** Outcomes reported while open belong to calls admitted before it opened;
  they are ignored (a late success must not cut the cool-down short, a late failure must not
  extend it). An outcome reported in half_open is taken as a probe's, whoever made the call:
  the breaker hands out no call tokens, and any answer says as much about the server as a
  probe's.

Time is read only in :meth:`allow` (open -> half_open) and :meth:`retry_in`; :attr:`state` is
the state as of the last call, so an open breaker whose cool-down has passed still reads
``"open"`` until the next :meth:`allow`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

State = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """Tuning of :class:`Breaker`; the defaults suit one self-hosted TTS server."""

    #: Systemic failures in a row (across requests) that open the breaker.
    failure_threshold: int = 5
    #: Share of systemic failures in the window that opens it, once it holds ``min_calls``.
    failure_ratio: float = 0.5
    min_calls: int = 20
    #: Outcomes the sliding window holds (the last ``window`` calls).
    window: int = 50
    #: First cool-down after opening, seconds.
    open_for_s: float = 2.0
    #: Cap of the cool-down, which doubles on each failed probe.
    max_open_for_s: float = 30.0
    #: Concurrent probe calls allowed in half_open.
    half_open_probes: int = 1

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, got {self.failure_threshold}")
        if not (0.0 < self.failure_ratio <= 1.0):
            raise ValueError(f"failure_ratio must be in (0, 1], got {self.failure_ratio!r}")
        if self.window < 1:
            raise ValueError(f"window must be at least 1, got {self.window}")
        if not 1 <= self.min_calls <= self.window:
            raise ValueError(
                f"min_calls must be in [1, window={self.window}], got {self.min_calls}"
            )
        if not (math.isfinite(self.open_for_s) and self.open_for_s > 0):
            raise ValueError(f"open_for_s must be positive and finite, got {self.open_for_s!r}")
        if not (math.isfinite(self.max_open_for_s) and self.max_open_for_s >= self.open_for_s):
            raise ValueError(
                f"max_open_for_s must be finite and at least open_for_s={self.open_for_s}, "
                f"got {self.max_open_for_s!r}"
            )
        if self.half_open_probes < 1:
            raise ValueError(f"half_open_probes must be at least 1, got {self.half_open_probes}")


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of state, for logs and metrics."""

    old: State
    new: State
    #: The ``now`` of the call that made the change.
    at: float
    #: Why: ``consecutive_failures``, ``failure_ratio``, ``cool_down_passed``,
    #: ``probe_failed``, ``probe_succeeded`` or the cause given to :meth:`Breaker.trip`.
    cause: str
    #: The cool-down in force after the change (seconds; meaningful when ``new`` is open).
    open_for_s: float


class Breaker:
    """The breaker of one backend. Not thread-safe; one event loop drives it."""

    def __init__(
        self,
        config: BreakerConfig | None = None,
        *,
        on_change: Callable[[Transition], None] | None = None,
    ) -> None:
        self.config = config or BreakerConfig()
        self._on_change = on_change
        self._state: State = "closed"
        self._consecutive = 0
        #: True for a systemic failure, False for anything that shows the server alive.
        self._window: deque[bool] = deque(maxlen=self.config.window)
        self._failures_in_window = 0
        self._open_for = self.config.open_for_s
        self._opened_at = 0.0
        self._probes = 0
        self._transitions = 0

    # -- reading ------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The state as of the last call (see the module docstring about time)."""
        return self._state

    @property
    def transitions(self) -> int:
        """How many times the state changed since this breaker was made."""
        return self._transitions

    @property
    def probes_in_flight(self) -> int:
        """Probe slots taken in half_open (always 0 in the other states)."""
        return self._probes

    @property
    def open_for_s(self) -> float:
        """The current cool-down: the one in force while open, the next one after a failed
        probe's doubling."""
        return self._open_for

    @property
    def consecutive_failures(self) -> int:
        """Systemic failures in a row while closed."""
        return self._consecutive

    @property
    def window_failures(self) -> tuple[int, int]:
        """(systemic failures, outcomes) in the sliding window."""
        return self._failures_in_window, len(self._window)

    def retry_in(self, now: float) -> float:
        """Seconds until a call may be allowed: 0 when :meth:`allow` would say yes now.

        In half_open with every probe slot taken, the wait depends on the probes' outcome, not on
        time; the current cool-down is returned as a polling hint.
        """
        if self._state == "closed":
            return 0.0
        if self._state == "open":
            return max(0.0, self._opened_at + self._open_for - now)
        return 0.0 if self._probes < self.config.half_open_probes else self._open_for

    # -- events -------------------------------------------------------------------------------

    def allow(self, now: float) -> bool:
        """Whether a call may go now. In half_open a True takes a probe slot, which the caller
        gives back by recording the outcome or with :meth:`release_probe`."""
        if self._state == "closed":
            return True
        if self._state == "open":
            if now < self._opened_at + self._open_for:
                return False
            self._change("half_open", now, "cool_down_passed")
        if self._probes >= self.config.half_open_probes:
            return False
        self._probes += 1
        return True

    def record_success(self, now: float) -> State:
        """A call succeeded; returns the state after it."""
        if self._state == "closed":
            self._push(False)
            self._consecutive = 0
        elif self._state == "half_open":
            self._close(now)
        return self._state

    def record_failure(self, now: float, systemic: bool) -> State:
        """A call failed; ``systemic`` when the server is unusable for everyone (see the module
        docstring). Returns the state after it."""
        if not systemic:
            return self.record_success(now)
        if self._state == "closed":
            self._push(True)
            self._consecutive += 1
            cause = self._trip_cause()
            if cause is not None:
                self._open(now, cause)
        elif self._state == "half_open":
            self._open_for = min(self._open_for * 2.0, self.config.max_open_for_s)
            self._open(now, "probe_failed")
        return self._state

    def trip(self, now: float, cause: str) -> State:
        """Open now, whatever the counts say: the caller knows the server is gone (it crashed
        with every call in flight). From half_open the cool-down doubles, as for a failed
        probe; an open breaker stays as it is. Returns the state after it."""
        if self._state == "half_open":
            self._open_for = min(self._open_for * 2.0, self.config.max_open_for_s)
        if self._state != "open":
            self._open(now, cause)
        return self._state

    def release_probe(self) -> None:
        """A probe call ended without an outcome (cancelled): free its slot. A no-op outside
        half_open, so callers may call it for any cancelled call."""
        if self._state == "half_open" and self._probes > 0:
            self._probes -= 1

    # -- internals ----------------------------------------------------------------------------

    def _push(self, failed: bool) -> None:
        if len(self._window) == self._window.maxlen and self._window[0]:
            self._failures_in_window -= 1
        self._window.append(failed)
        self._failures_in_window += failed

    def _trip_cause(self) -> str | None:
        if self._consecutive >= self.config.failure_threshold:
            return "consecutive_failures"
        calls = len(self._window)
        # A division, not ``ratio * calls``: 0.1 * 30 is 3.0000000000000004 in floats.
        if calls >= self.config.min_calls and (
            self._failures_in_window / calls >= self.config.failure_ratio
        ):
            return "failure_ratio"
        return None

    def _open(self, now: float, cause: str) -> None:
        self._opened_at = now
        self._probes = 0
        self._change("open", now, cause)

    def _close(self, now: float) -> None:
        self._probes = 0
        self._consecutive = 0
        self._window.clear()
        self._failures_in_window = 0
        self._open_for = self.config.open_for_s
        self._change("closed", now, "probe_succeeded")

    def _change(self, new: State, now: float, cause: str) -> None:
        old, self._state = self._state, new
        self._transitions += 1
        if self._on_change is not None:
            self._on_change(Transition(old, new, now, cause, self._open_for))
