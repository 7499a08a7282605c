"""The composition root: settings in, running objects out."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Mapping

import structlog

from processor.backends.base import Backend
from processor.pipeline import Pipeline
from processor.publisher import KafkaSink
from processor.runner import Runner
from processor.settings import Settings
from processor.store import S3Store
from processor.topics import ensure_topics

log = structlog.get_logger("voxline")


def build_backends(settings: Settings) -> dict[str, Backend]:
    """The configured backends by name (one for now: ``VOXLINE_BACKEND``)."""
    kind = settings.backend
    if kind == "espeak":
        from processor.backends.espeak import EspeakBackend

        return {"espeak": EspeakBackend(name="espeak")}
    if kind == "openai":
        from processor.backends.openai import OpenAIBackend

        if not settings.backend_url:
            raise ValueError("VOXLINE_BACKEND=openai needs VOXLINE_BACKEND_URL")
        return {
            "openai": OpenAIBackend(
                "openai",
                settings.backend_url,
                api_key=settings.backend_api_key,
                max_connections=settings.max_in_flight,
            )
        }
    raise ValueError(f"unknown backend {kind!r} (known: espeak, openai)")


@contextlib.asynccontextmanager
async def running_pipeline(
    settings: Settings, backends: Mapping[str, Backend] | None = None
) -> AsyncIterator[Pipeline]:
    """Backends, store and sink opened (and closed again) around a pipeline."""
    owned = backends is None
    chosen = build_backends(settings) if backends is None else backends
    sink = KafkaSink(settings.kafka.bootstrap_servers, client_id=settings.kafka.client_id)
    store = S3Store(
        settings.store.bucket,
        endpoint_url=settings.store.endpoint_url,
        region=settings.store.region,
        max_connections=max(10, settings.max_in_flight),
    )
    await sink.start()
    try:
        async with store:
            yield Pipeline(settings, chosen, store, sink)
    finally:
        await sink.stop()
        if owned:
            for backend in chosen.values():
                await backend.aclose()


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
        k.bootstrap_servers,
        [k.request_topic, k.completion_topic, k.dlq_topic],
        k.create_topics_partitions,
    )
    async with running_pipeline(settings, backends) as pipeline:
        runner = Runner(settings, pipeline)
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
            backend=settings.backend,
            max_in_flight=settings.max_in_flight,
        )
        await runner.run(ready=ready)
        return dict(runner.counts)


def _stop_on_signal(runner: Runner, sig: signal.Signals) -> None:
    log.info("signal received; draining", signal=sig.name, in_flight=runner.in_flight)
    runner.stop()
