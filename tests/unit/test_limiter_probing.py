"""The adaptive window when the window is not used (app-limited), and its baseline probes."""

from __future__ import annotations

import math
import random

import pytest

from processor.limiter import AdaptiveLimit, LimiterConfig, Sample
from tests.unit.test_limiter import Server, ok, run_rounds

# --- (e) app-limited ----------------------------------------------------------------------------


def test_unused_window_does_not_grow() -> None:
    limiter = AdaptiveLimit(LimiterConfig(initial_limit=10))
    used = AdaptiveLimit(LimiterConfig(initial_limit=10))
    for t in range(500):
        limiter.update(ok(0.5, in_flight=4, now=float(t)))
        used.update(ok(0.5, in_flight=10, now=float(t)))
    assert limiter.limit == 10
    # The same samples with the window in use grow it, until 10 in flight is half of it.
    assert used.limit == 20


def test_unused_window_still_shrinks_on_queueing() -> None:
    limiter = AdaptiveLimit(LimiterConfig(initial_limit=20, probe_interval_s=math.inf))
    for t in range(5):
        limiter.update(ok(0.5, in_flight=2, now=float(t)))
    for t in range(5, 40):
        limiter.update(ok(1.5, in_flight=2, now=float(t)))
    assert limiter.limit < 20


# --- probing ------------------------------------------------------------------------------------


def test_probe_shrinks_window_then_restores_it_with_a_fresh_baseline() -> None:
    config = LimiterConfig(
        initial_limit=10, slow_start_step=0.0, probe_interval_s=100.0, probe_samples=5
    )
    limiter = AdaptiveLimit(config)
    for t in range(5):
        limiter.update(ok(0.5, in_flight=10, now=float(t)))
    assert limiter.baseline == pytest.approx(0.005)
    assert not limiter.probing
    window = limiter.limit
    assert limiter.update(ok(0.5, in_flight=window, now=200.0)) == window // 2
    assert limiter.probing
    # Calls that started before the probe, or above its window, are not no-load measurements.
    limiter.update(ok(0.9, in_flight=window, now=200.5))
    limiter.update(ok(0.9, in_flight=window, now=210.0))
    assert limiter.probing
    for k in range(5):
        limiter.update(ok(0.8, in_flight=window // 2, now=201.0 + k))
    assert not limiter.probing
    assert limiter.limit == window
    assert limiter.baseline == pytest.approx(0.008)


def test_probing_can_be_disabled() -> None:
    limiter = AdaptiveLimit(LimiterConfig(probe_interval_s=math.inf))
    trace = run_rounds(limiter, lambda _: Server(12), 300)
    assert not any(r.probing for r in trace)


def test_dropped_samples_change_nothing() -> None:
    a, b = AdaptiveLimit(), AdaptiveLimit()
    rng = random.Random(3)
    for t in range(300):
        sample = ok(rng.uniform(0.4, 0.8), in_flight=a.limit, now=float(t))
        a.update(sample)
        b.update(sample)
        b.update(Sample(99.0, 1.0, "dropped", 1, float(t)))
        assert (a.limit, a.baseline, a.probing) == (b.limit, b.baseline, b.probing)
