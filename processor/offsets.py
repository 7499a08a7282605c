"""Per-partition offset tracking for out-of-order completion and manual commits.

Records of a partition are dispatched in offset order but finish in any order. Kafka commits
one number per partition (the next offset to read), so the tracker may only commit up to the
lowest record still in flight; committing further would lose that record on a crash.

Pure bookkeeping, no Kafka here: the consumer loop calls :meth:`OffsetTracker.start` and
:meth:`OffsetTracker.finish` per record and, on its commit tick, sends
:meth:`OffsetTracker.commit_offsets` to the broker and reports success with
:meth:`OffsetTracker.mark_committed`.

Every operation is amortised O(1): a partition keeps its started offsets in a deque and the
in-flight ones in a set; the finished prefix of the deque is popped as soon as it forms.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

#: The partition key: aiokafka's ``TopicPartition`` in production, any hashable in tests.
PartitionKey = Hashable
_K = TypeVar("_K", bound=Hashable)


@dataclass(slots=True)
class _Partition:
    """Mutable state of one partition (internal; the tracker is the only writer)."""

    #: Started offsets, ascending, from the lowest one still in flight onwards.
    started: deque[int] = field(default_factory=deque)
    #: Started offsets not finished yet.
    in_flight: set[int] = field(default_factory=set)
    #: Finished offsets popped off ``started`` and not yet covered by a commit, ascending.
    done: deque[int] = field(default_factory=deque)
    last_started: int | None = None
    #: Highest offset popped off ``started``: everything up to it is finished.
    high_done: int | None = None
    committed: int | None = None

    def next_offset(self) -> int | None:
        """Kafka's commit value: lowest in-flight offset, else one past the last finished."""
        if self.started:
            return self.started[0]
        return None if self.high_done is None else self.high_done + 1

    def pop_finished_prefix(self) -> None:
        """Move the finished records at the front of ``started`` to ``done``."""
        while self.started and self.started[0] not in self.in_flight:
            offset = self.started.popleft()
            self.done.append(offset)
            self.high_done = offset

    def mark_committed(self, offset: int) -> None:
        """Move the committed mark up to ``offset``; never backwards."""
        if self.committed is not None and offset <= self.committed:
            return
        self.committed = offset
        # Finished records below the commit no longer count towards the uncommitted gap.
        while self.done and self.done[0] < offset:
            self.done.popleft()


class OffsetTracker:
    """Which offset of each partition is safe to commit, given out-of-order completion."""

    def __init__(self) -> None:
        self._parts: dict[PartitionKey, _Partition] = {}

    def start(self, tp: PartitionKey, offset: int) -> None:
        """Record that the record at ``offset`` was dispatched.

        Offsets of a partition must be started in increasing order; gaps are normal
        (compaction, transaction markers), so ``offset + 1`` is never assumed.
        """
        if offset < 0:
            raise ValueError(f"negative offset {offset} for {tp!r}")
        part = self._parts.setdefault(tp, _Partition())
        if part.last_started is not None and offset <= part.last_started:
            raise ValueError(
                f"offset {offset} for {tp!r} started after {part.last_started}: "
                "offsets must be started in increasing order"
            )
        part.last_started = offset
        part.started.append(offset)
        part.in_flight.add(offset)

    def finish(self, tp: PartitionKey, offset: int) -> bool:
        """Record that the record at ``offset`` is completely done; ``False`` if unknown.

        Unknown covers a dropped partition, an offset never started and a second finish.
        After a revoke and re-assignment the same offset may be in flight again; a late
        finish from the old assignment then counts for it, which is safe because
        ``finish`` means the record's work was done.
        """
        part = self._parts.get(tp)
        if part is None or offset not in part.in_flight:
            return False
        part.in_flight.remove(offset)
        part.pop_finished_prefix()
        return True

    def committable(self, tp: PartitionKey) -> int | None:
        """The offset to commit for ``tp``; ``None`` if it has not moved since the last commit."""
        part = self._parts.get(tp)
        if part is None:
            return None
        offset = part.next_offset()
        if offset is None or (part.committed is not None and offset <= part.committed):
            return None
        return offset

    def commit_offsets(
        self, partitions: Iterable[PartitionKey] | None = None
    ) -> dict[PartitionKey, int]:
        """Offsets to commit for ``partitions`` (default: all tracked), only those that moved.

        Pass the current assignment so nothing is committed for a partition just revoked.
        """
        keys = list(self._parts) if partitions is None else partitions
        offsets: dict[PartitionKey, int] = {}
        for tp in keys:
            offset = self.committable(tp)
            if offset is not None:
                offsets[tp] = offset
        return offsets

    def mark_committed(self, offsets: Mapping[_K, int]) -> None:
        """Record that the broker accepted ``offsets``.

        Partitions no longer tracked (dropped while the commit was in flight) are ignored,
        and a mark never moves a partition's committed offset backwards.
        """
        for tp, offset in offsets.items():
            part = self._parts.get(tp)
            if part is not None:
                part.mark_committed(offset)

    def drop(self, tp: PartitionKey) -> None:
        """Forget ``tp`` (revoked): its in-flight records are abandoned, later finishes ignored."""
        self._parts.pop(tp, None)

    def in_flight(self, tp: PartitionKey | None = None) -> int:
        """Records started and not finished, for ``tp`` or across all partitions."""
        if tp is None:
            return sum(len(part.in_flight) for part in self._parts.values())
        part = self._parts.get(tp)
        return 0 if part is None else len(part.in_flight)

    def pending_gap(self, tp: PartitionKey) -> int:
        """Records of ``tp`` started and not yet covered by a commit, finished or not."""
        part = self._parts.get(tp)
        return 0 if part is None else len(part.started) + len(part.done)

    def partitions(self) -> list[PartitionKey]:
        """The tracked partitions, in the order they were first started."""
        return list(self._parts)
