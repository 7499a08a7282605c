"""The accounting of ``voxline reconcile``, pure: lists of facts in, a ``Report`` out.

Per request_id, the record must have ended as exactly one outcome with its evidence in place:

    succeeded   an object at the event's URI whose size is ``audio.bytes`` and whose sha256
                (its ``sha256`` metadata, and its content where downloaded) is ``audio.sha256``
    failed      a dead letter at the event's ``dead_letter`` {topic, partition, offset}, with the
                same ``dlq.reason`` and the original coordinates of one of the id's records
    lost        no completion event at all
    parked      no completion event yet, and a copy waits on the delay topic (pending: it
                comes back when due and ends as one of the above; not a problem)
    conflict    both a succeeded and a failed event for a request that was sent once (a
                request sent again, e.g. a replayed dead letter, may legitimately have both)

and every object under the prefix must be named by some succeeded event (else an orphan).
Duplicates (more events than records for an id, as redelivery after a crash makes) are
counted, not errors.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from processor.events import DeadLetterRef


@dataclasses.dataclass(frozen=True, slots=True)
class RequestSeen:
    """A record of the requests topic, by the request_id the processor gives it."""

    request_id: str
    topic: str
    partition: int
    offset: int
    timestamp_ms: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """A completion event (succeeded: the audio fields; failed: reason and dead_letter)."""

    request_id: str
    status: str
    uri: str | None = None
    bytes: int | None = None
    sha256: str | None = None
    reason: str | None = None
    dead_letter: DeadLetterRef | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Letter:
    """A record of the dead-letter topic: where it is, why, and what it was."""

    topic: str
    partition: int
    offset: int
    reason: str | None
    original: DeadLetterRef | None


@dataclasses.dataclass(frozen=True, slots=True)
class StoredObject:
    """An object under the prefix. ``meta_sha256`` is its ``sha256`` metadata (None: it has
    none); ``content_sha256`` the hash of its bytes when they were downloaded."""

    key: str
    size: int
    meta_sha256: str | None
    content_sha256: str | None = None
    last_modified_ms: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Report:
    """Counts per request_id, and the ids behind each problem."""

    requests: int
    records: int
    succeeded: int
    failed: int
    lost: int
    duplicates: int
    conflicts: int
    missing_objects: int
    bad_objects: int
    orphans: int
    missing_dead_letters: int
    bad_dead_letters: int
    dead_letter_records: int = 0
    objects: int = 0
    objects_downloaded: int = 0
    unreadable_events: int = 0
    failed_reasons: tuple[tuple[str, int], ...] = ()
    parked: int = 0
    parked_ids: tuple[str, ...] = ()
    lost_ids: tuple[str, ...] = ()
    duplicate_ids: tuple[str, ...] = ()
    conflict_ids: tuple[str, ...] = ()
    missing_object_ids: tuple[str, ...] = ()
    bad_object_ids: tuple[str, ...] = ()
    orphan_keys: tuple[str, ...] = ()
    missing_dead_letter_ids: tuple[str, ...] = ()
    bad_dead_letter_ids: tuple[str, ...] = ()
    failed_ids: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """The promise holds: nothing lost, no conflict, every outcome's evidence in place."""
        return not (
            self.lost
            or self.conflicts
            or self.missing_objects
            or self.bad_objects
            or self.missing_dead_letters
            or self.bad_dead_letters
        )

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["failed_reasons"] = dict(self.failed_reasons)
        out["ok"] = self.ok
        return out


@dataclasses.dataclass(slots=True)
class _Tally:
    succeeded: list[str] = dataclasses.field(default_factory=list)
    failed: list[str] = dataclasses.field(default_factory=list)
    lost: list[str] = dataclasses.field(default_factory=list)
    parked: list[str] = dataclasses.field(default_factory=list)
    duplicates: list[str] = dataclasses.field(default_factory=list)
    duplicate_events: int = 0
    conflicts: list[str] = dataclasses.field(default_factory=list)
    missing_objects: list[str] = dataclasses.field(default_factory=list)
    bad_objects: list[str] = dataclasses.field(default_factory=list)
    missing_letters: list[str] = dataclasses.field(default_factory=list)
    bad_letters: list[str] = dataclasses.field(default_factory=list)
    reasons: Counter[str] = dataclasses.field(default_factory=Counter)


def key_of_uri(uri: str | None, bucket: str) -> str | None:
    """The object key an ``s3://bucket/key`` URI names in ``bucket``; None for anything else."""
    head = f"s3://{bucket}/"
    if uri is None or not uri.startswith(head) or len(uri) == len(head):
        return None
    return uri[len(head) :]


