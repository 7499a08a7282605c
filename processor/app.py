"""The composition root: settings in, running objects out."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import structlog

from processor import config as cfg
from processor.backends.base import Backend, ReferenceLoader
from processor.breaker import Breaker, BreakerConfig
from processor.gate import Gate
from processor.kafka.sink import KafkaSink
from processor.kafka.topics import ensure_topics
from processor.limiter import AdaptiveLimit, LimiterConfig, StaticLimit
from processor.observability import Health, Metrics, serve_http
from processor.pipeline import Pipeline
from processor.references import S3ReferenceLoader
from processor.routes import Route
from processor.runner import Runner
from processor.settings import Settings
from processor.store import S3Store

log = structlog.get_logger("voxline")


def build_backend(conf: cfg.BackendConfig, references: ReferenceLoader | None) -> Backend:
    """One adapter from its config; kind-specific ``options`` go to its constructor."""
    opts: dict[str, Any] = dict(conf.options)
    timeout = httpx.Timeout(conf.timeout_s, connect=conf.connect_timeout_s)
    http: dict[str, Any] = {"timeout": timeout, "max_connections": conf.max_in_flight}
    url = conf.url or ""
    try:
        if conf.kind == "espeak":
            from processor.backends.espeak import EspeakBackend

            return EspeakBackend(conf.name, timeout=conf.timeout_s, **opts)
        if conf.kind == "openai":
            from processor.backends.openai import OpenAIBackend

            return OpenAIBackend(conf.name, url, api_key=conf.api_key, **http, **opts)
        if conf.kind == "cosyvoice":
            from processor.backends.cosyvoice import CosyVoiceBackend

            return CosyVoiceBackend(conf.name, url, references=references, **http, **opts)
        if conf.kind == "fish":
            from processor.backends.fish import FishSpeechBackend

            return FishSpeechBackend(
                conf.name, url, api_key=conf.api_key, references=references, **http, **opts
            )
        if conf.kind == "qwen":
            from processor.backends.qwen import QwenTTSBackend

            return QwenTTSBackend(
                conf.name, url, api_key=conf.api_key, references=references, **http, **opts
            )
    except TypeError as exc:  # an unknown key under [backends.NAME.options]
        raise cfg.ConfigError(f"[backends.{conf.name}.options]: {exc}") from exc
    raise cfg.ConfigError(f"[backends.{conf.name}]: unknown kind {conf.kind!r}")


def build_gate(conf: cfg.BackendConfig, metrics: Metrics, health: Health | None = None) -> Gate:
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

    def report(gate: Gate) -> None:
        metrics.backend_gauges(gate.name, gate.in_flight, gate.limit)
        if gate.breaker is not None:
            metrics.breaker(gate.name, gate.breaker.state)
        if health is not None:
            health.set_backend_open(gate.name, gate.is_open)

    # Probes at most 5 s apart: an outage's end is noticed within seconds, at the price of
    # one call per 5 s to a backend that is still down.
    breaker = Breaker(BreakerConfig(open_for_s=1.0, max_open_for_s=5.0))
    gate = Gate(conf.name, window, breaker, on_change=report)
    report(gate)
    return gate


def build_routes(
    conf: cfg.BackendsConfig,
    metrics: Metrics,
    backends: Mapping[str, Backend] | None = None,
    references: ReferenceLoader | None = None,
    health: Health | None = None,
) -> dict[str, Route]:
    """A route per configured backend; ``backends`` (tests) replace the adapters by name."""
    routes = {}
    for name, bconf in conf.backends.items():
        backend = (backends or {}).get(name) or build_backend(bconf, references)
        routes[name] = Route(backend, build_gate(bconf, metrics, health), bconf)
    return routes


@contextlib.asynccontextmanager
async def running_pipeline(
    settings: Settings,
    metrics: Metrics,
    backends: Mapping[str, Backend] | None = None,
    health: Health | None = None,
) -> AsyncIterator[tuple[Pipeline, int]]:
    """Backends, store and sink opened (and closed again) around a pipeline; also yields the
    consumer's record window."""
    conf = settings.backends
    references = S3ReferenceLoader(
        settings.store.endpoint_url,
        settings.store.region,
        allowed_buckets=conf.references.allowed_buckets,
        max_bytes=conf.references.max_bytes,
        max_duration_ms=round(conf.references.max_duration_s * 1000),
        min_sample_rate=conf.references.min_sample_rate,
    )
    routes = build_routes(conf, metrics, backends, references, health)
    sink = KafkaSink(settings.kafka)
    store = S3Store(
        settings.store.bucket,
        endpoint_url=settings.store.endpoint_url,
        region=settings.store.region,
        max_connections=max(10, conf.record_window),
    )
    await sink.start()
    try:
        async with store, references:
            pipeline = Pipeline(settings, routes, conf.default, store, sink, metrics)
            yield pipeline, conf.record_window
    finally:
        await sink.stop()
        for name, route in routes.items():
            if backends is None or name not in backends:
                await route.backend.aclose()


async def serve(
    settings: Settings,
    *,
    backends: Mapping[str, Backend] | None = None,
    ready: asyncio.Event | None = None,
    runner_box: list[Runner] | None = None,
    install_signals: bool = False,
) -> dict[str, int]:
    """Run the processor until stopped; returns the outcome counts."""
    k = settings.kafka
    await ensure_topics(
        k,
        [k.request_topic, k.completion_topic, k.dlq_topic],
        k.create_topics_partitions,
    )
    metrics = Metrics()
    health = Health(time.monotonic())
    async with (
        running_pipeline(settings, metrics, backends, health) as (pipeline, window),
        _http(settings, metrics, health),
    ):
        runner = Runner(settings, pipeline, window=window, metrics=metrics, health=health)
        if runner_box is not None:
            runner_box.append(runner)
        if install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, _stop_on_signal, runner, sig)
        log.info(
            "processor starting",
            group=k.group_id,
            topic=k.request_topic,
            backends=sorted(pipeline.routes),
            default_backend=pipeline.default_route,
            record_window=window,
        )
        await runner.run(ready=ready)
        return dict(runner.counts)


@contextlib.asynccontextmanager
async def _http(settings: Settings, metrics: Metrics, health: Health) -> AsyncIterator[None]:
    if settings.http_port is None:
        yield
        return
    async with serve_http(settings.http_host, settings.http_port, metrics, health) as port:
        log.info("serving /healthz, /readyz, /metrics", host=settings.http_host, port=port)
        yield


def _stop_on_signal(runner: Runner, sig: signal.Signals) -> None:
    log.info("signal received; draining", signal=sig.name, in_flight=runner.in_flight)
    runner.stop()
