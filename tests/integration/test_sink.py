"""The event sink on the real broker: a dead producer is replaced, and a dead letter the broker
can never take whole is cut short (and says so) instead of being retried forever."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from processor.config import BackendConfig
from processor.errors import InvalidInput, Stage
from processor.gate import Gate
from processor.kafka.records import Record, read_to_end
from processor.kafka.sink import KafkaSink, Outbound
from processor.limiter import StaticLimit
from processor.pipeline import Pipeline
from processor.routes import Route
from processor.settings import KafkaSettings, Settings
from processor.testing import MemoryStore, ScriptedBackend
from tests.integration.services import Services

pytestmark = pytest.mark.integration


def kafka(services: Services) -> KafkaSettings:
    tag = uuid.uuid4().hex[:8]
    return KafkaSettings(
        bootstrap_servers=services.bootstrap_servers,
        completion_topic=f"sink-{tag}.completions",
        dlq_topic=f"sink-{tag}.dlq",
    )


async def test_a_dead_producer_is_replaced_and_health_says_so(services: Services) -> None:
    k = kafka(services)
    health: list[bool] = []
    sink = KafkaSink(k, on_health=health.append)
    await sink.start()
    try:
        assert await sink.send(Outbound(k.completion_topic, b"k", b"before"))
        # The sender task ends the way it does when it dies: every later send would fail.
        sender = sink.producer._sender.sender_task
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        assert sink.dead
        await sink.send(Outbound(k.completion_topic, b"k", b"after"))
    finally:
        await sink.stop()
    assert sink.replacements == 1
    assert health == [True, False, True]
    values = [r.value for r in await read_to_end(k, k.completion_topic)]
    assert values == [b"before", b"after"]


async def test_an_oversize_dead_letter_is_truncated_not_retried_forever(
    services: Services,
) -> None:
    k = kafka(services)
    admin = AIOKafkaAdminClient(bootstrap_servers=services.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(k.dlq_topic, 1, 1, topic_configs={"max.message.bytes": "3500"}),
                NewTopic(k.completion_topic, 1, 1),
            ]
        )
    finally:
        await admin.close()
    backend = ScriptedBackend("b", [InvalidInput("cannot", stage=Stage.SYNTHESIZE)])
    route = Route(backend, Gate("b", StaticLimit(2)), BackendConfig(name="b", kind="espeak"))
    sink = KafkaSink(k)
    await sink.start()
    value = json.dumps({"request_id": "big", "text": "x" * 3300}).encode()
    record = Record("requests", 0, 0, b"big", value, int(time.time() * 1000))
    try:
        pipeline = Pipeline(Settings(kafka=k), {"b": route}, "b", MemoryStore(), sink)
        assert await pipeline.handle(record) == "failed"
    finally:
        await sink.stop()
    (letter,) = await read_to_end(k, k.dlq_topic)
    assert letter.header("dlq.value.truncated") == str(len(value))
    assert letter.header("dlq.reason") == "invalid_input"
    assert letter.value == value[: len(value) // 2]
    (event,) = await read_to_end(k, k.completion_topic)
    assert json.loads(event.value or b"")["dead_letter"]["topic"] == k.dlq_topic
