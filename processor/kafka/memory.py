"""An in-memory ``Consumer`` for tests, beside the seam as httpx ships ``MockTransport``.

``MemoryLog`` plays the broker (partitions of records, the group's committed offsets and
metadata, every commit that landed); any number of ``MemoryConsumer``s read it one after
another, so a test can crash a runner and start the next one over the same committed state.
Rebalances happen when the test says (``assign``), and failures are switched on by name:
``hang("commit")`` makes commits wait until ``release()``, ``fail_getmany`` raises once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from processor.kafka.consumer import (
    Committed,
    ConsumerError,
    Fetched,
    RebalanceListener,
    TopicPartition,
    Unreadable,
)
from processor.kafka.headers import RawHeaders
from processor.kafka.records import Record


class MemoryLog:
    """The broker's side: records per partition, and the group's commits."""

    def __init__(self, topic: str = "requests", partitions: int = 1) -> None:
        self.topic = topic
        self.records: dict[TopicPartition, list[Fetched]] = {
            TopicPartition(topic, p): [] for p in range(partitions)
        }
        self.committed: dict[TopicPartition, Committed] = {}
        #: Every commit that landed, in order.
        self.commits: list[dict[TopicPartition, Committed]] = []
        self.appended = asyncio.Event()

    def tp(self, partition: int) -> TopicPartition:
        return TopicPartition(self.topic, partition)

    def append(
        self,
        partition: int = 0,
        value: bytes | None = b"{}",
        *,
        key: bytes | None = None,
        headers: RawHeaders = (),
    ) -> Record:
        """Write a record at the partition's next offset."""
        tp = self.tp(partition)
        record = Record(
            tp.topic, partition, len(self.records[tp]), key, value, 1_700_000_000_000, headers
        )
        self.records[tp].append(record)
        self.appended.set()
        return record

    def append_unreadable(self, partition: int = 0, error: str = "bad header name") -> Unreadable:
        """Write a record the client cannot hand over whole (value unknown)."""
        tp = self.tp(partition)
        record = Record(tp.topic, partition, len(self.records[tp]), None, None, 0)
        item = Unreadable(record, error)
        self.records[tp].append(item)
        self.appended.set()
        return item

    def offset(self, partition: int = 0) -> int | None:
        """The committed offset of ``partition`` (None: never committed)."""
        found = self.committed.get(self.tp(partition))
        return None if found is None else found.offset


class MemoryConsumer:
    """``Consumer`` over a ``MemoryLog``; assigns every partition on the first poll unless
    ``auto_assign=False`` (then the test calls ``assign``)."""

    def __init__(self, log: MemoryLog, *, auto_assign: bool = True) -> None:
        self.log = log
        self.auto_assign = auto_assign
        self.listener: RebalanceListener | None = None
        self.started = self.stopped = False
        self.polls = 0
        self._assigned: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        self._position: dict[TopicPartition, int] = {}
        self._rebalanced = asyncio.Event()
        self._rebalanced.set()
        self._ever_assigned = False
        self._hanging: set[str] = set()
        self._released = asyncio.Event()
        self._getmany_errors: list[Exception] = []
        self._commit_errors: list[Exception] = []

    # -- failures on demand -------------------------------------------------------------

    def hang(self, *calls: str) -> None:
        """Make ``commit``, ``committed`` and/or ``stop`` wait until ``release``."""
        self._hanging.update(calls)
        self._released.clear()

    def release(self) -> None:
        self._hanging.clear()
        self._released.set()

    def fail_getmany(self, error: Exception) -> None:
        """The next ``getmany`` raises ``error``."""
        self._getmany_errors.append(error)

    def fail_commit(self, error: Exception) -> None:
        """The next ``commit`` raises ``error``."""
        self._commit_errors.append(error)

    async def _maybe_hang(self, call: str) -> None:
        while call in self._hanging:
            await self._released.wait()

    # -- the protocol ---------------------------------------------------------------------

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        await self._maybe_hang("stop")
        self.stopped = True

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        if self.log.topic not in topics:  # a delay topic beside it has nothing here
            raise ValueError(f"this log holds {self.log.topic!r}, not {topics!r}")
        self.listener = listener

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def group_share(self) -> float:
        return len(self._assigned) / len(self.log.records) if self._assigned else 1.0

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def pause(self, *partitions: TopicPartition) -> None:
        self._paused.update(tp for tp in partitions if tp in self._assigned)

    def resume(self, *partitions: TopicPartition) -> None:
        self._paused.difference_update(partitions)

    def highwater(self, tp: TopicPartition) -> int | None:
        return len(self.log.records[tp]) if tp in self._assigned else None

    def position(self, tp: TopicPartition) -> int:
        return self._position[tp]

    async def assign(self, partitions: Sequence[int | TopicPartition]) -> None:
        """A rebalance: the current partitions are revoked, then ``partitions`` assigned,
        each starting from its committed offset (the beginning if none)."""
        new = {p if isinstance(p, TopicPartition) else self.log.tp(p) for p in partitions}
        self._rebalanced.clear()
        try:
            if self.listener is not None:
                await self.listener.on_partitions_revoked(sorted(self._assigned))
            self._assigned = new
            self._paused &= new
            self._position = {tp: self.log.offset(tp.partition) or 0 for tp in new}
            self._ever_assigned = True
            if self.listener is not None:
                await self.listener.on_partitions_assigned(sorted(new))
        finally:
            self._rebalanced.set()

    async def getmany(
        self, *, timeout_ms: int, max_records: int | None = None
    ) -> dict[TopicPartition, list[Fetched]]:
        self.polls += 1
        if self.auto_assign and not self._ever_assigned and self.listener is not None:
            await self.assign(sorted(self.log.records))
        await self._rebalanced.wait()
        if self._getmany_errors:
            raise self._getmany_errors.pop(0)
        self.log.appended.clear()
        batch = self._take(max_records)
        if not batch and timeout_ms > 0:
            try:
                await asyncio.wait_for(self.log.appended.wait(), timeout_ms / 1000)
            except TimeoutError:
                return {}
            batch = self._take(max_records)
        return batch

    def _take(self, max_records: int | None) -> dict[TopicPartition, list[Fetched]]:
        room = max_records if max_records is not None else 1 << 30
        out: dict[TopicPartition, list[Fetched]] = {}
        for tp in sorted(self._assigned - self._paused):
            pos = self._position[tp]
            taken = self.log.records[tp][pos : pos + room]
            if taken:
                out[tp] = list(taken)
                self._position[tp] = pos + len(taken)
                room -= len(taken)
            if room <= 0:
                break
        return out

    async def commit(self, offsets: Mapping[TopicPartition, Committed]) -> None:
        await self._maybe_hang("commit")
        if self._commit_errors:
            raise self._commit_errors.pop(0)
        stray = set(offsets) - self._assigned
        if stray:
            raise ConsumerError(f"not assigned: {sorted(stray)}")
        self.log.committed.update(offsets)
        self.log.commits.append(dict(offsets))

    async def committed(self, tp: TopicPartition) -> Committed | None:
        await self._maybe_hang("committed")
        return self.log.committed.get(tp)
