"""The composition root: settings in, one running processor out.

``App(settings)`` wires every object once: backends, gates and routes, the store, the sink,
the pipeline and the runner. ``await app.run()`` runs until ``app.stop()`` (or SIGTERM when
``run_until_signalled`` is used), then drains, commits and closes everything it opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import structlog

from processor import heap
from processor.admission import Admission, shares
from processor.backends.base import Backend, ReferenceLoader
from processor.backends.registry import build as build_backend
from processor.breaker import Breaker, BreakerConfig
from processor.cache import open_cache
from processor.config import BackendConfig, BackendsConfig
from processor.gate import Gate
from processor.kafka.consumer import kafka_consumer
from processor.kafka.sink import KafkaSink
from processor.kafka.topics import ensure_topics
from processor.lanes import Lanes
from processor.lexicon import S3LexiconLoader
from processor.limiter import AdaptiveLimit, LimiterConfig, StaticLimit
from processor.observability import Health, Metrics, serve_http
from processor.parking import retry_topic
from processor.pipeline import Pipeline
from processor.ratelimit import RateLimit
from processor.references import S3ReferenceLoader
from processor.routes import Route
from processor.runner import Runner
from processor.settings import Settings
from processor.store import S3Store

log = structlog.get_logger("voxline")
#: Seconds each client gets to close on the way out (less when the drain timeout is nearly
#: spent, but at least ``CLOSE_MIN_S``).
CLOSE_TIMEOUT_S = 5.0
CLOSE_MIN_S = 0.25

#: Probes at most 5 s apart: an outage's end is noticed within seconds, at the price of one
#: call per 5 s to a backend that is still down.
BREAKER = BreakerConfig(open_for_s=1.0, max_open_for_s=5.0)


def build_gate(
    conf: BackendConfig,
    metrics: Metrics,
    health: Health | None = None,
    park_after_s: float | None = None,
) -> Gate:
    window = (
        AdaptiveLimit(
            LimiterConfig(
                initial_limit=conf.initial_in_flight,
                min_limit=conf.min_in_flight,
                max_limit=conf.max_in_flight,
            )
        )
        if conf.adaptive
        else StaticLimit(conf.max_in_flight)
    )

    seen = [0.0, 0.0]  # the rate limit's waits and 429s already reported

    def report(gate: Gate) -> None:
        metrics.backend_gauges(gate.name, gate.in_flight, gate.limit)
        if gate.rate is not None:
            waited, throttles = gate.rate.waited_s, gate.rate.throttles
            metrics.rate_limit(
                gate.name, *gate.rate.effective(), waited - seen[0], int(throttles - seen[1])
            )
            seen[:] = [waited, throttles]
        if gate.breaker is not None:
            metrics.breaker(gate.name, gate.breaker.state)
        if health is not None:
            health.set_backend_open(gate.name, gate.is_open)

    rate = RateLimit(conf.rate) if conf.rate.enabled else None
    gate = Gate(conf.name, window, Breaker(BREAKER), on_change=report, rate=rate)
    gate.park_after_s = park_after_s
    report(gate)
    return gate


def build_routes(
    settings: Settings,
    metrics: Metrics,
    backends: Mapping[str, Backend],
    health: Health | None = None,
) -> dict[str, Route]:
    """A route per configured backend, with ``backends`` (adapters by name)."""
    lanes = Lanes(settings.backends.lanes, settings.kafka.request_topic)
    routes = {}
    for name, conf in settings.backends.backends.items():
        gate = build_gate(conf, metrics, health, settings.park_after_s or None)
        gate.shares = lanes.shares if lanes.ranked else {}
        policy = settings.retry.policy(conf.retry_attempts, conf.retry_timeout_s)
        policy = dataclasses.replace(policy, park_after_s=settings.park_after_s or None)
        routes[name] = Route(backends[name], gate, conf, policy)
    return routes


def share_windows(routes: Mapping[str, Route], share: float) -> None:
    """The group rebalanced: each backend's adaptive window scales to this member's share
    (``AdaptiveLimit.set_share``), so the members of a group split a backend's capacity."""
    for route in routes.values():
        route.gate.set_share(share)


def admission(conf: BackendsConfig) -> Admission:
    """Each backend's share of the record window (isolation: one backend's trouble holds
    only its own share)."""
    windows = {name: b.max_in_flight for name, b in conf.backends.items()}
    return Admission(shares(conf.record_window, windows), conf.default)


def reference_loader(settings: Settings) -> S3ReferenceLoader:
    refs = settings.backends.references
    return S3ReferenceLoader(
        settings.store.endpoint_url,
        settings.store.region,
        allowed_buckets=refs.allowed_buckets,
        max_bytes=refs.max_bytes,
        max_duration_ms=round(refs.max_duration_s * 1000),
        min_sample_rate=refs.min_sample_rate,
    )


def lexicon_loader(settings: Settings) -> S3LexiconLoader:
    """PLS lexicons from the buckets reference audio may come from."""
    refs = settings.backends.references
    endpoint, region = settings.store.endpoint_url, settings.store.region
    return S3LexiconLoader(endpoint, region, allowed_buckets=refs.allowed_buckets)


