"""The consumer seam: what the runner needs from a Kafka consumer, and the aiokafka adapter.

``Consumer`` is the narrow protocol the runner drives; ``kafka_consumer`` builds the
aiokafka-backed one with Voxline's options, and ``processor.kafka.memory`` holds the in-memory
double the runner's unit tests use. aiokafka's errors and types stop here: the runner sees
``Record``, ``Unreadable``, ``Committed`` and ``ConsumerError`` only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, OffsetMetadataTooLargeError, for_code
from aiokafka.protocol.fetch import FetchRequest

from processor.kafka.batches import RawRecord, read_batches
from processor.kafka.options import FETCH_BYTES, connection_options
from processor.kafka.records import Record, to_record
from processor.settings import Settings

__all__ = [
    "Committed",
    "Consumer",
    "ConsumerError",
    "Fetched",
    "KafkaConsumer",
    "RebalanceListener",
    "TopicPartition",
    "Unreadable",
    "kafka_consumer",
]

log = structlog.get_logger("voxline.consumer")

#: Raw fetches tried when looking for the record the client could not read, and the bytes
#: of each (more than the prefetch, ``FETCH_BYTES``: a v0 fetch cuts a larger batch short).
_SCAN_FETCHES = 8
_SCAN_BYTES = 256 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Committed:
    """A partition's committed offset (the next record to read) and the metadata with it."""

    offset: int
    metadata: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Unreadable:
    """A record the client could not hand over (a header name that is not UTF-8);
    ``record`` holds what could be read of it, byte for byte where possible."""

    record: Record
    error: str

    @property
    def offset(self) -> int:
        return self.record.offset


Fetched = Record | Unreadable


class ConsumerError(Exception):
    """The broker refused or could not be reached; worth trying again later."""


class RebalanceListener(Protocol):
    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None: ...

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None: ...


class Consumer(Protocol):
    """The consumer calls the runner makes; offsets are committed only when told."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None: ...

    def assignment(self) -> set[TopicPartition]: ...

    def group_share(self) -> float:
        """Assigned partitions over all partitions of the subscribed topics (1.0 unknown)."""
        ...

    def paused(self) -> set[TopicPartition]: ...

    def pause(self, *partitions: TopicPartition) -> None: ...

    def resume(self, *partitions: TopicPartition) -> None: ...

    async def getmany(
        self, *, timeout_ms: int, max_records: int | None = None
    ) -> dict[TopicPartition, list[Fetched]]:
        """Records of assigned, unpaused partitions, in offset order per partition."""
        ...

    async def commit(self, offsets: Mapping[TopicPartition, Committed]) -> None:
        """Commit ``offsets`` with their metadata; ``ConsumerError`` if the broker refused."""
        ...

    async def committed(self, tp: TopicPartition) -> Committed | None:
        """What the group last committed for ``tp``, metadata included; None if nothing."""
        ...

    def highwater(self, tp: TopicPartition) -> int | None: ...


def kafka_consumer(settings: Settings, window: int) -> KafkaConsumer:
    """The aiokafka-backed consumer with Voxline's options; ``window``: records held at once."""
    k = settings.kafka
    return KafkaConsumer(
        AIOKafkaConsumer(
            **connection_options(k),
            group_instance_id=k.group_instance_id,
            group_id=k.group_id,
            client_id=k.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=max(1, window),
            max_partition_fetch_bytes=FETCH_BYTES,
            # The drain on revocation must end before the group gives up on us.
            rebalance_timeout_ms=int((settings.drain_timeout_s + 30) * 1000),
            max_poll_interval_ms=int((settings.drain_timeout_s + 60) * 1000),
            session_timeout_ms=10_000,
            heartbeat_interval_ms=3_000,
        )
    )


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: KafkaConsumer, listener: RebalanceListener) -> None:
        self.owner = owner
        self.listener = listener

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.listener.on_partitions_revoked(sorted(revoked))
        for tp in revoked:
            self.owner.forget(tp)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.listener.on_partitions_assigned(sorted(assigned))


