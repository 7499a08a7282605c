"""The event sink seam and its Kafka implementation."""

from __future__ import annotations

from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from processor.errors import Stage, Systemic
from processor.kafka.headers import Headers
from processor.kafka.options import connection_options
from processor.settings import KafkaSettings


class EventSink(Protocol):
    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        timestamp_ms: int | None = None,
    ) -> tuple[int, int]:
        """Send one record and wait until the broker acknowledged it: (partition, offset)."""
        ...


class KafkaSink:
    """An idempotent ``acks=all`` producer: an acknowledged send is durable, and the
    producer's own retries cannot duplicate or reorder records."""

    def __init__(self, kafka: KafkaSettings, **extra: Any) -> None:
        self.producer = AIOKafkaProducer(
            **connection_options(kafka),
            client_id=kafka.client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            **extra,
        )

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        timestamp_ms: int | None = None,
    ) -> tuple[int, int]:
        try:
            meta = await self.producer.send_and_wait(
                topic, value=value, key=key, headers=headers, timestamp_ms=timestamp_ms
            )
        except KafkaError as exc:
            raise Systemic(
                f"publish to {topic} failed: {type(exc).__name__}: {exc}",
                stage=Stage.PUBLISH,
                error_type="kafka_" + type(exc).__name__,
            ) from exc
        return int(meta.partition), int(meta.offset)