class App:
    """One processor. ``backends`` replaces configured adapters by name (embedding Voxline
    with adapters of your own); the rest are built from the configuration."""

    def __init__(self, settings: Settings, *, backends: Mapping[str, Backend] | None = None):
        self.settings = settings
        self.metrics = Metrics()
        self.health = Health(time.monotonic())
        #: Set once the consumer has started and subscribed.
        self.started = asyncio.Event()
        self._given = dict(backends or {})
        self._stop = asyncio.Event()
        self.runner: Runner | None = None
        self.pipeline: Pipeline | None = None
        self._stopped_at: float | None = None
        self.counts: dict[str, int] = {}

    def stop(self) -> None:
        """Stop fetching, drain in-flight work, commit and return from ``run`` (signal-safe)."""
        self.health.set_draining()
        if self._stopped_at is None:
            self._stopped_at = time.monotonic()
        self._stop.set()
        if self.runner is not None:
            self.runner.stop()

    @property
    def in_flight(self) -> int:
        return 0 if self.runner is None else self.runner.in_flight

    async def run(self) -> dict[str, int]:
        """Run until stopped; returns the outcome counts."""
        heap.tune()  # the allocator's mmap threshold fixed (processor.heap)
        s = self.settings
        k = s.kafka
        topics = [k.request_topic, k.completion_topic, k.dlq_topic]
        topics.append(retry_topic(k.request_topic, k.retry_topic))
        topics += [lane.topic for lane in s.backends.lanes]
        await ensure_topics(k, topics, k.create_topics_partitions)
        async with self._pipeline() as pipeline, self._http():
            self.pipeline = pipeline
            conf: BackendsConfig = s.backends
            self.runner = Runner(
                s,
                pipeline,
                kafka_consumer(s, conf.record_window),
                window=conf.record_window,
                metrics=self.metrics,
                health=self.health,
                admission=admission(conf),
            )
            self.runner.on_share = functools.partial(share_windows, pipeline.routes)
            if self._stop.is_set():
                self.runner.stop()
            log.info(
                "processor starting",
                group=k.group_id,
                topic=k.request_topic,
                backends=sorted(pipeline.routes),
                default_backend=pipeline.default_route,
                record_window=conf.record_window,
                audio_window=conf.audio_window,
            )
            await self.runner.run(ready=self.started)
            self.counts = dict(self.runner.counts)
        return self.counts

    @contextlib.asynccontextmanager
    async def _pipeline(self) -> AsyncIterator[Pipeline]:
        """Backends, store, references and sink opened (and closed again) around a pipeline."""
        s = self.settings
        conf = s.backends
        built = {n: build_backend(c) for n, c in conf.backends.items() if n not in self._given}
        references: ReferenceLoader
        sink = KafkaSink(s.kafka, on_health=self.health.set_sink_ok, registry=self.metrics.registry)
        store = S3Store(
            s.store.bucket,
            endpoint_url=s.store.endpoint_url,
            region=s.store.region,
            max_connections=max(10, conf.record_window),
        )
        try:
            await sink.start()
            async with (
                store,
                reference_loader(s) as references,
                lexicon_loader(s) as lexicons,
                open_cache(s, self.metrics) as cache,
            ):
                routes = build_routes(s, self.metrics, {**built, **self._given}, self.health)
                pipeline = Pipeline(
                    s,
                    routes,
                    conf.default,
                    store,
                    sink,
                    self.metrics,
                    references=references,
                    cache=cache,
                    lexicons=lexicons,
                )
                try:
                    yield pipeline
                finally:  # the quality gate's transcription client, if any
                    await self._close(pipeline.synth.quality.aclose)
        finally:
            # Everything was drained and acknowledged before this point; a broker or backend
            # that is down must not keep a stopping processor from exiting.
            for close in (sink.stop, *(b.aclose for b in built.values())):
                await self._close(close)

    async def _close(self, close: Callable[[], Awaitable[None]]) -> None:
        try:
            await asyncio.wait_for(close(), self._close_budget())
        except Exception as exc:
            log.warning("closing failed", what=repr(close), error=repr(exc))

    def _close_budget(self) -> float:
        """Seconds a client may take to close: what is left of the drain timeout once a stop
        was asked for (the whole shutdown fits in it), at least a moment, at most 5 s."""
        if self._stopped_at is None:
            return CLOSE_TIMEOUT_S
        left = self._stopped_at + self.settings.drain_timeout_s - time.monotonic()
        return max(CLOSE_MIN_S, min(CLOSE_TIMEOUT_S, left))

    @contextlib.asynccontextmanager
    async def _http(self) -> AsyncIterator[None]:
        s = self.settings
        if s.http_port is None:
            yield
            return
        async with serve_http(s.http_host, s.http_port, self.metrics, self.health) as port:
            log.info("serving /healthz, /readyz, /metrics", host=s.http_host, port=port)
            yield


async def run_until_signalled(settings: Settings) -> dict[str, int]:
    """``voxline run``: the processor until SIGTERM/SIGINT, then a clean drain."""
    app = App(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stop_on_signal, app, sig)
    return await app.run()


def _stop_on_signal(app: App, sig: signal.Signals) -> None:
    log.info("signal received; draining", signal=sig.name, in_flight=app.in_flight)
    app.stop()
