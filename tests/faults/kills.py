"""What each crash cost, measured rather than guessed: the records the process held, the ones
the next process had to redo, and the duplicates they became.

A process that dies (kill -9, or SIGTERM with the broker gone so its last commit cannot land)
leaves the group's commit as it was: an offset per partition and, in its metadata, the offsets
above it already finished. The next owner redoes every record that commit does not cover. Of
those, the ones whose completion event already went out become duplicates. By design they can
only be:

* **unacknowledged**: in flight at the crash, their event sent but its acknowledgement not yet
  back (the process's record window holds at most ``VOXLINE_MAX_RECORDS`` records);
* **finished after the last commit**: acknowledged (the process logged the outcome) after the
  snapshot of the last commit that landed. The commit is a snapshot, so in the order the
  process logged its outcomes, per partition, the ones it covers come first and the ones it
  does not come last; anything else means a commit claimed less than it knew.

Everything here is pure: the scenario supplies the commit it read right after the crash (before
a new process started), the killed process's log, and every completion event's timestamp (the
producer's clock: an event published by the killed process is stamped before it died, one
published by its successor after).
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from processor.commit_meta import CommitMeta, decode_meta
from processor.kafka.consumer import Committed

#: The log lines that say a record's outcome was acknowledged by the broker.
OUTCOME_EVENTS = frozenset({"succeeded", "dead-lettered"})

Where = tuple[int, int]


@dataclasses.dataclass(frozen=True, slots=True)
class PartitionCommit:
    """One partition's commit as the next owner reads it."""

    offset: int | None
    done: frozenset[int] = frozenset()
    truncated: bool = False

    @classmethod
    def of(cls, committed: Committed | None) -> PartitionCommit:
        if committed is None:
            return cls(None)
        try:
            meta = decode_meta(committed.offset, committed.metadata)
        except ValueError:  # the runner ignores metadata it cannot read; so does this
            meta = CommitMeta()
        return cls(committed.offset, meta.done, meta.truncated)

    def covers(self, offset: int) -> bool:
        """Whether the next owner knows ``offset`` is finished (and skips it)."""
        return self.offset is not None and (offset < self.offset or offset in self.done)

    def below(self, offset: int) -> bool:
        """Whether the committed offset alone covers it (what a bare-offset commit says)."""
        return self.offset is not None and offset < self.offset


@dataclasses.dataclass(frozen=True, slots=True)
class Acked:
    """A record whose outcome the process logged, in logging order."""

    partition: int
    offset: int
    at_ms: int


def acknowledged(entries: Iterable[Mapping[str, Any]], topic: str) -> list[Acked]:
    """The records of ``topic`` whose outcome a process's log lines say was acknowledged."""
    out = []
    for entry in entries:
        if entry.get("event") in OUTCOME_EVENTS and entry.get("topic") == topic:
            stamp = dt.datetime.fromisoformat(str(entry["timestamp"]))
            out.append(
                Acked(int(entry["partition"]), int(entry["offset"]), int(stamp.timestamp() * 1000))
            )
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class Crash:
    """One process's end without a clean hand-over, as the scenario saw it."""

    number: int
    #: When the process was seen dead (wall clock, ms); its events are stamped before it.
    died_ms: int
    #: How long it had run, ms.
    lived_ms: int
    #: ``voxline_records_in_flight`` scraped just before the end (None: not scraped).
    in_flight: int | None
    #: The group's commit per partition, read after the end and before any new process.
    commits: Mapping[int, PartitionCommit]
    #: What the process logged as acknowledged, in order.
    acked: Sequence[Acked]


@dataclasses.dataclass(frozen=True, slots=True)
class CrashCost:
    number: int
    #: How long the process had run, ms.
    lived_ms: int
    #: The gauge just before the crash (records held by the window).
    in_flight: int | None
    #: Records whose event went out unacknowledged: in flight at the crash.
    unacknowledged: int
    #: Records acknowledged after the snapshot of the last commit that landed.
    finished_after_commit: int
    #: How long before the crash the first of those was acknowledged, ms.
    finished_after_commit_ms: int | None
    #: Records with an event that the commit does not cover: the duplicates allowed.
    allowed: int
    #: Duplicates charged to this crash.
    duplicates: int
    #: What a bare offset (no metadata) would have left to redo of the published records.
    without_metadata: int
    #: Duplicates of records the commit covered: the next owner redid finished work.
    unexplained: tuple[str, ...] = ()
    #: Partitions where a record the commit covers was acknowledged after one it does not.
    out_of_order: tuple[int, ...] = ()
    #: Partitions whose metadata was cut short (order not checked there).
    truncated: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("unexplained", "out_of_order", "truncated"):
            if not out[key]:
                del out[key]
            else:
                out[key] = list(out[key])[:10]
        return out


