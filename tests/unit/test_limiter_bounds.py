"""The adaptive window's bounds for any input, the static window, and the checks on settings
and samples."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.limiter import AdaptiveLimit, Limit, LimiterConfig, Sample, StaticLimit
from tests.unit.test_limiter import Server, run_rounds

# --- (f) bounds, for any input ------------------------------------------------------------------

outcomes = st.sampled_from(["ok", "ok", "ok", "overload", "timeout", "error", "dropped"])
samples = st.builds(
    Sample,
    latency_s=st.floats(0.0, 1e12, allow_nan=False) | st.sampled_from([0.0, 1e-300]),
    work=st.floats(0.0, 1e9, allow_nan=False),
    outcome=outcomes,
    in_flight=st.integers(0, 200),
    now=st.floats(-1e9, 1e12, allow_nan=False),
)


@st.composite
def configs(draw: st.DrawFn) -> LimiterConfig:
    """Any valid configuration."""
    low = draw(st.integers(1, 20))
    high = draw(st.integers(low, 100))
    return LimiterConfig(
        initial_limit=draw(st.integers(low, high)),
        min_limit=low,
        max_limit=high,
        backoff_ratio=draw(st.floats(0.01, 0.99)),
        smoothing=draw(st.floats(0.01, 1.0)),
        tolerance=draw(st.floats(1.0, 10.0)),
        queue_allowance=draw(st.floats(0.01, 10.0)),
        slow_start_step=draw(st.floats(0.0, 5.0)),
        short_window=draw(st.integers(1, 50)),
        probe_interval_s=draw(st.floats(0.01, 1e6) | st.just(math.inf)),
        probe_ratio=draw(st.floats(0.01, 0.99)),
        probe_samples=draw(st.integers(1, 10)),
        min_work=draw(st.floats(1e-6, 1e3)),
    )


@settings(max_examples=100, deadline=None)
@given(config=configs(), trace=st.lists(samples, max_size=80))
def test_limit_stays_within_bounds_for_any_samples(
    config: LimiterConfig, trace: list[Sample]
) -> None:
    limiter = AdaptiveLimit(config)
    assert limiter.limit == config.initial_limit
    for sample in trace:
        returned = limiter.update(sample)
        assert returned == limiter.limit
        assert config.min_limit <= returned <= config.max_limit


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32), capacity=st.floats(0.5, 80.0))
def test_limit_stays_within_bounds_on_any_simulated_server(seed: int, capacity: float) -> None:
    config = LimiterConfig(min_limit=2, max_limit=50)
    trace = run_rounds(AdaptiveLimit(config), lambda _: Server(capacity), 60, seed=seed)
    assert all(2 <= r.limit <= 50 for r in trace)


# --- (g) static ---------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(limit=st.integers(1, 500), trace=st.lists(samples, max_size=50))
def test_static_limit_never_changes(limit: int, trace: list[Sample]) -> None:
    static = StaticLimit(limit)
    assert all(static.update(sample) == limit for sample in trace)
    assert static.limit == limit


def test_static_limit_in_the_simulation_ignores_overload() -> None:
    trace = run_rounds(StaticLimit(30), lambda _: Server(12), 20)
    assert sum(r.failures for r in trace) > 0
    assert {r.limit for r in trace} == {30}


def test_both_satisfy_the_limit_protocol() -> None:
    limits: list[Limit] = [StaticLimit(5), AdaptiveLimit()]
    assert [limit.limit for limit in limits] == [5, 4]


# --- validation ---------------------------------------------------------------------------------


NONSENSE = [
    {"min_limit": 0}, {"initial_limit": 100}, {"initial_limit": 1, "min_limit": 2},
    {"max_limit": 3}, {"backoff_ratio": 1.0}, {"backoff_ratio": 0.0}, {"backoff_ratio": math.nan},
    {"smoothing": 0.0}, {"smoothing": 1.5}, {"tolerance": 0.9}, {"tolerance": math.inf},
    {"queue_allowance": 0.0}, {"slow_start_step": -1.0}, {"short_window": 0},
    {"long_window": 0}, {"noise_margin": -1.0}, {"probe_interval_s": 0.0},
    {"probe_interval_s": math.nan}, {"probe_ratio": 1.0}, {"probe_samples": 0},
    {"min_work": 0.0}, {"min_work": math.inf}, {"approach": 1.0}, {"crash_ratio": 0.0},
    {"memory_s": 0.0}, {"memory_s": math.nan},
]  # fmt: skip


@pytest.mark.parametrize("changes", NONSENSE)
def test_nonsense_config_is_rejected(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(changes))):
        replace(LimiterConfig(), **changes)


def test_defaults_are_valid_and_documented_values() -> None:
    config = LimiterConfig()
    assert (config.initial_limit, config.min_limit, config.max_limit) == (4, 1, 64)
    assert config.backoff_ratio == 0.9


@pytest.mark.parametrize(
    "fields",
    [
        {"latency_s": -1.0},
        {"latency_s": math.inf},
        {"work": -1.0},
        {"work": math.nan},
        {"in_flight": -1},
        {"now": math.nan},
        {"outcome": "slow"},
    ],
)
def test_nonsense_sample_is_rejected(fields: dict[str, Any]) -> None:
    base: dict[str, Any] = {
        "latency_s": 1.0,
        "work": 1.0,
        "outcome": "ok",
        "in_flight": 1,
        "now": 0.0,
    }
    with pytest.raises(ValueError, match=next(iter(fields))):
        Sample(**(base | fields))


def test_static_limit_rejects_an_empty_window() -> None:
    with pytest.raises(ValueError, match="limit"):
        StaticLimit(0)
