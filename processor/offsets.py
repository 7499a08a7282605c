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

A commit also carries metadata (Kafka keeps a string with each committed offset), so that
the next owner of a partition, after a crash or a rebalance, knows more than the offset:

- which offsets above it are already finished (skipped when read again, so a crash redoes
  only what was really in flight);
- how many lives each unfinished record has cost: a *frontier* says which offsets the writer
  had dispatched (or was about to), and unless the writer drained and said so (*clean*),
  every unfinished offset below the frontier lost one more life with it. A record that
  keeps dying with the process is run alone (so others are not blamed for it) and, past a
  limit, given up on (dead-lettered) instead of crashing the next process too. The frontier
  runs a window ahead of what was dispatched (one commit per window, not one per record), so
  a crash also costs a life to some records never started: hence alone only from the third
  life, when two crashes in a row caught a record unfinished.

``processor.commit_meta`` holds the wire form; :meth:`OffsetTracker.inherit`
reads it back, :meth:`OffsetTracker.commit_points` writes it.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

from processor.commit_meta import (
    METADATA_LIMIT,
    CommitMeta,
    decode_meta,
    encode_meta,
    inherited_lives,
)

__all__ = [
    "METADATA_LIMIT",
    "CommitMeta",
    "CommitPoint",
    "OffsetTracker",
    "Verdict",
    "decode_meta",
    "encode_meta",
    "inherited_lives",
]

#: The partition key: aiokafka's ``TopicPartition`` in production, any hashable in tests.
PartitionKey = Hashable
_K = TypeVar("_K", bound=Hashable)


class Verdict(enum.Enum):
    """What to do with a record read (again) from a partition."""

    RUN = "run"
    #: Finished by an earlier owner: count it, do not redo it.
    SKIP = "skip"
    #: In flight when processes died before: run it with nothing else in flight.
    SOLO = "solo"
    #: Died with the process too often: dead-letter it, never run it again.
    GIVE_UP = "give_up"


class CommitPoint(NamedTuple):
    """One partition's commit: offset, metadata, and the frontier the metadata claims."""

    offset: int
    metadata: str
    frontier: int | None


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
    #: Read from the broker at assignment (``inherit``), not created by a first ``start``.
    inherited: bool = False
    #: Offsets an earlier owner finished and this one has not read again yet.
    known_done: set[int] = field(default_factory=set)
    #: Lives lost so far per unfinished offset.
    lives: dict[int, int] = field(default_factory=dict)
    #: The frontier the next commit claims, and the one in the last commit that landed.
    frontier: int | None = None
    landed_frontier: int | None = None
    #: The metadata the broker holds with ``committed``.
    metadata: str = ""
    #: The first offset about to start when nothing was ever committed: a commit there is
    #: safe, and it carries the frontier before anything runs.
    floor: int | None = None

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

    def __init__(
        self, *, solo_after: int = 3, give_up_after: int = 5, limit: int = METADATA_LIMIT
    ) -> None:
        self._parts: dict[PartitionKey, _Partition] = {}
        self.solo_after = solo_after
        self.give_up_after = give_up_after
        self.limit = limit

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
        part.known_done.discard(offset)

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
        part.lives.pop(offset, None)
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

    # -- commit metadata: what the next owner inherits ------------------------------------

    def inherit(self, tp: PartitionKey, committed: int | None, metadata: str) -> CommitMeta:
        """Start ``tp`` afresh from what the broker holds for it (raises ``ValueError`` on
        damaged metadata; inherit ``""`` then)."""
        meta = CommitMeta() if committed is None else decode_meta(committed, metadata)
        part = _Partition(committed=committed, inherited=True, metadata=metadata)
        if committed is not None:
            part.known_done = set(meta.done)
            part.lives = inherited_lives(committed, meta)
        self._parts[tp] = part
        return meta

    def is_inherited(self, tp: PartitionKey) -> bool:
        part = self._parts.get(tp)
        return part is not None and part.inherited

    def lives(self, tp: PartitionKey, offset: int) -> int:
        part = self._parts.get(tp)
        return 0 if part is None else part.lives.get(offset, 0)

    def verdict(self, tp: PartitionKey, offset: int) -> Verdict:
        part = self._parts.get(tp)
        if part is None:
            return Verdict.RUN
        if offset in part.known_done:
            return Verdict.SKIP
        lives = part.lives.get(offset, 0)
        if lives >= self.give_up_after:
            return Verdict.GIVE_UP
        return Verdict.SOLO if lives >= self.solo_after else Verdict.RUN

    def needs_frontier(self, tp: PartitionKey, offset: int) -> bool:
        """Whether no landed commit yet claims ``offset`` below its frontier."""
        part = self._parts.get(tp)
        return part is None or part.landed_frontier is None or offset >= part.landed_frontier

    def reserve(self, tp: PartitionKey, first: int, frontier: int) -> None:
        """Claim offsets from ``first`` (about to start) below ``frontier`` as dispatched:
        committed before they start, so that they lose a life if the process dies."""
        part = self._parts.setdefault(tp, _Partition())
        part.frontier = frontier if part.frontier is None else max(part.frontier, frontier)
        part.floor = first if part.floor is None else part.floor

    def pin_frontiers(self, tp: PartitionKey, offset: int) -> None:
        """Only ``offset`` of ``tp`` is about to run, alone: every frontier exactly past the
        last started offset, so that only that record loses a life if the process dies."""
        for part in self._parts.values():
            part.frontier = None if part.last_started is None else part.last_started + 1
        self.reserve(tp, offset, offset + 1)
        self._parts[tp].frontier = offset + 1

    def commit_points(
        self, partitions: Iterable[_K], *, clean: bool = False
    ) -> dict[_K, CommitPoint]:
        """Offset and metadata to commit for ``partitions`` (pass the assignment), only those
        that differ from what the broker holds. ``clean``: this owner drains on purpose."""
        points: dict[_K, CommitPoint] = {}
        for tp in partitions:
            part = self._parts.get(tp)
            offset = None if part is None else part.next_offset()
            if part is None or offset is None:
                offset = None if part is None else part.committed
            if offset is None and part is not None:
                offset = part.floor
            if part is None or offset is None or offset < (part.committed or 0):
                continue
            done = {o for o in part.started if o not in part.in_flight}
            done.update(o for o in part.known_done if o >= offset)
            lives = {o: n for o, n in part.lives.items() if o >= offset and o not in done}
            meta = CommitMeta(frozenset(done), lives, part.frontier, clean)
            text = encode_meta(offset, meta, self.limit)
            if (offset, text) != (part.committed, part.metadata):
                points[tp] = CommitPoint(offset, text, part.frontier)
        return points

    def mark_sent(self, points: Mapping[_K, CommitPoint]) -> None:
        """Record that the broker accepted ``points`` (never moves a partition backwards)."""
        for tp, point in points.items():
            part = self._parts.get(tp)
            if part is None or (part.committed is not None and point.offset < part.committed):
                continue
            part.mark_committed(point.offset)
            part.metadata = point.metadata
            part.landed_frontier = point.frontier
            part.known_done = {o for o in part.known_done if o >= point.offset}
            part.lives = {o: n for o, n in part.lives.items() if o >= point.offset}
