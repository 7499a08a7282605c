"""The consumed record as the rest of Voxline sees it, and one way to read a topic to its end."""

from __future__ import annotations

import dataclasses
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from processor.kafka.headers import RawHeaders, header_value
from processor.kafka.options import connection_options
from processor.settings import KafkaSettings


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    """A consumed record, copied out of the Kafka client's type at the edge."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: RawHeaders = ()

    def header(self, name: str) -> str | None:
        return header_value(self.headers, name)


def to_record(msg: Any) -> Record:
    """Copy an aiokafka ConsumerRecord into our frozen value type."""
    headers = tuple(msg.headers or ())
    return Record(msg.topic, msg.partition, msg.offset, msg.key, msg.value, msg.timestamp, headers)


def reader(kafka: KafkaSettings) -> AIOKafkaConsumer:
    """A consumer outside any group that commits nothing: for reading, not processing."""
    return AIOKafkaConsumer(
        **connection_options(kafka),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )


async def end_offsets(consumer: AIOKafkaConsumer, topic: str) -> dict[TopicPartition, int]:
    """Each partition's end offset now (empty if the topic does not exist)."""
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        await consumer._client.force_metadata_update()  # the topic may be new
        parts = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    if not tps:
        return {}
    return dict(await consumer.end_offsets(tps))


async def read_to_end(
    kafka: KafkaSettings, topic: str, *, since_ms: int | None = None
) -> list[Record]:
    """Every record of ``topic`` up to its end as it was when reading began (from the first
    record at or after ``since_ms`` by timestamp, if given), in partition and offset order."""
    consumer = reader(kafka)
    await consumer.start()
    try:
        ends = {tp: end for tp, end in (await end_offsets(consumer, topic)).items() if end > 0}
        if not ends:
            return []
        consumer.assign(list(ends))
        await _seek(consumer, ends, since_ms)
        return await _read_until(consumer, ends)
    finally:
        await consumer.stop()


async def _seek(
    consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int], since_ms: int | None
) -> None:
    if since_ms is None:
        await consumer.seek_to_beginning(*ends)
        return
    found = await consumer.offsets_for_times(dict.fromkeys(ends, since_ms))
    for tp in list(ends):
        at = found.get(tp)
        if at is None:  # nothing at or after since_ms
            del ends[tp]
        else:
            consumer.seek(tp, at.offset)


async def _read_until(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> list[Record]:
    """Up to ``ends``; through the consumer adapter, so a record aiokafka cannot decode (a
    header name that is not UTF-8) is read leniently instead of ending the read."""
    from processor.kafka.consumer import KafkaConsumer, Unreadable  # it builds on this module

    lenient = KafkaConsumer(consumer)
    for tp in ends:
        lenient.start_at(tp, await consumer.position(tp))
    out: list[Record] = []
    todo = dict(ends)
    while todo:
        batch = await lenient.getmany(timeout_ms=1000)
        for tp, items in batch.items():
            records = (i.record if isinstance(i, Unreadable) else i for i in items)
            out.extend(r for r in records if r.offset < todo.get(tp, 0))
        for tp in list(todo):
            if await consumer.position(tp) >= todo[tp]:
                del todo[tp]
    out.sort(key=lambda r: (r.partition, r.offset))
    return out
