"""Operability: Prometheus metrics, liveness/readiness policy, and the HTTP endpoints that
expose them.

``Metrics`` and ``Health`` are plain objects with no I/O and no clock of their own (time is
passed in), so the consumer loop and pipeline can call them freely and tests can drive them.
``serve_http`` is the thin aiohttp adapter serving ``/healthz``, ``/readyz`` and ``/metrics``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_M = TypeVar("_M", Counter, Gauge)

#: The classic Prometheus text exposition format, which ``render`` produces.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Stages timed by ``Metrics.observe_stage``; a fixed set keeps label cardinality bounded.
STAGES = frozenset({"decode", "synthesize", "store", "publish", "total"})

#: Breaker states and the value ``voxline_breaker_state`` reports for each.
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}

# From a cached 5 ms lookup to a long clip synthesized on a slow CPU backend.
STAGE_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
    120.0,
)


class Metrics:
    """The processor's Prometheus metrics, on a registry of their own so that tests and
    several processors in one process do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        counter, gauge = self._series(Counter), self._series(Gauge)
        self._records_in = counter(
            "records_in_total", "Records taken from the request topic.", "topic"
        )
        self._succeeded = counter(
            "succeeded_total", "Records that ended in a succeeded event.", "backend"
        )
        self._chunks = counter(
            "chunks_total", "Text chunks synthesized for succeeded records.", "backend"
        )
        self._dead_lettered = counter(
            "dead_lettered_total", "Records written to the dead-letter topic.", "reason", "stage"
        )
        self._retries = counter(
            "retries_total", "Backend calls that failed and were retried.", "backend", "error_type"
        )
        self._backend_in_flight = gauge(
            "backend_in_flight", "Calls in flight to a backend.", "backend"
        )
        self._backend_window_limit = gauge(
            "backend_window_limit", "Current concurrency limit of a backend's window.", "backend"
        )
        self._breaker_state = gauge(
            "breaker_state", "Circuit breaker state: 0 closed, 1 half_open, 2 open.", "backend"
        )
        self._breaker_transitions = counter(
            "breaker_transitions_total",
            "Circuit breaker state changes, by the state entered.",
            "backend",
            "to",
        )
        self._records_in_flight = gauge("records_in_flight", "Records held by the consumer window.")
        self._committed_lag = gauge(
            "committed_lag", "High watermark minus committed offset.", "topic", "partition"
        )
        self._skipped = counter(
            "records_skipped_total",
            "Records read again after a crash or rebalance and skipped: already finished.",
            "topic",
        )
        self._unreadable = counter(
            "records_unreadable_total",
            "Records the Kafka client could not hand over whole; dead-lettered.",
            "topic",
        )
        self._given_up = counter(
            "records_given_up_total",
            "Records dead-lettered because the process died with them in flight too often.",
            "topic",
        )
        self._consumer_errors = counter(
            "consumer_errors_total",
            "Consumer calls that failed or timed out (retried), by call.",
            "call",
            "error_type",
        )
        self._stage_seconds = Histogram(
            "voxline_stage_seconds",
            "Time spent in each pipeline stage, and in total.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self._breaker_last: dict[str, str] = {}
        self._usage = {
            what: counter(f"usage_{what}_total", doc, "backend", "tenant")
            for what, doc in (
                ("characters", "Characters of request text, by backend and tenant."),
                ("audio_seconds", "Seconds of audio delivered, by backend and tenant."),
                ("backend_seconds", "Seconds spent in backend calls, by backend and tenant."),
            )
        }
        self._cache = counter(
            "cache_total",
            "Chunk cache lookups and writes, by operation and result.",
            "op",
            "result",
        )
        self._parked = counter(
            "parked_total", "Records parked on the delay topic, by the error type.", "reason"
        )
        self._released = counter(
            "released_total", "Parked records read back from the delay topic when due.", "topic"
        )
        self._rate = gauge(
            "rate_limit",
            "A backend's rate limit in effect (after 429s), by unit.",
            "backend",
            "unit",
        )
        self._rate_waited = counter(
            "rate_limited_seconds_total", "Seconds calls waited for a rate limit.", "backend"
        )
        self._throttled = counter(
            "throttled_total", "429 answers that lowered a backend's rate limit.", "backend"
        )

    def _series(self, kind: Callable[..., _M]) -> Callable[..., _M]:
        """A maker of ``voxline_<name>`` series of ``kind`` on this registry."""

        def make(name: str, documentation: str, *labels: str) -> _M:
            return kind(f"voxline_{name}", documentation, list(labels), registry=self.registry)

        return make

    def skipped(self, topic: str) -> None:
        """A record read again was skipped: the commit metadata says it is finished."""
        self._skipped.labels(topic=topic).inc()

    def unreadable(self, topic: str) -> None:
        """A record the Kafka client could not hand over whole was dead-lettered."""
        self._unreadable.labels(topic=topic).inc()

    def given_up(self, topic: str) -> None:
        """A record the process died with too often was dead-lettered."""
        self._given_up.labels(topic=topic).inc()

    def consumer_error(self, call: str, error_type: str) -> None:
        """A consumer call (commit, poll, ...) failed or timed out and will be retried."""
        self._consumer_errors.labels(call=call, error_type=error_type).inc()

    def record_in(self, topic: str) -> None:
        """A record was taken from ``topic``."""
        self._records_in.labels(topic=topic).inc()

    def succeeded(self, backend: str, chunks: int) -> None:
        """A record succeeded on ``backend`` after synthesizing ``chunks`` chunks."""
        self._succeeded.labels(backend=backend).inc()
        self._chunks.labels(backend=backend).inc(chunks)

    def dead_lettered(self, reason: str, stage: str) -> None:
        """A record was dead-lettered (``reason`` and ``stage`` as in the DLQ headers)."""
        self._dead_lettered.labels(reason=reason, stage=stage).inc()

    def retry(self, backend: str, error_type: str) -> None:
        """A backend call failed with ``error_type`` and will be retried."""
        self._retries.labels(backend=backend, error_type=error_type).inc()

    def backend_gauges(self, backend: str, in_flight: int, limit: int) -> None:
        """Current calls in flight to ``backend`` and its window limit."""
        self._backend_in_flight.labels(backend=backend).set(in_flight)
        self._backend_window_limit.labels(backend=backend).set(limit)

    def breaker(self, backend: str, state: str) -> None:
        """``backend``'s breaker is in ``state`` (closed, half_open or open). A transition is
        counted only when the state differs from the last one reported; breakers start closed."""
        value = BREAKER_STATES.get(state)
        if value is None:
            raise ValueError(f"unknown breaker state {state!r}; expected one of {BREAKER_STATES}")
        self._breaker_state.labels(backend=backend).set(value)
        if self._breaker_last.get(backend, "closed") != state:
            self._breaker_transitions.labels(backend=backend, to=state).inc()
        self._breaker_last[backend] = state

    def observe_stage(self, stage: str, seconds: float) -> None:
        """``stage`` (decode, synthesize, store, publish or total) took ``seconds``."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(STAGES)}")
        self._stage_seconds.labels(stage=stage).observe(seconds)

    def records_in_flight(self, n: int) -> None:
        """The consumer window holds ``n`` records."""
        self._records_in_flight.set(n)

    def lag(self, topic: str, partition: int, lag: int) -> None:
        """High watermark minus committed offset for one partition."""
        self._committed_lag.labels(topic=topic, partition=str(partition)).set(lag)

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop a revoked partition's lag series so it does not report a stale value."""
        with contextlib.suppress(KeyError):
            self._committed_lag.remove(topic, str(partition))

    def usage(
        self, backend: str, tenant: str, characters: int, audio_s: float, backend_s: float
    ) -> None:
        """A record finished (either way) with this usage; ``tenant`` is already bounded."""
        for what, amount in (
            ("characters", characters),
            ("audio_seconds", audio_s),
            ("backend_seconds", backend_s),
        ):
            self._usage[what].labels(backend=backend, tenant=tenant).inc(amount)

    def cache(self, op: str, result: str) -> None:
        """A chunk cache ``op`` (lookup, write) ended with ``result`` (hit, miss, corrupt,
        error, skipped, ok, failed)."""
        self._cache.labels(op=op, result=result).inc()

    def parked(self, reason: str) -> None:
        self._parked.labels(reason=reason).inc()

    def released(self, topic: str) -> None:
        self._released.labels(topic=topic).inc()

    def rate_limit(
        self, backend: str, per_s: float, chars_per_min: float, waited_s: float, throttles: int
    ) -> None:
        """The limits in effect, and the waits and 429s since the last report."""
        self._rate.labels(backend=backend, unit="requests_per_s").set(per_s)
        self._rate.labels(backend=backend, unit="chars_per_min").set(chars_per_min)
        self._rate_waited.labels(backend=backend).inc(waited_s)
        self._throttled.labels(backend=backend).inc(throttles)

    def render(self) -> bytes:
        """All metrics in the Prometheus text exposition format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)


class Health:
    """Liveness and readiness policy.

    Live: the poll loop ticked within ``stale_after_s`` (construction counts as the first
    tick, so a loop that never starts is caught too) and the consumer holds a partition
    assignment or has been without one for at most ``join_grace_s``. The second check catches
    the aiokafka hang after a broker restart where the member never rejoins the group.
    ``join_grace_s=None`` disables it, for groups with more members than partitions, where an
    idle member legitimately holds nothing.

    Ready: live, started (ticked at least once), not draining, the event producer up, and at
    least one backend breaker not open (backends never reported count as closed).
    """

    def __init__(
        self,
        now: float,
        *,
        stale_after_s: float = 30.0,
        join_grace_s: float | None = 60.0,
    ) -> None:
        self.stale_after_s = stale_after_s
        self.join_grace_s = join_grace_s
        self._last_tick = now
        self._started = False
        self._partitions = 0
        self._unassigned_since: float | None = now
        self._draining = False
        self._open: dict[str, bool] = {}
        self._sink_ok = True

    def tick(self, now: float) -> None:
        """The poll loop made a pass."""
        self._last_tick = max(self._last_tick, now)
        self._started = True

    def assigned(self, partitions_count: int, now: float) -> None:
        """The consumer currently holds ``partitions_count`` partitions (0: none)."""
        self._partitions = partitions_count
        if partitions_count > 0:
            self._unassigned_since = None
        elif self._unassigned_since is None:
            self._unassigned_since = now

    def set_draining(self) -> None:
        """Shutdown has begun: no longer ready (liveness is unaffected)."""
        self._draining = True

    def set_sink_ok(self, ok: bool) -> None:
        """Whether the event producer works (False while a dead one is being replaced)."""
        self._sink_ok = ok

    def set_backend_open(self, backend: str, is_open: bool) -> None:
        """Whether ``backend``'s circuit breaker is open."""
        self._open[backend] = is_open

    def live(self, now: float) -> tuple[bool, str]:
        """``(True, "ok")`` or ``(False, reason)``."""
        idle = now - self._last_tick
        if idle > self.stale_after_s:
            what = "ticked" if self._started else "started"
            return False, (
                f"poll loop has not {what} for {idle:.1f}s (limit {self.stale_after_s:g}s)"
            )
        if self.join_grace_s is not None and self._unassigned_since is not None:
            waiting = now - self._unassigned_since
            if waiting > self.join_grace_s:
                return False, (
                    f"no partition assignment for {waiting:.1f}s (grace {self.join_grace_s:g}s)"
                )
        return True, "ok"

    def ready(self, now: float) -> tuple[bool, str]:
        """``(True, "ok")`` or ``(False, reason)``."""
        live, why = self.live(now)
        if not live:
            return False, f"not live: {why}"
        if not self._started:
            return False, "starting: poll loop has not ticked yet"
        if self._draining:
            return False, "draining"
        if not self._sink_ok:
            return False, "event producer down: being replaced, or refused a topic (see the log)"
        if self._open and all(self._open.values()):
            return False, "all backend breakers open: " + ", ".join(sorted(self._open))
        return True, "ok"


def _probe(
    check: Callable[[float], tuple[bool, str]], clock: Callable[[], float]
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        ok, reason = check(clock())
        return web.Response(text=reason + "\n", status=200 if ok else 503)

    return handler


@contextlib.asynccontextmanager
async def serve_http(
    host: str,
    port: int,
    metrics: Metrics,
    health: Health,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[int]:
    """Serve ``GET /healthz``, ``/readyz`` (200 ``ok`` or 503 with the reason) and
    ``/metrics`` on ``host:port`` while the context is open; yields the bound port (pass
    ``port=0`` for any free one). ``clock`` must be the clock the caller feeds ``health``."""

    async def render(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/healthz", _probe(health.live, clock))
    app.router.add_get("/readyz", _probe(health.ready, clock))
    app.router.add_get("/metrics", render)
    # Probes arrive every few seconds; an access log line for each is noise.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        yield _bound_port(runner)
    finally:
        await runner.cleanup()


def _bound_port(runner: web.AppRunner) -> int:
    address = runner.addresses[0]
    port = address[1]
    if not isinstance(port, int):  # pragma: no cover - TCP sites always have (host, port, ...)
        raise RuntimeError(f"unexpected listening address {address!r}")
    return port
