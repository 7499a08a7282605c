"""The event sink seam and its Kafka implementation.

Producer errors are translated here, once: a record the broker can never take (too large,
corrupt, an invalid topic) is ``Permanent``; everything else (broker down, leader moving,
authorisation) is ``Systemic`` and the record waits. A producer whose background sender has
died answers every later send with the same stored error; the sink notices, replaces it, and
reports itself unhealthy until the new one is up. A topic the principal may no longer write
(an ACL revoked during the run) is said once in one error line and makes the sink unhealthy
(not ready) until a send to it goes through again (``access.Denials``); its records hold.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
)
from prometheus_client import CollectorRegistry

from processor import tracing
from processor.errors import Permanent, Stage, Systemic, VoxlineError
from processor.kafka.access import Denials
from processor.kafka.headers import Headers, header_value
from processor.kafka.options import connection_options
from processor.settings import KafkaSettings

log = structlog.get_logger("voxline.sink")

#: Errors about this record, not the broker: sending it again cannot help.
PER_RECORD_ERRORS: tuple[type[KafkaError], ...] = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    CorruptRecordException,
    InvalidTopicError,
)


@dataclasses.dataclass(frozen=True, slots=True)
class Outbound:
    """A record to produce."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = dataclasses.field(default_factory=list)
    #: None: the time of sending.
    timestamp_ms: int | None = None

    def header(self, name: str) -> str | None:
        return header_value(self.headers, name)


class EventSink(Protocol):
    async def send(self, out: Outbound) -> tuple[int, int]:
        """Send one record and wait until the broker acknowledged it: (partition, offset)."""
        ...


def producer_error(topic: str, exc: KafkaError) -> VoxlineError:
    kind = Permanent if isinstance(exc, PER_RECORD_ERRORS) else Systemic
    return kind(
        f"publish to {topic} failed: {type(exc).__name__}: {exc}",
        stage=Stage.PUBLISH,
        error_type="kafka_" + type(exc).__name__,
    )


class KafkaSink:
    """An idempotent ``acks=all`` producer: an acknowledged send is durable, and the
    producer's own retries cannot duplicate or reorder records."""

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        on_health: Callable[[bool], None] = lambda _: None,
        registry: CollectorRegistry | None = None,
        **extra: Any,
    ) -> None:
        self._options = {
            **connection_options(kafka),
            "client_id": kafka.client_id,
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 5,
            **extra,
        }
        self.producer = AIOKafkaProducer(**self._options)
        self._on_health = on_health
        self._alive = True
        #: The producer must be replaced before the next send (see ``send``).
        self._stale = False
        #: Topics the broker refuses us (said once each; ``registry``: their metrics).
        self.denials = Denials(kafka, registry, on_change=lambda _: self._report())
        self._lock = asyncio.Lock()
        self._unstarted = True
        #: Dead producers replaced so far.
        self.replacements = 0

    async def start(self) -> None:
        await self._ensure_alive()

    async def stop(self) -> None:
        await self.producer.stop()

    def _report(self) -> None:
        self._on_health(self._alive and not self.denials.topics)

    @property
    def dead(self) -> bool:
        """The producer's background sender has stopped for good."""
        sender = getattr(self.producer, "_sender", None)
        task = getattr(sender, "sender_task", None)
        return task is not None and task.done()

    async def _ensure_alive(self) -> None:
        """Start the producer, replacing a dead one (once, however many sends notice it) or
        one whose sequence numbers a refused batch left behind."""
        async with self._lock:
            if self.dead or self._stale:
                if self.dead:
                    self._alive = False
                    self._report()
                    log.error("producer's sender died; replacing the producer")
                else:
                    log.info("replacing the producer: a refused batch left a gap in its sequence")
                self._stale = False
                old, self.producer = self.producer, AIOKafkaProducer(**self._options)
                self._unstarted = True
                self.replacements += 1
                try:
                    await old.stop()
                except Exception:  # it is broken already; that must not stop the replacement
                    log.warning("stopping the dead producer failed", exc_info=True)
            if self._unstarted:
                await self.producer.start()
                self._unstarted = False
                self._alive = True
                self._report()

    async def send(self, out: Outbound) -> tuple[int, int]:
        try:
            if self._unstarted or self.dead or self._stale:
                await self._ensure_alive()
            meta = await self.producer.send_and_wait(
                out.topic,
                value=out.value,
                key=out.key,
                headers=tracing.inject(out.headers),  # the record's trace, when on
                timestamp_ms=out.timestamp_ms,
            )
        except KafkaError as exc:
            if self._refused(out.topic, exc):
                # Refused in a produce answer (not by metadata): the idempotent producer has
                # used the batch's sequence numbers, and every later batch to the partition
                # would be OutOfOrderSequenceNumber, also once the grant is back.
                self._stale = self._stale or out.topic not in self._unauthorized()
                message = self.denials.denied(out.topic)
                raise Systemic(message, stage=Stage.PUBLISH, error_type=_DENIED) from exc
            self._stale = self._stale or isinstance(exc, OutOfOrderSequenceNumber)
            raise producer_error(out.topic, exc) from exc
        self.denials.allowed(out.topic)
        return int(meta.partition), int(meta.offset)

    def _refused(self, topic: str, exc: KafkaError) -> bool:
        """The broker refused ``topic``: said by the produce answer, or by the metadata answer
        behind a wait for the topic's partitions that ran out."""
        return isinstance(exc, TopicAuthorizationFailedError) or topic in self._unauthorized()

    def _unauthorized(self) -> set[str]:
        """The topics the producer's last metadata answer said it may not use."""
        cluster = getattr(getattr(self.producer, "client", None), "cluster", None)
        return set(getattr(cluster, "unauthorized_topics", ()))


_DENIED = "kafka_" + TopicAuthorizationFailedError.__name__