def charge_duplicates(
    stamps: Mapping[str, Sequence[int]], deaths_ms: Sequence[int]
) -> tuple[list[list[str]], list[str]]:
    """Each completion event after a request's first one is the redo of the record the
    previous event came from, caused by the end of the process that published that previous
    event: the first death at or after it. Returns the request_ids charged to each death (one
    entry per extra event) and those charged to none (the previous event's process never
    crashed)."""
    if list(deaths_ms) != sorted(deaths_ms):
        raise ValueError("deaths must be in order")
    per_death: list[list[str]] = [[] for _ in deaths_ms]
    uncharged: list[str] = []
    for rid, times in stamps.items():
        for previous in sorted(times)[:-1]:
            k = bisect.bisect_left(deaths_ms, previous)
            (per_death[k] if k < len(deaths_ms) else uncharged).append(rid)
    return per_death, uncharged


def cost(
    crash: Crash,
    previous_death_ms: int,
    stamps: Mapping[str, Sequence[int]],
    where: Mapping[str, Where],
    charged: Sequence[str],
) -> CrashCost:
    """The figures of one crash. ``stamps``: each request's event timestamps; ``where``: each
    request's (partition, offset); ``charged``: the duplicates charged to this crash."""
    rid_at = {at: rid for rid, at in where.items()}

    def commit(rid: str) -> PartitionCommit:
        return crash.commits.get(where[rid][0], PartitionCommit(None))

    published = {
        rid
        for rid, times in stamps.items()
        if rid in where and any(previous_death_ms < t <= crash.died_ms for t in times)
    }
    stranded = {rid for rid in published if not commit(rid).covers(where[rid][1])}
    acked_ids = {
        rid_at[(a.partition, a.offset)] for a in crash.acked if (a.partition, a.offset) in rid_at
    }
    late = stranded & acked_ids
    late_times = [a.at_ms for a in crash.acked if rid_at.get((a.partition, a.offset)) in late]
    out_of_order = []
    truncated = sorted(p for p, c in crash.commits.items() if c.truncated)
    for partition in sorted({a.partition for a in crash.acked}):
        if partition in truncated:
            continue
        part = crash.commits.get(partition, PartitionCommit(None))
        flags = [part.covers(a.offset) for a in crash.acked if a.partition == partition]
        first_open = flags.index(False) if False in flags else len(flags)
        if any(flags[first_open:]):
            out_of_order.append(partition)
    extra = sorted(set(charged) - stranded) + sorted(
        rid for rid in set(charged) if charged.count(rid) > 1
    )
    return CrashCost(
        number=crash.number,
        lived_ms=crash.lived_ms,
        in_flight=crash.in_flight,
        unacknowledged=len(stranded - acked_ids),
        finished_after_commit=len(late),
        finished_after_commit_ms=crash.died_ms - min(late_times) if late_times else None,
        allowed=len(stranded),
        duplicates=len(charged),
        without_metadata=sum(not commit(rid).below(where[rid][1]) for rid in published),
        unexplained=tuple(extra),
        out_of_order=tuple(out_of_order),
        truncated=tuple(truncated),
    )


def costs(
    crashes: Sequence[Crash],
    began_ms: int,
    stamps: Mapping[str, Sequence[int]],
    where: Mapping[str, Where],
) -> tuple[list[CrashCost], list[str]]:
    """Every crash's figures, and the duplicates no crash explains (the previous event came
    from a process that never crashed)."""
    per_death, uncharged = charge_duplicates(stamps, [c.died_ms for c in crashes])
    out = []
    previous = began_ms
    for crash, charged in zip(crashes, per_death, strict=True):
        out.append(cost(crash, previous, stamps, where, charged))
        previous = crash.died_ms
    return out, uncharged


def event_stamps(events: Iterable[tuple[str, int]]) -> dict[str, list[int]]:
    """(request_id, timestamp) pairs grouped by request_id."""
    out: dict[str, list[int]] = {}
    for rid, stamp in events:
        out.setdefault(rid, []).append(stamp)
    return out
