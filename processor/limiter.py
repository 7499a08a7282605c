"""Adaptive concurrency window per TTS backend: pure policy, no I/O, no clock.

Self-hosted TTS servers rarely say "slow down": past their capacity they queue, then run out of
GPU memory, fail every call in flight and restart (../shared/BACKENDS.md). The gate reports a
:class:`Sample` per finished call and reads :attr:`AdaptiveLimit.limit`.

* **Latency** per unit of work (characters); **baseline**: the median no-load latency of
  ``probe_samples`` calls, at start and every ``probe_interval_s`` (a **probe**: the window drops
  to ``probe_ratio`` of itself; at once if queueing persists at ``min_limit``).
* **Gradient** (Netflix Gradient2): ``clamp(tolerance * (1 + margin) * baseline / short, 0.5,
  1)``, ``short`` an EMA over a window's worth of calls, ``margin`` ``noise_margin`` standard
  errors of it. Target ``limit * gradient + queue_allowance * sqrt(limit)``, approached
  ``smoothing`` of the way per round (``limit`` calls); **slow start** (``slow_start_step`` per
  ok call) until latency first rises. Calls started with under ``limit / 2`` in flight never
  raise the window. **Failures** cut it by ``backoff_ratio`` once per round (a call started
  before the last cut cannot cut again) and never feed the latency estimates.
* **Memory of where it hurt** (TCP after a loss): a failure at the highest load lately seen (not
  a stray error below it) or a crash records the *hurt level*, one call above the most in flight
  that lately succeeded. The window stays below it: fast (slow start) up to ``approach`` of it,
  slowly above. The level rises on evidence (a round at the cap with latency at the baseline,
  when the hurt came with queueing: a crash without latency warning gives none), else by one
  call each ``memory_s`` without a hurt, a wait that doubles each time such a probe hurts.
* **Crash** (outcome ``crash``: the gate saw the calls in flight fail together): the window
  drops to ``crash_ratio`` of the hurt level; failures count again once a call succeeds.
* **Share of a group** (:meth:`AdaptiveLimit.set_share`): instances in one consumer group split
  the records, so each calls the backend in proportion to its partitions. A rebalance rescales
  the window and the hurt level by the new share over the old: a member that learned the
  server alone makes room at once when others join (else their slow start meets its full
  window past the knee), and one whose hurt level was learned at a small share does not keep it
  when the group shrinks. Each member then probes its baseline, all at once: a joiner that
  measured its no-load latency under the others' full load would take a higher baseline and,
  delay-based, keep a larger window than they do.
"""

from __future__ import annotations

import math
import statistics

from processor.limiter_config import (
    FAILURES,
    OUTCOMES,
    Limit,
    LimiterConfig,
    Outcome,
    Sample,
    StaticLimit,
)

__all__ = [
    "FAILURES",
    "OUTCOMES",
    "AdaptiveLimit",
    "Limit",
    "LimiterConfig",
    "Outcome",
    "Sample",
    "StaticLimit",
]

_MIN_GRADIENT = 0.5
#: A gradient below this means latency is clearly (past noise) above the baseline.
_QUEUEING = 0.95
#: A call that started with fewer than this share of the window in flight cannot grow it.
_APP_LIMITED_SHARE = 0.5
#: A call this many standard deviations slower than the baseline ends slow start.
_SLOW_CALL = 3.0
#: Near the hurt level the window grows at least this share of its usual pace.
_NEAR_PACE = 0.1
#: Longest wait between probes above the hurt level, in ``memory_s``.
_MAX_HOLDS = 16.0


def _weight(window: int) -> float:
    return 2.0 / (window + 1.0)  # of the newest sample, in an EMA over ``window`` samples


