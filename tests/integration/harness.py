"""Helpers for integration tests: unique topics per test, the processor run in-process, and
readers for topics and the bucket."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import aioboto3
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from processor import config
from processor.app import App
from processor.backends.base import Backend
from processor.kafka.records import end_offsets, read_to_end
from processor.kafka.topics import ensure_topics
from processor.settings import KafkaSettings, Settings, StoreSettings
from tests.integration.services import Services


def unique_settings(
    services: Services,
    name: str,
    *,
    backend: str = "espeak",
    backend_url: str | None = None,
    max_in_flight: int = 8,
    config_path: str | None = None,
    **overrides: Any,
) -> Settings:
    """Settings on topics and a prefix of their own; one backend (or a config file's)."""
    tag = f"{name}-{uuid.uuid4().hex[:8]}"
    kafka = KafkaSettings(
        bootstrap_servers=services.bootstrap_servers,
        group_id=f"g-{tag}",
        request_topic=f"{tag}.requests",
        completion_topic=f"{tag}.completions",
        dlq_topic=f"{tag}.requests.dlq",
        create_topics_partitions=4,
    )
    store = StoreSettings(
        endpoint_url=services.s3_endpoint_url,
        bucket=services.bucket,
        prefix=f"tests/{tag}/",
        region="us-east-1",
    )
    backends = (
        config.load(config_path)
        if config_path
        else config.single_backend(
            backend, url=backend_url, max_in_flight=max_in_flight, retry_timeout_s=30
        )
    )
    return Settings(kafka=kafka, store=store, backends=backends, **overrides)


async def with_request_topic(
    services: Services, name: str, partitions: int, **overrides: Any
) -> Settings:
    """``unique_settings`` whose request topic exists, with ``partitions`` partitions."""
    settings = unique_settings(services, name, **overrides)
    await ensure_topics(settings.kafka, [settings.kafka.request_topic], partitions)
    return settings


@contextlib.asynccontextmanager
async def running(
    settings: Settings, backends: Mapping[str, Backend] | None = None
) -> AsyncIterator[App]:
    """The processor as a task; stopped (drained) on exit. Fails fast if start-up fails."""
    app = App(settings, backends=backends)
    task = asyncio.create_task(app.run())
    waiter = asyncio.create_task(app.started.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED, timeout=60)
    if task.done():
        task.result()
    assert app.started.is_set(), "processor did not start within 60 s"
    try:
        yield app
        assert not task.done(), f"processor stopped early: {task}"
    finally:
        app.stop()
        await asyncio.wait_for(task, timeout=settings.drain_timeout_s + 30)


async def produce(settings: Settings, records: Iterable[tuple[bytes | None, bytes | None]]) -> int:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
    )
    await producer.start()
    n = 0
    try:
        futures = [
            await producer.send(settings.kafka.request_topic, key=k, value=v) for k, v in records
        ]
        for fut in futures:
            await fut
            n += 1
    finally:
        await producer.stop()
    return n


def request(rid: str, text: str, **extra: Any) -> tuple[bytes, bytes]:
    return rid.encode(), json.dumps({"request_id": rid, "text": text, **extra}).encode()


@dataclasses.dataclass(frozen=True, slots=True)
class Msg:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.value or b"null")


async def read_topic(kafka: KafkaSettings, topic: str) -> list[Msg]:
    """Every record of ``topic`` up to its current end."""
    return [
        Msg(
            r.partition,
            r.offset,
            r.key,
            r.value,
            {name: r.header(name) or "" for name, _ in r.headers},
        )
        for r in await read_to_end(kafka, topic)
    ]


async def wait_for(
    condition: Callable[[], Awaitable[bool]], *, timeout: float, what: str, every: float = 0.5
) -> None:
    """Poll ``condition`` until true; fail with ``what`` after ``timeout`` seconds."""
    give_up = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(every)


async def events_by_id(settings: Settings) -> dict[str, list[Msg]]:
    out: dict[str, list[Msg]] = {}
    for m in await read_topic(settings.kafka, settings.kafka.completion_topic):
        out.setdefault(m.json()["request_id"], []).append(m)
    return out


async def wait_for_events(
    settings: Settings, ids: set[str], timeout: float
) -> dict[str, list[Msg]]:
    seen: dict[str, list[Msg]] = {}

    async def done() -> bool:
        nonlocal seen
        seen = await events_by_id(settings)
        return ids <= set(seen)

    await wait_for(done, timeout=timeout, what=f"events for {len(ids)} requests", every=1.0)
    return seen


async def get_objects(
    services: Services, uris: Iterable[str]
) -> dict[str, tuple[bytes, dict[str, Any]]]:
    """Bytes and head of each ``s3://`` URI, through one client."""
    prefix = f"s3://{services.bucket}/"
    async with aioboto3.Session().client("s3", endpoint_url=services.s3_endpoint_url) as s3:

        async def one(uri: str) -> tuple[bytes, dict[str, Any]]:
            assert uri.startswith(prefix), uri
            resp = await s3.get_object(Bucket=services.bucket, Key=uri.removeprefix(prefix))
            async with resp["Body"] as body:
                data = await body.read()
            return data, {"ContentType": resp["ContentType"], "Metadata": resp["Metadata"]}

        wanted = list(dict.fromkeys(uris))
        got = await asyncio.gather(*(one(u) for u in wanted))
    return dict(zip(wanted, got, strict=True))


async def committed(settings: Settings) -> dict[int, int]:
    """The group's committed offset per partition of the request topic."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=settings.kafka.group_id,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        ends = await end_offsets(consumer, settings.kafka.request_topic)
        out = {}
        for tp in ends:
            off = await consumer.committed(TopicPartition(tp.topic, tp.partition))
            out[tp.partition] = off if off is not None else 0
        return out
    finally:
        await consumer.stop()


async def until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Wait for ``check`` to hold (polled every 50 ms); fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
