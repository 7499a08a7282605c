"""Adaptive concurrency window per TTS backend: pure policy, no I/O, no clock.

Self-hosted TTS servers rarely say "slow down": past their capacity they queue (latency grows),
then run out of GPU memory or drop connections. So the client must find the window itself. The
gate that admits calls (written elsewhere) reports one :class:`Sample` per finished call and
reads :attr:`AdaptiveLimit.limit`; everything here is deterministic in the samples it is fed.

Algorithm (after Netflix concurrency-limits Gradient2/AIMD, Envoy adaptive concurrency, BBR):

* **Normalise.** TTS latency grows with text length, so each latency is divided by the call's
  work (characters): everything below compares *seconds per unit of work*.
* **Baseline** = no-load normalised latency: the median of the first ``probe_samples`` calls,
  re-measured (up or down) by a periodic **probe**: every ``probe_interval_s`` the window drops to
  ``probe_ratio * limit`` until ``probe_samples`` calls started inside the probe have finished
  (Envoy's minRTT window, BBR's ProbeRTT). A min-only baseline could never rise, and a server that
  got slower for good would look queued forever; queueing at ``min_limit`` probes at once, which
  costs nothing there. Between probes the baseline follows a *long* EMA down when that is clearly
  (past noise) lower: even under load, a lower long average means a faster server.
* **Gradient.** ``short`` is an EMA over ``max(short_window, limit)`` calls (one window's worth,
  so the shortest-first order of completions does not bias it);
  ``gradient = clamp(tolerance * (1 + margin) * baseline / short, 0.5, 1)``, where ``margin`` is
  ``noise_margin`` standard errors of ``short``, from the measured spread of normalised latency:
  per-character noise must not read as queueing. Target = ``limit * gradient +
  queue_allowance * sqrt(limit)``; the allowance keeps a small standing queue so that queueing
  stays measurable, the 0.5 floor keeps an outlier from halving the window. Each sample moves the
  estimate ``smoothing / limit`` of the way, so one window's worth of completions (a "round")
  makes one smoothed step whatever the window size.
* **Slow start.** Until latency first clearly rises or a call fails, each ok call adds
  ``slow_start_step`` (x1.5 per round), so a big server is found in a few rounds.
* **App-limited.** A call started with fewer than ``limit / 2`` in flight may lower the window
  but never raises it: an unused window says nothing about the server's capacity.
* **AIMD on failures.** ``overload``, ``timeout`` and ``error`` multiply the window by
  ``backoff_ratio`` (at least one slot less), but only for a call that *started after* the last
  cut: calls launched under the old window report the same overload, so a burst is one cut per
  round (as TCP cuts once per window) and cannot collapse the window to ``min_limit`` at once.
  Failed calls never feed the latency estimates (a fast 503 is not a fast server).
* ``dropped`` (cancelled) samples are ignored. The limit always stays in
  ``[min_limit, max_limit]``.

Known limits: processes sharing one server probe independently, and a probe taken while the others
keep it busy reads a high baseline (the AIMD cut on failures still bounds the window). A fixed
per-call cost makes short texts look slow per character; only their noise margin absorbs it.
Very noisy per-character latency makes the window conservative on large servers.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

Outcome = Literal["ok", "overload", "timeout", "error", "dropped"]
OUTCOMES: frozenset[str] = frozenset(get_args(Outcome))
#: Outcomes that mean the server could not cope: multiplicative decrease.
FAILURES: frozenset[str] = frozenset({"overload", "timeout", "error"})

_MIN_GRADIENT = 0.5
#: A gradient below this means latency is clearly (past noise) above the baseline.
_QUEUEING = 0.95
#: A call that started with fewer than this share of the window in flight cannot grow it.
_APP_LIMITED_SHARE = 0.5


def _weight(window: int) -> float:
    """EMA weight of the newest sample for an average over about ``window`` samples."""
    return 2.0 / (window + 1.0)


def _finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")


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
    #: Slow start: window added per ok call until latency first rises or a call fails
    #: (0.5 = x1.5 per round; 0 starts straight in the gradient regime).
    slow_start_step: float = 0.5
    #: Samples the short-term latency EMA averages over.
    short_window: int = 10
    #: Samples over which the baseline follows a lower short-term latency down (1 = at once)
    #: and over which the noise of normalised latency is estimated.
    long_window: int = 100
    #: Latency counts as queueing only past ``noise_margin`` standard errors of the short EMA,
    #: measured online: noisy per-character latency must not read as queueing.
    noise_margin: float = 2.0
    #: Seconds between baseline re-measurements; ``math.inf`` disables probing.
    probe_interval_s: float = 300.0
    #: Window during a probe, as a share of the current limit (never below ``min_limit``).
    probe_ratio: float = 0.5
    #: Calls whose median makes a baseline (at start and in each probe).
    probe_samples: int = 8
    #: Work below this counts as this much, so empty texts do not divide by zero.
    min_work: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_limit <= self.initial_limit <= self.max_limit:
            raise ValueError("need 1 <= min_limit <= initial_limit <= max_limit")
        for name in (
            "backoff_ratio",
            "smoothing",
            "tolerance",
            "queue_allowance",
            "slow_start_step",
            "noise_margin",
            "probe_ratio",
            "min_work",
        ):
            _finite(name, getattr(self, name))
        if not 0.0 < self.backoff_ratio < 1.0:
            raise ValueError("backoff_ratio must be in (0, 1)")
        if not 0.0 < self.smoothing <= 1.0:
            raise ValueError("smoothing must be in (0, 1]")
        if self.tolerance < 1.0:
            raise ValueError("tolerance must be >= 1 (below 1 no-load latency reads as queueing)")
        if self.queue_allowance <= 0.0:
            raise ValueError("queue_allowance must be > 0 (else the window can never grow)")
        if self.slow_start_step < 0.0 or self.noise_margin < 0.0:
            raise ValueError("slow_start_step and noise_margin must be >= 0")
        if min(self.short_window, self.long_window, self.probe_samples) < 1:
            raise ValueError("short_window, long_window and probe_samples must be >= 1")
        if math.isnan(self.probe_interval_s) or self.probe_interval_s <= 0.0:
            raise ValueError("probe_interval_s must be > 0 (math.inf disables probing)")
        if not 0.0 < self.probe_ratio < 1.0:
            raise ValueError("probe_ratio must be in (0, 1)")
        if self.min_work <= 0.0:
            raise ValueError("min_work must be > 0")


@dataclass(frozen=True, slots=True)
class Sample:
    """One finished call, as the gate saw it."""

    #: Wall time of the call (for a timeout: how long it was given).
    latency_s: float
    #: Size of the call, e.g. characters of text; latency is compared per unit of work.
    work: float
    outcome: Outcome
    #: Calls in flight when this one started, this one included.
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


class AdaptiveLimit:
    """Gradient-on-normalised-latency window with AIMD on failures; see the module docstring."""

    def __init__(self, config: LimiterConfig | None = None) -> None:
        self._config = config or LimiterConfig()
        self._estimate = float(self._config.initial_limit)
        self._short: float | None = None
        self._long: float | None = None
        self._spread = 0.0  # EMA of the squared relative deviation of a sample from `short`
        self._baseline: float | None = None
        self._baseline_at = -math.inf
        self._last_cut_at = -math.inf
        self._slow_start = self._config.slow_start_step > 0.0
        self._probe_started: float | None = None
        self._probe_norms: list[float] = []

    @property
    def config(self) -> LimiterConfig:
        """The tuning in use."""
        return self._config

    @property
    def limit(self) -> int:
        """Calls allowed in flight now (smaller while probing the baseline)."""
        return self._probe_limit() if self.probing else self._window()

    @property
    def probing(self) -> bool:
        """Whether the window is shrunk to re-measure the no-load latency."""
        return self._probe_started is not None

    @property
    def baseline(self) -> float | None:
        """No-load seconds per unit of work, once known."""
        return self._baseline

    def update(self, sample: Sample) -> int:
        """Account for a finished call; return the new limit."""
        if sample.outcome in FAILURES:
            self._on_failure(sample)
        elif sample.outcome == "ok":
            self._on_ok(sample)
        return self.limit

    def _window(self) -> int:
        cfg = self._config
        return max(cfg.min_limit, min(cfg.max_limit, math.floor(self._estimate)))

    def _probe_limit(self) -> int:
        return max(self._config.min_limit, math.floor(self._window() * self._config.probe_ratio))

    def _on_failure(self, sample: Sample) -> None:
        if sample.started < self._last_cut_at:
            return  # launched under the window already cut for: same round, same overload
        cfg, window = self._config, self._window()
        self._estimate = max(float(cfg.min_limit), min(window * cfg.backoff_ratio, window - 1.0))
        self._last_cut_at = sample.now
        self._slow_start = False

    def _on_ok(self, sample: Sample) -> None:
        norm = sample.latency_s / max(sample.work, self._config.min_work)
        short, long, baseline = self._short, self._long, self._baseline
        if short is None or long is None or baseline is None:
            self._first_baseline(sample, norm)
            return
        if self._probe_started is not None:
            self._probe(sample, norm, self._probe_started)
            return
        self._track(norm, short, long, baseline)
        if self._probe_due(sample.now):
            self._probe_started, self._probe_norms = sample.now, []
        else:
            self._step(sample.in_flight)

    def _first_baseline(self, sample: Sample, norm: float) -> None:
        # The initial window is meant to be small, so its calls measure no-load latency; a
        # median of several, or one lucky call would read as queueing later.
        self._probe_norms.append(norm)
        if len(self._probe_norms) >= self._config.probe_samples:
            self._set_baseline(sample.now)
        self._step(sample.in_flight)

    def _set_baseline(self, now: float) -> None:
        self._baseline = statistics.median(self._probe_norms)
        if self._short is None:  # the first baseline: also seed the noise estimate
            self._short = self._long = self._baseline
            if self._baseline > 0.0:
                relative = [min(1.0, abs(n / self._baseline - 1.0)) ** 2 for n in self._probe_norms]
                self._spread = statistics.fmean(relative)
        self._baseline_at = now
        self._probe_started, self._probe_norms = None, []

    def _probe_due(self, now: float) -> bool:
        if now - self._baseline_at >= self._config.probe_interval_s:
            return True
        # Queueing at the smallest window means the baseline is stale (the server got slower):
        # probing there costs nothing, the window is already as small as it gets.
        return self._window() == self._config.min_limit and self._gradient() < _QUEUEING

    def _track(self, norm: float, short: float, long: float, baseline: float) -> None:
        slow = _weight(self._config.long_window)
        deviation = min(1.0, abs(norm - short) / short) ** 2 if short > 0.0 else 0.0
        self._spread += slow * (deviation - self._spread)
        self._short = short + self._fast() * (norm - short)
        self._long = long + slow * (norm - long)
        # Even under load the long average is below the baseline only if the server got
        # faster; the margin keeps its noise from ratcheting the baseline down.
        self._baseline = min(baseline, self._long * (1.0 + self._margin(slow)))

    def _fast(self) -> float:
        # At least one window's worth of completions, or the order in which one window's calls
        # finish (shortest first) would bias it.
        return _weight(max(self._config.short_window, self._window()))

    def _margin(self, weight: float) -> float:
        # noise_margin standard errors of an EMA of this weight over samples of the measured
        # relative variance.
        return self._config.noise_margin * math.sqrt(self._spread * weight / (2.0 - weight))

    def _step(self, in_flight: int) -> None:
        cfg = self._config
        limit, gradient = self._estimate, self._gradient()
        app_limited = in_flight < limit * _APP_LIMITED_SHARE
        self._slow_start = self._slow_start and gradient >= _QUEUEING
        if self._slow_start:
            moved = limit if app_limited else limit + cfg.slow_start_step
        else:
            target = limit * gradient + cfg.queue_allowance * math.sqrt(limit)
            if app_limited:
                target = min(target, limit)
            share = min(1.0, cfg.smoothing / max(limit, 1.0))
            moved = limit + share * (target - limit)
        self._estimate = max(float(cfg.min_limit), min(float(cfg.max_limit), moved))

    def _gradient(self) -> float:
        baseline, short = self._baseline, self._short
        if baseline is None or short is None or short <= 0.0:
            return 1.0
        ratio = self._config.tolerance * (1.0 + self._margin(self._fast())) * baseline / short
        if math.isnan(ratio):
            return 1.0
        return max(_MIN_GRADIENT, min(1.0, ratio))

    def _probe(self, sample: Sample, norm: float, probe_started: float) -> None:
        probe_limit = self._probe_limit()
        if sample.started < probe_started or sample.in_flight > probe_limit:
            return  # launched under the full window: not a no-load measurement
        self._probe_norms.append(norm)
        if len(self._probe_norms) >= self._config.probe_samples:
            self._set_baseline(sample.now)