class AdaptiveLimit:
    """Gradient window, AIMD on failures, memory of where it hurt: see the module docstring."""

    def __init__(self, config: LimiterConfig | None = None) -> None:
        cfg = self._config = config or LimiterConfig()
        self._estimate = float(cfg.initial_limit)
        self._short: float | None = None
        self._long: float | None = None
        self._spread = 0.0  # EMA of the squared relative deviation of a sample from `short`
        self._baseline: float | None = None
        self._baseline_at = -math.inf
        self._last_cut_at = -math.inf
        self._slow_start = cfg.slow_start_step > 0.0
        self._probe_started: float | None = None
        self._probe_norms: list[float] = []
        self._restarting = False
        self._hurt: float | None = None  # calls in flight where it hurt
        self._hurt_before: float | None = None
        self._hurt_at = self._lifted_at = -math.inf
        self._hold_s = cfg.memory_s
        self._latency_tells = False  # whether latency at the cap can prove more room
        self._ok_peak = 0  # most calls in flight when a call that succeeded started, lately
        self._evidence = 0
        self._share = 1.0

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

    @property
    def hurt_level(self) -> float | None:
        """Calls in flight at which the server last hurt; the window stays below it."""
        return self._hurt

    @property
    def share(self) -> float:
        """This instance's share of its group's work, as last set (1.0: alone)."""
        return self._share

    def set_share(self, share: float, now: float) -> int:
        """The group rebalanced at ``now``: this instance gets ``share`` (0, 1] of the records.
        Scale the window and the hurt level by the change; return the new limit. A smaller
        share counts as a cut: calls launched before it cannot cut again."""
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share must be in (0, 1], got {share!r}")
        ratio, self._share = share / self._share, share
        if ratio < 1.0:
            self._last_cut_at = now
        if self._hurt is not None:
            self._hurt = max(self._config.min_limit + 1.0, self._hurt * ratio)
        if self._hurt_before is not None:
            self._hurt_before = max(self._config.min_limit + 1.0, self._hurt_before * ratio)
        self._ok_peak = math.floor(self._ok_peak * min(1.0, ratio))
        lowest = float(self._config.min_limit)
        self._estimate = max(lowest, min(self._cap(), self._estimate * ratio))
        if self._baseline is not None and ratio != 1.0:  # measure again, with the others
            self._probe_started, self._probe_norms = now, []
        return self.limit

    def update(self, sample: Sample) -> int:
        """Account for a finished call; return the new limit."""
        if sample.outcome == "crash":
            self._on_crash(sample)
        elif sample.outcome in FAILURES:
            self._on_failure(sample)
        elif sample.outcome == "ok":
            self._on_ok(sample)
        return self.limit

    def _window(self) -> int:
        cfg = self._config
        return max(cfg.min_limit, min(cfg.max_limit, math.floor(self._estimate)))

    def _cap(self) -> float:
        cfg = self._config
        top = cfg.max_limit if self._hurt is None else math.ceil(self._hurt) - 1
        return float(max(cfg.min_limit, min(cfg.max_limit, top)))

    def _probe_limit(self) -> int:
        return max(self._config.min_limit, math.floor(self._window() * self._config.probe_ratio))

    def _on_crash(self, sample: Sample) -> None:
        if self._hurt_at == self._last_cut_at:  # placed by the crash's first failure: redo
            self._hurt = self._hurt_before
        self._remember(sample.in_flight, sample.now, latency_tells=False)
        # Queueing before the crash: calm latency at the cap later is evidence of more room.
        self._latency_tells, cfg = self._gradient() < _QUEUEING, self._config
        self._estimate = max(float(cfg.min_limit), self._cap() * cfg.crash_ratio)
        self._last_cut_at, self._restarting = sample.now, True
        self._slow_start = cfg.slow_start_step > 0.0

    def _on_failure(self, sample: Sample) -> None:
        if self._restarting or sample.started < self._last_cut_at:
            return  # the restart, or launched under the window already cut for: same overload
        cfg, window = self._config, self._window()
        loaded = sample.in_flight >= max(self._ok_peak, window * _APP_LIMITED_SHARE)
        if loaded:  # it failed where nothing lately succeeded: the load did it
            self._remember(max(sample.in_flight, self._ok_peak + 1), sample.now, True)
        self._estimate = max(float(cfg.min_limit), min(window * cfg.backoff_ratio, window - 1.0))
        self._last_cut_at = sample.now
        self._slow_start = False

    def _remember(self, level: int, now: float, latency_tells: bool) -> None:
        if self._hurt_at <= self._lifted_at > now - self._hold_s:  # the probe above it hurt
            self._hold_s = min(self._hold_s * 2.0, self._config.memory_s * _MAX_HOLDS)
        self._hurt_before, at = self._hurt, float(max(self._config.min_limit + 1, level))
        self._hurt = at if self._hurt is None else min(self._hurt, at)
        self._hurt_at, self._latency_tells = now, latency_tells
        self._ok_peak = self._evidence = 0
        self._estimate = min(self._estimate, self._cap())

    def _on_ok(self, sample: Sample) -> None:
        self._restarting = False
        self._ok_peak = max(self._ok_peak, sample.in_flight)
        norm = sample.latency_s / max(sample.work, self._config.min_work)
        short, long, baseline = self._short, self._long, self._baseline
        if short is None or long is None or baseline is None:
            self._first_baseline(sample, norm)
            return
        if self._probe_started is not None:
            self._probe(sample, norm, self._probe_started)
            return
        self._track(norm, short, long, baseline)
        # In slow start one clearly slow call ends it: the average would see it a round late.
        noise = 1.0 + _SLOW_CALL * math.sqrt(self._spread)
        self._slow_start = self._slow_start and norm <= baseline * self._config.tolerance * noise
        if self._probe_due(sample.now):
            self._probe_started, self._probe_norms = sample.now, []
            return
        self._relearn(sample)
        self._step(sample.in_flight)

    def _relearn(self, sample: Sample) -> None:
        """Let the hurt level rise on evidence of more room, or slowly with time."""
        if self._hurt is None:
            return
        if sample.now - self._hurt_at >= self._hold_s:
            self._hurt += 1.0
            self._hurt_at = self._lifted_at = sample.now
        at_cap = self._window() >= self._cap() and sample.in_flight >= self._cap()
        if not (at_cap and self._latency_tells and self._gradient() >= _QUEUEING):
            self._evidence = 0
            return
        self._evidence += 1
        if self._evidence >= self._window():  # a whole round at the cap without queueing
            self._hurt += max(1.0, 0.1 * self._hurt)
            self._evidence, self._hold_s = 0, self._config.memory_s

    def _first_baseline(self, sample: Sample, norm: float) -> None:
        # The small initial window measures no-load latency; a median, not one lucky call.
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
        # Queueing at the smallest window: the baseline is stale, and probing there is free.
        return self._window() == self._config.min_limit and self._gradient() < _QUEUEING

    def _track(self, norm: float, short: float, long: float, baseline: float) -> None:
        slow = _weight(self._config.long_window)
        deviation = min(1.0, abs(norm - short) / short) ** 2 if short > 0.0 else 0.0
        self._spread += slow * (deviation - self._spread)
        self._short = short + self._fast() * (norm - short)
        self._long = long + slow * (norm - long)
        # Below the baseline (past noise) even under load: the server got faster.
        self._baseline = min(baseline, self._long * (1.0 + self._margin(slow)))

    def _fast(self) -> float:
        # A window's worth at least, or the shortest-first order of completions would bias it.
        return _weight(max(self._config.short_window, self._window()))

    def _margin(self, weight: float) -> float:
        # noise_margin standard errors of an EMA of this weight (measured relative variance).
        return self._config.noise_margin * math.sqrt(self._spread * weight / (2.0 - weight))

    def _step(self, in_flight: int) -> None:
        cfg = self._config
        limit, gradient, cap = self._estimate, self._gradient(), self._cap()
        app_limited = in_flight < limit * _APP_LIMITED_SHARE
        near = self._hurt is not None and limit >= cfg.approach * self._hurt
        self._slow_start = self._slow_start and gradient >= _QUEUEING and not near
        if self._slow_start:
            moved = limit if app_limited else limit + cfg.slow_start_step
        else:
            allowance = cfg.queue_allowance * math.sqrt(limit)
            if near:  # close to where it hurt: creep up (concave, as TCP CUBIC)
                assert self._hurt is not None
                room = (cap - limit) / max(1.0, cap - cfg.approach * self._hurt)
                allowance *= max(_NEAR_PACE, min(1.0, room))
            target = limit * gradient + allowance
            if app_limited:
                target = min(target, limit)
            share = min(1.0, cfg.smoothing / max(limit, 1.0))
            moved = limit + share * (target - limit)
        self._estimate = max(float(cfg.min_limit), min(cap, moved))

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
