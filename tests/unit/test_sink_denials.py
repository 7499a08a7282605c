"""Issue 18: a topic the running processor may no longer write (an ACL revoked during the run)
is said once in one error line naming the topic, the principal and the grant, however many
records and retries meet it; the sink is unhealthy (not ready) while any topic is refused; the
send is a ``Systemic`` error (the record holds, nothing lost); the first send that goes
through again says access is back. (On a real broker: tests/integration/test_security.py.)"""

from __future__ import annotations

import re
import types
from typing import Any

import pytest
import structlog
from aiokafka.errors import (
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)
from prometheus_client import CollectorRegistry

from processor.errors import Systemic
from processor.kafka.sink import KafkaSink, Outbound
from processor.settings import KafkaSettings

KAFKA = KafkaSettings(
    bootstrap_servers="127.0.0.1:1",
    security_protocol="SASL_SSL",
    sasl_mechanism="SCRAM-SHA-512",
    sasl_username="voxline",
    sasl_password="hunter2",
)
DLQ = Outbound(KAFKA.dlq_topic, b"k", b"v")
LINE = (
    "Kafka authorization failed: user 'voxline' may not use topic 'tts.requests.dlq' "
    "(the dead-letter topic; TOPIC_AUTHORIZATION_FAILED): grant it WRITE on that topic"
)


class Producer:
    """Answers sends from a script of errors (None: acknowledged)."""

    def __init__(self, *script: Exception | None, unauthorized: set[str] | None = None) -> None:
        self.script = list(script)
        self.client = types.SimpleNamespace(
            cluster=types.SimpleNamespace(unauthorized_topics=unauthorized or set())
        )

    async def send_and_wait(self, topic: str, **_: Any) -> Any:
        error = self.script.pop(0)
        if error is not None:
            raise error
        return types.SimpleNamespace(partition=0, offset=7)


def sink_with(producer: Producer) -> tuple[KafkaSink, list[bool], CollectorRegistry]:
    health: list[bool] = []
    registry = CollectorRegistry()
    sink = KafkaSink(KAFKA, on_health=health.append, registry=registry)
    sink.producer = producer
    sink._unstarted = False

    async def replace() -> None:  # a real replacement would connect: count it instead
        sink._stale = False
        sink.replacements += 1

    sink._ensure_alive = replace  # type: ignore[method-assign]
    return sink, health, registry


def metric(registry: CollectorRegistry, name: str, topic: str) -> float | None:
    return registry.get_sample_value(name, {"topic": topic})


async def test_a_revoked_topic_is_said_once_holds_and_comes_back() -> None:
    denied = TopicAuthorizationFailedError(KAFKA.dlq_topic)
    sink, health, registry = sink_with(Producer(denied, denied, denied, None, None))
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):  # three records, or one record's retries
            with pytest.raises(Systemic) as caught:
                await sink.send(DLQ)
            assert caught.value.message == LINE
            assert caught.value.error_type == "kafka_TopicAuthorizationFailedError"
        assert health == [False]  # not ready, said once
        # Refused in a produce answer: the idempotent producer's sequence has a gap, so it
        # is replaced before the next send (else OutOfOrderSequenceNumber once granted).
        assert sink.replacements == 2
        assert metric(registry, "voxline_kafka_topic_denied", DLQ.topic) == 1
        assert metric(registry, "voxline_kafka_topic_denied_sends_total", DLQ.topic) == 3
        assert await sink.send(DLQ) == (0, 7)  # granted again: the held record goes
        assert await sink.send(DLQ) == (0, 7)
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [e["event"] for e in errors] == [
        LINE + "; its records are held (not ready) until access returns"
    ]
    assert (errors[0]["topic"], errors[0]["principal"]) == (DLQ.topic, "user 'voxline'")
    assert errors[0]["grant"] == "WRITE on topic tts.requests.dlq"
    restored = [e["event"] for e in logs if e["log_level"] == "info"]
    assert restored == [
        "Kafka authorization restored: user 'voxline' writes 'tts.requests.dlq' again"
    ]
    assert health == [False, True]
    assert metric(registry, "voxline_kafka_topic_denied", DLQ.topic) == 0
    assert all("hunter2" not in str(e) for e in logs)


async def test_a_metadata_answer_that_refuses_the_topic_counts_as_refused() -> None:
    # aiokafka's wait for the topic's partitions ran out; its metadata said: not authorized
    waited = UnknownTopicOrPartitionError()
    sink, health, _ = sink_with(Producer(waited, unauthorized={DLQ.topic}))
    with pytest.raises(Systemic, match="grant it WRITE on that topic"):
        await sink.send(DLQ)
    assert health == [False]
    assert sink.denials.topics == {DLQ.topic}
    assert not sink._stale  # refused by metadata: no batch, no gap, nothing to replace


async def test_a_gap_in_the_sequence_replaces_the_producer() -> None:
    sink, _, _ = sink_with(Producer(OutOfOrderSequenceNumber(), None))
    with pytest.raises(Systemic, match="OutOfOrderSequenceNumber"):
        await sink.send(DLQ)
    assert await sink.send(DLQ) == (0, 7)
    assert sink.replacements == 1


async def test_other_topics_and_other_errors_are_left_as_they_were() -> None:
    completions = Outbound(KAFKA.completion_topic, b"k", b"v")
    sink, health, _ = sink_with(
        Producer(TopicAuthorizationFailedError(completions.topic), KafkaTimeoutError())
    )
    with pytest.raises(Systemic, match=re.escape("'tts.completions' (the completion topic;")):
        await sink.send(completions)
    with pytest.raises(
        Systemic, match=re.escape("publish to tts.requests.dlq failed: KafkaTimeoutError")
    ):
        await sink.send(DLQ)  # not an authorization failure: no line, no change
    assert sink.denials.topics == {completions.topic}
    assert health == [False]
