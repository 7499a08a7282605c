"""The adaptive window's settings and the types the gate and the windows share: a finished
call (:class:`Sample`), the :class:`Limit` protocol and the fixed window (:class:`StaticLimit`).
The policy itself is in :mod:`processor.limiter`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Literal, Protocol, get_args

Outcome = Literal["ok", "overload", "timeout", "error", "crash", "dropped"]
OUTCOMES: frozenset[str] = frozenset(get_args(Outcome))
#: Outcomes that mean the server could not cope: multiplicative decrease.
FAILURES: frozenset[str] = frozenset({"overload", "timeout", "error", "crash"})


def _finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")


def _rule(text: str, test: Callable[[float], bool], *names: str) -> dict[str, Any]:
    return dict.fromkeys(names, (text, test))


#: What each setting must be (the floats but the ``*_s`` ones must also be finite).
_RULES: dict[str, tuple[str, Callable[[float], bool]]] = {
    **_rule(
        "in (0, 1)", lambda v: 0 < v < 1, "backoff_ratio", "probe_ratio", "approach", "crash_ratio"
    ),
    **_rule("> 0", lambda v: v > 0, "queue_allowance", "min_work", "probe_interval_s", "memory_s"),
    **_rule(">= 1", lambda v: v >= 1, "short_window", "long_window", "probe_samples", "tolerance"),
    **_rule(">= 0", lambda v: v >= 0, "slow_start_step", "noise_margin"),
    **_rule("in (0, 1]", lambda v: 0 < v <= 1, "smoothing"),
}


@dataclass(frozen=True, slots=True)
class LimiterConfig:
    """Tuning of :class:`AdaptiveLimit`; the defaults suit one self-hosted GPU TTS server."""

    initial_limit: int = 4
    min_limit: int = 1
    max_limit: int = 64
    #: Multiplier on overload/timeout/error, at most once per round.
    backoff_ratio: float = 0.9
    #: Share of the way to the gradient target taken per round (per ``limit`` samples).
    smoothing: float = 0.5
    #: Latency inflation over the baseline that is not yet counted as queueing.
    tolerance: float = 1.0
    #: Standing-queue allowance: the target adds ``queue_allowance * sqrt(limit)``.
    queue_allowance: float = 0.4
    #: Window added per ok call in slow start (0.25 = x1.25 per round; 0: no slow start).
    slow_start_step: float = 0.25
    #: Samples of the short latency EMA (at least a window's worth) and of the long one (the
    #: baseline's drift and the noise estimate).
    short_window: int = 10
    long_window: int = 100
    #: Queueing only past ``noise_margin`` standard errors of the short EMA.
    noise_margin: float = 2.0
    #: Seconds between baseline re-measurements; ``math.inf`` disables probing.
    probe_interval_s: float = 300.0
    #: Window during a probe, as a share of the limit; calls whose median makes a baseline.
    probe_ratio: float = 0.5
    probe_samples: int = 8
    #: Work below this counts as this much, so empty texts do not divide by zero.
    min_work: float = 1.0
    #: Below this share of the hurt level the window climbs as in slow start.
    approach: float = 0.8
    #: Seconds without a hurt before the hurt level rises by one call; ``math.inf``: never.
    memory_s: float = 300.0
    #: Window after a crash, as a share of the hurt level.
    crash_ratio: float = 0.5

    def __post_init__(self) -> None:
        if not 1 <= self.min_limit <= self.initial_limit <= self.max_limit:
            raise ValueError("need 1 <= min_limit <= initial_limit <= max_limit")
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and not field.name.endswith("_s"):
                _finite(field.name, value)
        for name, (rule, test) in _RULES.items():
            if not test(getattr(self, name)):  # NaN fails every test
                raise ValueError(f"{name} must be {rule}")


@dataclass(frozen=True, slots=True)
class Sample:
    """One finished call, as the gate saw it."""

    #: Wall time of the call (for a timeout: how long it was given).
    latency_s: float
    #: Size of the call, e.g. characters of text; latency is compared per unit of work.
    work: float
    outcome: Outcome
    #: Calls in flight when this one started, this one included (for a ``crash``: the most
    #: in flight when a call it took down started).
    in_flight: int
    #: Monotonic seconds when the call finished; it started at ``now - latency_s``.
    now: float

    def __post_init__(self) -> None:
        _finite("latency_s", self.latency_s)
        _finite("work", self.work)
        _finite("now", self.now)
        if self.latency_s < 0.0 or self.work < 0.0 or self.in_flight < 0:
            raise ValueError("latency_s, work and in_flight must be >= 0")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {sorted(OUTCOMES)}, got {self.outcome!r}")

    @property
    def started(self) -> float:
        """Monotonic seconds when the call started."""
        return self.now - self.latency_s


class Limit(Protocol):
    """A concurrency window the gate consults: read :attr:`limit`, report every call."""

    @property
    def limit(self) -> int:
        """Calls allowed in flight now."""
        ...

    def update(self, sample: Sample) -> int:
        """Account for a finished call; return the new limit."""
        ...

    def set_share(self, share: float, now: float) -> int:
        """From ``now`` this instance gets ``share`` (0, 1] of its consumer group's records."""
        ...


class StaticLimit:
    """A fixed window (``VOXLINE_MAX_IN_FLIGHT``), on the same code path as the adaptive one."""

    __slots__ = ("_limit",)

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self._limit = limit

    @property
    def limit(self) -> int:
        """The configured window."""
        return self._limit

    def update(self, sample: Sample) -> int:
        """Ignore the sample: the window never changes."""
        return self._limit

    def set_share(self, share: float, now: float) -> int:
        """Ignore the group: a fixed window is per instance, as configured."""
        return self._limit
