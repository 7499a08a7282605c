"""Health policy tables, metric values as Prometheus parses them, and the HTTP endpoints."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from processor.observability import CONTENT_TYPE, Health, Metrics, serve_http

T0 = 1000.0

# -- Health ---------------------------------------------------------------------------------


def running(
    now: float = T0, *, stale_after_s: float = 30.0, join_grace_s: float | None = 60.0
) -> Health:
    """A processor whose loop ticked at ``now`` and that holds two partitions."""
    health = Health(now - 1, stale_after_s=stale_after_s, join_grace_s=join_grace_s)
    health.tick(now)
    health.assigned(2, now)
    return health


@pytest.mark.parametrize(
    ("setup", "at", "live", "reason_part"),
    [
        pytest.param(lambda h: None, T0 + 5, True, "ok", id="fresh tick"),
        pytest.param(lambda h: None, T0 + 30, True, "ok", id="tick exactly at the limit"),
        pytest.param(lambda h: None, T0 + 31, False, "poll loop has not ticked", id="stale tick"),
        pytest.param(
            lambda h: h.assigned(0, T0), T0 + 20, True, "ok", id="unassigned within grace"
        ),
        pytest.param(
            lambda h: (h.assigned(0, T0), h.tick(T0 + 61)),
            T0 + 61,
            False,
            "no partition assignment for 61.0s",
            id="unassigned past grace",
        ),
        pytest.param(
            lambda h: (h.assigned(0, T0), h.tick(T0 + 50), h.assigned(0, T0 + 50), h.tick(T0 + 61)),
            T0 + 61,
            False,
            "no partition assignment",
            id="repeated zero does not restart the grace",
        ),
        pytest.param(
            lambda h: (h.assigned(0, T0), h.assigned(3, T0 + 50), h.tick(T0 + 61)),
            T0 + 61,
            True,
            "ok",
            id="reassigned within grace",
        ),
        pytest.param(lambda h: h.set_draining(), T0 + 1, True, "ok", id="draining stays live"),
        pytest.param(
            lambda h: h.set_backend_open("qwen", True), T0 + 1, True, "ok", id="open breaker"
        ),
    ],
)
def test_liveness(
    setup: Callable[[Health], object], at: float, live: bool, reason_part: str
) -> None:
    health = running()
    setup(health)
    ok, reason = health.live(at)
    assert ok is live
    assert reason_part in reason


def test_loop_that_never_starts_is_not_live() -> None:
    health = Health(T0)
    assert health.live(T0 + 10) == (True, "ok")
    ok, reason = health.live(T0 + 31)
    assert not ok
    assert "has not started for 31.0s" in reason


def test_never_assigned_past_grace_is_not_live() -> None:
    health = Health(T0)
    for t in range(0, 62, 5):
        health.tick(T0 + t)
    ok, reason = health.live(T0 + 61)
    assert not ok
    assert "no partition assignment" in reason


def test_assignment_check_can_be_disabled_for_idle_members() -> None:
    health = Health(T0, join_grace_s=None)
    health.assigned(0, T0)
    health.tick(T0 + 3600)
    assert health.live(T0 + 3600) == (True, "ok")


def test_custom_limits() -> None:
    health = running(stale_after_s=5.0, join_grace_s=10.0)
    assert not health.live(T0 + 6)[0]
    health.tick(T0 + 6)
    health.assigned(0, T0 + 6)
    health.tick(T0 + 17)
    assert not health.live(T0 + 17)[0]


@pytest.mark.parametrize(
    ("setup", "ready", "reason_part"),
    [
        pytest.param(lambda h: None, True, "ok", id="running"),
        pytest.param(lambda h: h.set_draining(), False, "draining", id="draining"),
        pytest.param(
            lambda h: (h.set_backend_open("a", True), h.set_backend_open("b", True)),
            False,
            "all backend breakers open: a, b",
            id="all breakers open",
        ),
        pytest.param(
            lambda h: (h.set_backend_open("a", True), h.set_backend_open("b", False)),
            True,
            "ok",
            id="one breaker closed",
        ),
        pytest.param(
            lambda h: (h.set_backend_open("a", True), h.set_backend_open("a", False)),
            True,
            "ok",
            id="breaker closed again",
        ),
        pytest.param(lambda h: h.assigned(0, T0 - 100), False, "not live", id="not live"),
    ],
)
def test_readiness(setup: Callable[[Health], object], ready: bool, reason_part: str) -> None:
    health = running()
    setup(health)
    ok, reason = health.ready(T0 + 1)
    assert ok is ready
    assert reason_part in reason


def test_not_ready_before_first_tick() -> None:
    health = Health(T0)
    health.assigned(1, T0)
    ok, reason = health.ready(T0 + 1)
    assert not ok
    assert "starting" in reason


# -- Metrics --------------------------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(metrics: Metrics) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def test_all_families_are_exposed_with_their_types() -> None:
    families = {f.name: f.type for f in text_string_to_metric_families(Metrics().render().decode())}
    assert families == {
        "voxline_records_in": "counter",
        "voxline_succeeded": "counter",
        "voxline_chunks": "counter",
        "voxline_dead_lettered": "counter",
        "voxline_retries": "counter",
        "voxline_backend_in_flight": "gauge",
        "voxline_backend_window_limit": "gauge",
        "voxline_breaker_state": "gauge",
        "voxline_breaker_transitions": "counter",
        "voxline_records_in_flight": "gauge",
        "voxline_committed_lag": "gauge",
        "voxline_records_skipped": "counter",
        "voxline_records_unreadable": "counter",
        "voxline_records_given_up": "counter",
        "voxline_consumer_errors": "counter",
        "voxline_stage_seconds": "histogram",
        "voxline_usage_characters": "counter",
        "voxline_usage_audio_seconds": "counter",
        "voxline_usage_backend_seconds": "counter",
        "voxline_cache": "counter",
        "voxline_parked": "counter",
        "voxline_released": "counter",
        "voxline_rate_limit": "gauge",
        "voxline_rate_limited_seconds": "counter",
        "voxline_throttled": "counter",
    }


def test_counters_and_gauges_after_calls() -> None:
    m = Metrics()
    m.record_in("tts.requests")
    m.record_in("tts.requests")
    m.succeeded("qwen", chunks=3)
    m.succeeded("qwen", chunks=2)
    m.succeeded("espeak", chunks=1)
    m.dead_lettered("invalid_input", "decode")
    m.retry("qwen", "http_503")
    m.retry("qwen", "http_503")
    m.retry("qwen", "timeout")
    m.backend_gauges("qwen", in_flight=4, limit=8)
    m.records_in_flight(7)
    m.lag("tts.requests", 0, 12)
    m.lag("tts.requests", 1, 0)
    m.skipped("tts.requests")
    m.unreadable("tts.requests")
    m.given_up("tts.requests")
    m.consumer_error("commit", "timeout")
    m.consumer_error("commit", "timeout")

    found = samples(m)
    assert value(found, "voxline_records_in_total", topic="tts.requests") == 2
    assert value(found, "voxline_succeeded_total", backend="qwen") == 2
    assert value(found, "voxline_succeeded_total", backend="espeak") == 1
    assert value(found, "voxline_chunks_total", backend="qwen") == 5
    assert value(found, "voxline_chunks_total", backend="espeak") == 1
    assert value(found, "voxline_dead_lettered_total", reason="invalid_input", stage="decode") == 1
    assert value(found, "voxline_retries_total", backend="qwen", error_type="http_503") == 2
    assert value(found, "voxline_retries_total", backend="qwen", error_type="timeout") == 1
    assert value(found, "voxline_backend_in_flight", backend="qwen") == 4
    assert value(found, "voxline_backend_window_limit", backend="qwen") == 8
    assert value(found, "voxline_records_in_flight") == 7
    assert value(found, "voxline_committed_lag", topic="tts.requests", partition="0") == 12
    assert value(found, "voxline_committed_lag", topic="tts.requests", partition="1") == 0
    for name in ("skipped", "unreadable", "given_up"):
        assert value(found, f"voxline_records_{name}_total", topic="tts.requests") == 1
    assert value(found, "voxline_consumer_errors_total", call="commit", error_type="timeout") == 2


def test_forget_partition_drops_its_lag_series() -> None:
    m = Metrics()
    m.lag("t", 0, 5)
    m.lag("t", 1, 6)
    m.forget_partition("t", 0)
    m.forget_partition("t", 9)  # never reported: no error
    lags = {k: v for k, v in samples(m).items() if k[0] == "voxline_committed_lag"}
    assert lags == {("voxline_committed_lag", frozenset({("topic", "t"), ("partition", "1")})): 6}


def test_breaker_state_and_transitions() -> None:
    m = Metrics()
    m.breaker("qwen", "closed")  # breakers start closed: not a transition
    m.breaker("qwen", "open")
    m.breaker("qwen", "open")  # repeated report: not a transition
    m.breaker("qwen", "half_open")
    found = samples(m)
    assert value(found, "voxline_breaker_state", backend="qwen") == 1
    assert value(found, "voxline_breaker_transitions_total", backend="qwen", to="open") == 1
    assert value(found, "voxline_breaker_transitions_total", backend="qwen", to="half_open") == 1
    assert (
        "voxline_breaker_transitions_total",
        frozenset({("backend", "qwen"), ("to", "closed")}),
    ) not in found

    m.breaker("qwen", "open")
    m.breaker("qwen", "closed")
    found = samples(m)
    assert value(found, "voxline_breaker_state", backend="qwen") == 0
    assert value(found, "voxline_breaker_transitions_total", backend="qwen", to="open") == 2
    assert value(found, "voxline_breaker_transitions_total", backend="qwen", to="closed") == 1


def test_stage_histogram() -> None:
    m = Metrics()
    m.observe_stage("synthesize", 0.3)
    m.observe_stage("synthesize", 45.0)
    m.observe_stage("total", 200.0)
    found = samples(m)
    assert value(found, "voxline_stage_seconds_count", stage="synthesize") == 2
    assert value(found, "voxline_stage_seconds_sum", stage="synthesize") == pytest.approx(45.3)
    assert value(found, "voxline_stage_seconds_bucket", stage="synthesize", le="0.005") == 0
    assert value(found, "voxline_stage_seconds_bucket", stage="synthesize", le="0.5") == 1
    assert value(found, "voxline_stage_seconds_bucket", stage="synthesize", le="60.0") == 2
    assert value(found, "voxline_stage_seconds_bucket", stage="total", le="120.0") == 0
    assert value(found, "voxline_stage_seconds_bucket", stage="total", le="+Inf") == 1


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda m: m.observe_stage("validate", 1.0), id="unknown stage"),
        pytest.param(lambda m: m.breaker("qwen", "ajar"), id="unknown breaker state"),
    ],
)
def test_unbounded_labels_are_refused(call: Callable[[Metrics], None]) -> None:
    with pytest.raises(ValueError, match="unknown"):
        call(Metrics())


def test_registries_are_independent() -> None:
    a, b = Metrics(), Metrics()
    a.record_in("t")
    assert value(samples(a), "voxline_records_in_total", topic="t") == 1
    assert not any(name == "voxline_records_in_total" for name, _ in samples(b))


# -- HTTP -----------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_http_endpoints() -> None:
    clock = Clock(T0)
    health = running(T0)
    metrics = Metrics()
    metrics.record_in("tts.requests")
    async with (
        serve_http("127.0.0.1", 0, metrics, health, clock=clock) as port,
        aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http,
    ):
        assert port > 0
        for path in ("/healthz", "/readyz"):
            async with http.get(path) as resp:
                assert (resp.status, await resp.text()) == (200, "ok\n")

        health.set_draining()
        async with http.get("/readyz") as resp:
            assert (resp.status, await resp.text()) == (503, "draining\n")
        async with http.get("/healthz") as resp:
            assert resp.status == 200

        clock.now = T0 + 45
        async with http.get("/healthz") as resp:
            assert resp.status == 503
            assert "poll loop has not ticked for 45.0s" in await resp.text()

        metrics.succeeded("qwen", 2)
        async with http.get("/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == CONTENT_TYPE
            body = await resp.text()
        found = {
            (s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(body)
            for s in f.samples
        }
        assert value(found, "voxline_records_in_total", topic="tts.requests") == 1
        assert value(found, "voxline_succeeded_total", backend="qwen") == 1
        assert value(found, "voxline_chunks_total", backend="qwen") == 2

        async with http.get("/nope") as resp:
            assert resp.status == 404
        async with http.post("/metrics") as resp:
            assert resp.status == 405


async def test_http_server_releases_its_port() -> None:
    health, metrics = running(T0), Metrics()
    async with serve_http("127.0.0.1", 0, metrics, health, clock=Clock(T0)) as port:
        pass
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(f"http://127.0.0.1:{port}/healthz")