class KafkaConsumer:
    """``Consumer`` over aiokafka; also hands over records aiokafka cannot decode."""

    def __init__(self, consumer: AIOKafkaConsumer, *, fetch_bytes: int = _SCAN_BYTES) -> None:
        self.client = consumer
        self.fetch_bytes = fetch_bytes
        #: Per partition, the offset after the last record handed over.
        self._next: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        await self.client.start()

    async def stop(self) -> None:
        await self.client.stop()

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        self.client.subscribe(list(topics), listener=_Listener(self, listener))

    def assignment(self) -> set[TopicPartition]:
        return set(self.client.assignment())

    def group_share(self) -> float:
        mine = len(self.client.assignment())
        topics = self.client.subscription()
        every = sum(len(self.client.partitions_for_topic(t) or ()) for t in topics)
        return min(1.0, mine / every) if mine and every else 1.0

    def paused(self) -> set[TopicPartition]:
        return set(self.client.paused())

    def pause(self, *partitions: TopicPartition) -> None:
        self.client.pause(*partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.client.resume(*partitions)

    def highwater(self, tp: TopicPartition) -> int | None:
        high = self.client.highwater(tp)
        return None if high is None else int(high)

    def start_at(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` from ``offset`` (an assigned partition, outside any group)."""
        self.client.seek(tp, offset)
        self._next[tp] = offset

    def forget(self, tp: TopicPartition) -> None:
        self._next.pop(tp, None)

    async def commit(self, offsets: Mapping[TopicPartition, Committed]) -> None:
        try:
            try:
                await self.client.commit({tp: (c.offset, c.metadata) for tp, c in offsets.items()})
            except OffsetMetadataTooLargeError:
                # The broker allows less than Kafka's default 4 KiB: commit the bare offsets
                # (a restart then redoes more, never less) rather than nothing at all.
                log.warning("broker refused the commit metadata as too large; committing without")
                await self.client.commit({tp: (c.offset, "") for tp, c in offsets.items()})
        except KafkaError as exc:
            raise ConsumerError(f"{type(exc).__name__}: {exc}") from exc

    async def committed(self, tp: TopicPartition) -> Committed | None:
        # AIOKafkaConsumer.committed drops the metadata; its coordinator keeps it.
        try:
            found = await self.client._coordinator.fetch_committed_offsets([tp])
        except KafkaError as exc:
            raise ConsumerError(f"{type(exc).__name__}: {exc}") from exc
        meta = found.get(tp)
        if meta is None or meta.offset < 0:
            return None
        return Committed(meta.offset, meta.metadata or "")

    async def getmany(
        self, *, timeout_ms: int, max_records: int | None = None
    ) -> dict[TopicPartition, list[Fetched]]:
        try:
            batch = await self.client.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:
            raise ConsumerError(f"{type(exc).__name__}: {exc}") from exc
        except UnicodeDecodeError as exc:
            return await self._salvage(exc)
        out: dict[TopicPartition, list[Fetched]] = {}
        for tp, messages in batch.items():
            if messages:
                out[tp] = [to_record(m) for m in messages]
                self._next[tp] = messages[-1].offset + 1
        return out

    async def _salvage(self, exc: Exception) -> dict[TopicPartition, list[Fetched]]:
        """aiokafka raised while decoding a fetched batch. Records it had already taken from
        other partitions in that call are lost with the exception, so every partition goes
        back to the record after the last one handed over; then the unreadable batch is read
        leniently and handed over whole, and the partition moves past it."""
        log.error("the Kafka client could not decode a fetched record", error=repr(exc))
        out: dict[TopicPartition, list[Fetched]] = {}
        try:
            for tp in sorted(self.assignment() - self.paused()):
                start = await self._rewind(tp)
                found = await self._scan(tp, start)
                if found:
                    out[tp] = found
        except KafkaError as err:
            raise ConsumerError(f"after an unreadable fetch: {err!r}") from exc
        if not out:
            raise ConsumerError(f"unreadable fetch, record not found: {exc!r}") from exc
        return out

    async def _rewind(self, tp: TopicPartition) -> int:
        start = self._next.get(tp)
        if start is None:
            start = await self.client.committed(tp)
        if start is None:
            start = (await self.client.beginning_offsets([tp]))[tp]
        self.client.seek(tp, start)
        return int(start)

    async def _scan(self, tp: TopicPartition, start: int) -> list[Fetched]:
        """From ``start`` up to the end of the first batch aiokafka cannot read, or nothing."""
        out: list[Fetched] = []
        offset = start
        for _ in range(_SCAN_FETCHES):
            batches = read_batches(await self._fetch_raw(tp, offset))
            if not batches:
                return []
            for b in batches:
                out.extend(_fetched(tp, r) for r in b.records if r.offset >= start)
                if not b.readable:
                    self.client.seek(tp, b.next_offset)
                    self._next[tp] = b.next_offset
                    return out
                offset = max(offset, b.next_offset)
        return []

    async def _fetch_raw(self, tp: TopicPartition, offset: int) -> bytes:
        client = self.client._client
        node = client.cluster.leader_for_partition(tp)
        if node is None or node < 0:
            raise ConsumerError(f"no leader known for {tp}")
        part = (tp.partition, offset, self.fetch_bytes)
        request = FetchRequest(0, 1, self.fetch_bytes, 0, [(tp.topic, [part])])
        response: Any = await client.send(node, request)
        for _topic, partitions in response.topics:
            for partition, error_code, _high, *data in partitions:
                if partition == tp.partition:
                    if error_code:
                        raise for_code(error_code)()
                    return bytes(data[-1] or b"")
        return b""


def _fetched(tp: TopicPartition, raw: RawRecord) -> Fetched:
    headers = tuple((k.decode("utf-8", "replace"), v) for k, v in raw.headers)
    record = Record(
        tp.topic, tp.partition, raw.offset, raw.key, raw.value, raw.timestamp_ms, headers
    )
    if raw.readable:
        return record
    return Unreadable(record, f"header name is not UTF-8: {raw.bad_names[0]!r}")