def account(
    requests: Iterable[RequestSeen],
    events: Iterable[Outcome],
    dead_letters: Iterable[Letter],
    objects: Iterable[StoredObject],
    *,
    bucket: str,
    since_ms: int | None = None,
    unreadable_events: int = 0,
    objects_downloaded: int = 0,
    parked: Iterable[str] = (),
) -> Report:
    """The accounting check, pure. ``events`` may hold events of requests out of scope (before
    ``since``): they only vouch for their objects. Objects modified before ``since_ms`` are not
    checked for orphans."""
    records: dict[str, list[RequestSeen]] = defaultdict(list)
    for seen in requests:
        records[seen.request_id].append(seen)
    by_id: dict[str, list[Outcome]] = defaultdict(list)
    claimed: set[str] = set()
    for event in events:
        by_id[event.request_id].append(event)
        key = key_of_uri(event.uri, bucket) if event.status == "succeeded" else None
        if key is not None:
            claimed.add(key)
    letters = {(d.topic, d.partition, d.offset): d for d in dead_letters}
    stored = {o.key: o for o in objects}
    tally = _Tally()
    waiting = set(parked)
    for rid, sent in records.items():
        if rid in waiting and not by_id.get(rid):  # on the delay topic, not lost
            tally.parked.append(rid)
            continue
        _account_one(rid, sent, by_id.get(rid, []), letters, stored, bucket, tally)
    orphans = sorted(
        o.key
        for o in stored.values()
        if o.key not in claimed
        and (since_ms is None or o.last_modified_ms is None or o.last_modified_ms >= since_ms)
    )
    return Report(
        requests=len(records),
        records=sum(len(v) for v in records.values()),
        succeeded=len(tally.succeeded),
        failed=len(tally.failed),
        lost=len(tally.lost),
        duplicates=tally.duplicate_events,
        conflicts=len(tally.conflicts),
        missing_objects=len(tally.missing_objects),
        bad_objects=len(tally.bad_objects),
        orphans=len(orphans),
        missing_dead_letters=len(tally.missing_letters),
        bad_dead_letters=len(tally.bad_letters),
        dead_letter_records=len(letters),
        objects=len(stored),
        objects_downloaded=objects_downloaded,
        unreadable_events=unreadable_events,
        failed_reasons=tuple(sorted(tally.reasons.items())),
        parked=len(tally.parked),
        parked_ids=tuple(sorted(tally.parked)),
        lost_ids=tuple(sorted(tally.lost)),
        duplicate_ids=tuple(sorted(tally.duplicates)),
        conflict_ids=tuple(sorted(tally.conflicts)),
        missing_object_ids=tuple(sorted(tally.missing_objects)),
        bad_object_ids=tuple(sorted(tally.bad_objects)),
        orphan_keys=tuple(orphans),
        missing_dead_letter_ids=tuple(sorted(tally.missing_letters)),
        bad_dead_letter_ids=tuple(sorted(tally.bad_letters)),
        failed_ids=tuple(sorted(tally.failed)),
    )


def _account_one(
    rid: str,
    seen: Sequence[RequestSeen],
    events: Sequence[Outcome],
    letters: Mapping[tuple[str, int, int], Letter],
    stored: Mapping[str, StoredObject],
    bucket: str,
    tally: _Tally,
) -> None:
    if not events:
        tally.lost.append(rid)
        return
    if len(events) > len(seen):
        tally.duplicates.append(rid)
        tally.duplicate_events += len(events) - len(seen)
    ok = [e for e in events if e.status == "succeeded"]
    failed = [e for e in events if e.status == "failed"]
    if ok and failed and len(seen) == 1:
        tally.conflicts.append(rid)
    elif ok:
        tally.succeeded.append(rid)
    else:
        tally.failed.append(rid)
        tally.reasons[failed[-1].reason or "?"] += 1
    if ok:
        # Records sharing a request_id are processed in offset order, so the later record's
        # audio is what stays; redeliveries of one record may land in either order.
        _check_object(rid, ok if len(seen) == 1 else ok[-1:], stored, bucket, tally)
    if failed:
        _check_letters(rid, seen, failed, letters, tally)


def _check_object(
    rid: str,
    events: Sequence[Outcome],
    stored: Mapping[str, StoredObject],
    bucket: str,
    tally: _Tally,
) -> None:
    """The object must be whole and described by one of the id's succeeded events (a
    redelivered record rewrites it, and either write may land last)."""
    pairs = [(stored.get(key_of_uri(e.uri, bucket) or ""), e) for e in events]
    found = [(obj, e) for obj, e in pairs if obj is not None]
    if not found:
        tally.missing_objects.append(rid)
    elif not any(_matches(obj, e) for obj, e in found):
        tally.bad_objects.append(rid)


def _matches(obj: StoredObject, event: Outcome) -> bool:
    return (
        obj.size == event.bytes
        and event.sha256 is not None
        and obj.meta_sha256 == event.sha256
        and obj.content_sha256 in (None, event.sha256)
    )


def _check_letters(
    rid: str,
    seen: Sequence[RequestSeen],
    events: Sequence[Outcome],
    letters: Mapping[tuple[str, int, int], Letter],
    tally: _Tally,
) -> None:
    origins = {(s.topic, s.partition, s.offset) for s in seen}
    for event in events:
        ref = event.dead_letter
        letter = None if ref is None else letters.get((ref.topic, ref.partition, ref.offset))
        if letter is None:
            tally.missing_letters.append(rid)
            return
        original = letter.original
        where = None if original is None else (original.topic, original.partition, original.offset)
        if letter.reason != event.reason or where not in origins:
            tally.bad_letters.append(rid)
            return
