"""``voxline reconcile``: prove the delivery promise from what the broker and the store hold.

Reads the requests topic, the completion topic and the dead-letter topic, lists the audio
objects under the prefix, and checks, per request_id, that the record ended as exactly one
outcome with its evidence in place:

    succeeded   an object at the event's URI whose size is ``audio.bytes`` and whose sha256
                (its ``sha256`` metadata, and its content where downloaded) is ``audio.sha256``
    failed      a dead letter at the event's ``dead_letter`` {topic, partition, offset}, with the
                same ``dlq.reason`` and the original coordinates of one of the id's records
    lost        no completion event at all
    conflict    both a succeeded and a failed event for a request that was sent once (a
                request sent again, e.g. a replayed dead letter, may legitimately have both)

and that every object under the prefix is named by some succeeded event (else an orphan).
Duplicates (more events than records for an id, as redelivery after a crash makes) are
counted, not errors.

``account`` is the pure part: lists of facts in, a ``Report`` out. ``reconcile`` gathers the
facts through Kafka and S3; ``reconcile_command`` is the click command.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
import random
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import aioboto3
import click
from aiobotocore.config import AioConfig
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console
from rich.table import Table

from processor.kafka.options import SASL_MECHANISMS, SECURITY_PROTOCOLS, connection_options
from processor.kafka.records import end_offsets
from processor.request import request_id_of
from processor.settings import KafkaSettings, StoreSettings

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

F = TypeVar("F", bound=Callable[..., Any])
#: Ids listed per problem in the table (``--json`` lists them all).
DEFAULT_SHOW = 20


# -- facts ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class RequestSeen:
    """A record of the requests topic, by the request_id the processor gives it."""

    request_id: str
    topic: str
    partition: int
    offset: int
    timestamp_ms: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetterRef:
    topic: str
    partition: int
    offset: int


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


# -- the report -----------------------------------------------------------------------------


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
    for rid, sent in records.items():
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
        _check_object(rid, ok, stored, bucket, tally)
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


# -- gathering the facts --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Raw:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v.decode("utf-8", "replace")
        return None


async def read_records(kafka: KafkaSettings, topic: str, since_ms: int | None) -> list[_Raw]:
    """Every record of ``topic`` (from ``since_ms`` by timestamp, if given) up to its end as
    it was when reading began."""
    consumer = AIOKafkaConsumer(
        **connection_options(kafka),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        ends = {tp: end for tp, end in (await end_offsets(consumer, topic)).items() if end > 0}
        if not ends:
            return []
        consumer.assign(list(ends))
        await _seek(consumer, ends, since_ms)
        return await _read_to(consumer, ends)
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


async def _read_to(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> list[_Raw]:
    out: list[_Raw] = []
    todo = dict(ends)
    while todo:
        batch = await consumer.getmany(timeout_ms=1000)
        for tp, messages in batch.items():
            out.extend(
                _Raw(
                    m.topic,
                    m.partition,
                    m.offset,
                    m.key,
                    m.value,
                    m.timestamp,
                    tuple(m.headers or ()),
                )
                for m in messages
                if m.offset < todo.get(tp, 0)
            )
        for tp in list(todo):
            if await consumer.position(tp) >= todo[tp]:
                del todo[tp]
    return out


def request_seen(raw: _Raw) -> RequestSeen:
    rid = request_id_of(raw.topic, raw.partition, raw.offset, raw.key, raw.value)
    return RequestSeen(rid, raw.topic, raw.partition, raw.offset, raw.timestamp_ms)


def outcome_of(value: bytes | None) -> Outcome | None:
    """A completion event's facts; None when the value is not a readable event."""
    try:
        body = json.loads(value or b"")
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    rid, status = body.get("request_id"), body.get("status")
    if not isinstance(rid, str) or status not in ("succeeded", "failed"):
        return None
    audio: Mapping[str, Any] = body["audio"] if isinstance(body.get("audio"), dict) else {}
    return Outcome(
        request_id=rid,
        status=status,
        uri=_typed(audio, "uri", str),
        bytes=_typed(audio, "bytes", int),
        sha256=_typed(audio, "sha256", str),
        reason=_typed(body, "reason", str),
        dead_letter=_ref(body.get("dead_letter")),
    )


def _typed(obj: Mapping[str, Any], name: str, kind: type[Any]) -> Any:
    value = obj.get(name)
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


def _ref(obj: object) -> DeadLetterRef | None:
    if not isinstance(obj, dict):
        return None
    topic, partition, offset = (
        _typed(obj, "topic", str),
        _typed(obj, "partition", int),
        _typed(obj, "offset", int),
    )
    if topic is None or partition is None or offset is None:
        return None
    return DeadLetterRef(topic, partition, offset)


def letter_of(raw: _Raw) -> Letter:
    topic, partition, offset = (
        raw.header("dlq.original.topic"),
        raw.header("dlq.original.partition"),
        raw.header("dlq.original.offset"),
    )
    original = None
    if topic is not None and partition and offset and partition.isdigit() and offset.isdigit():
        original = DeadLetterRef(topic, int(partition), int(offset))
    return Letter(raw.topic, raw.partition, raw.offset, raw.header("dlq.reason"), original)


async def list_objects(
    store: StoreSettings, *, verify_content: bool, sample: int = 20, concurrency: int = 16
) -> tuple[list[StoredObject], int]:
    """Every object under the prefix with its size and sha256 metadata; the bytes of all of
    them (``verify_content``) or of a sample are downloaded and hashed. Returns the objects
    and how many were downloaded."""
    config = AioConfig(max_pool_connections=concurrency, retries={"max_attempts": 3})
    session = aioboto3.Session()
    async with session.client(
        "s3", endpoint_url=store.endpoint_url, region_name=store.region, config=config
    ) as s3:
        listed = await _list(s3, store)
        chosen = {k for k, _, _ in listed}
        if not verify_content:
            keys = sorted(chosen)
            chosen = set(random.Random(0).sample(keys, min(sample, len(keys))))
        gate = asyncio.Semaphore(concurrency)

        async def one(key: str, size: int, modified: int | None) -> StoredObject:
            async with gate:
                return await _inspect(s3, store.bucket, key, size, modified, key in chosen)

        objects = await asyncio.gather(*(one(*item) for item in listed))
    return list(objects), len(chosen)


async def _list(s3: S3Client, store: StoreSettings) -> list[tuple[str, int, int | None]]:
    out = []
    paginator = s3.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=store.bucket, Prefix=store.prefix):
        for item in page.get("Contents", []):
            modified = item.get("LastModified")
            ms = None if modified is None else int(modified.timestamp() * 1000)
            out.append((item["Key"], int(item.get("Size", 0)), ms))
    return out


async def _inspect(
    s3: S3Client, bucket: str, key: str, size: int, modified: int | None, download: bool
) -> StoredObject:
    if not download:
        head = await s3.head_object(Bucket=bucket, Key=key)
        meta = {k.lower(): v for k, v in head.get("Metadata", {}).items()}
        return StoredObject(
            key, int(head.get("ContentLength", size)), meta.get("sha256"), None, modified
        )
    resp = await s3.get_object(Bucket=bucket, Key=key)
    async with resp["Body"] as body:
        data = await body.read()
    meta = {k.lower(): v for k, v in resp.get("Metadata", {}).items()}
    digest = hashlib.sha256(data).hexdigest()
    return StoredObject(key, len(data), meta.get("sha256"), digest, modified)


async def reconcile(
    kafka: KafkaSettings,
    store: StoreSettings,
    *,
    since: dt.datetime | None = None,
    verify_content: bool = False,
    sample: int = 20,
) -> Report:
    """Read the three topics and the bucket, then ``account``. ``since``: only requests whose
    record timestamp is at or after it (and objects modified since)."""
    since_ms = None if since is None else int(since.timestamp() * 1000)
    requests, events, letters = await asyncio.gather(
        read_records(kafka, kafka.request_topic, since_ms),
        read_records(kafka, kafka.completion_topic, since_ms),
        read_records(kafka, kafka.dlq_topic, since_ms),
    )
    objects, downloaded = await list_objects(store, verify_content=verify_content, sample=sample)
    outcomes = [outcome_of(e.value) for e in events]
    return account(
        [request_seen(r) for r in requests],
        [o for o in outcomes if o is not None],
        [letter_of(d) for d in letters],
        objects,
        bucket=store.bucket,
        since_ms=since_ms,
        unreadable_events=sum(o is None for o in outcomes),
        objects_downloaded=downloaded,
    )


# -- the command ----------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: dt.datetime) -> dt.datetime:
    """An ISO 8601 time (UTC if it names no zone) or a duration back from ``now``: ``90s``,
    ``15m``, ``2h``, ``7d``. ``ValueError`` for anything else."""
    match = _DURATION.fullmatch(text.strip())
    if match:
        return now - dt.timedelta(seconds=float(match.group(1)) * _UNIT_S[match.group(2)])
    moment = dt.datetime.fromisoformat(text.strip())
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return parse_since(value, dt.datetime.now(dt.UTC))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither an ISO time nor a duration like 15m or 2h"
        ) from None


def _env_opt(*names: str, envvar: str, **kw: Any) -> Callable[[F], F]:
    kw.setdefault("show_default", True)
    return click.option(*names, envvar=envvar, show_envvar=True, **kw)


def report_table(report: Report, show: int = DEFAULT_SHOW) -> Table:
    table = Table(title="voxline reconcile: " + ("OK" if report.ok else "PROBLEMS"))
    table.add_column("check")
    table.add_column("count", justify="right")
    table.add_column(f"ids (first {show})")
    rows: list[tuple[str, int, Sequence[str]]] = [
        ("requests", report.requests, ()),
        ("records read", report.records, ()),
        ("succeeded", report.succeeded, ()),
        ("failed (dead-lettered)", report.failed, ()),
        *((f"  failed: {r}", n, ()) for r, n in report.failed_reasons),
        ("lost (no outcome)", report.lost, report.lost_ids),
        ("conflicting outcomes", report.conflicts, report.conflict_ids),
        ("duplicate events", report.duplicates, report.duplicate_ids),
        ("missing objects", report.missing_objects, report.missing_object_ids),
        ("bad objects (size/sha256)", report.bad_objects, report.bad_object_ids),
        ("orphan objects", report.orphans, report.orphan_keys),
        ("missing dead letters", report.missing_dead_letters, report.missing_dead_letter_ids),
        ("bad dead letters", report.bad_dead_letters, report.bad_dead_letter_ids),
        ("dead-letter records", report.dead_letter_records, ()),
        ("objects under the prefix", report.objects, ()),
        ("objects downloaded and hashed", report.objects_downloaded, ()),
        ("unreadable events", report.unreadable_events, ()),
    ]
    for name, count, ids in rows:
        more = f" (+{len(ids) - show} more)" if len(ids) > show else ""
        table.add_row(name, str(count), ", ".join(ids[:show]) + more)
    return table


@click.command("reconcile")
@_env_opt(
    "--bootstrap-servers",
    envvar="KAFKA_BOOTSTRAP_SERVERS",
    default="localhost:9092",
    help="Kafka bootstrap servers, comma-separated.",
)
@_env_opt("--request-topic", envvar="VOXLINE_REQUEST_TOPIC", default="tts.requests")
@_env_opt("--completion-topic", envvar="VOXLINE_COMPLETION_TOPIC", default="tts.completions")
@_env_opt("--dlq-topic", envvar="VOXLINE_DLQ_TOPIC", default="tts.requests.dlq")
@_env_opt(
    "--security-protocol",
    envvar="KAFKA_SECURITY_PROTOCOL",
    default="PLAINTEXT",
    type=click.Choice(SECURITY_PROTOCOLS),
)
@_env_opt(
    "--sasl-mechanism",
    envvar="KAFKA_SASL_MECHANISM",
    default=None,
    type=click.Choice(SASL_MECHANISMS),
)
@_env_opt("--sasl-username", envvar="KAFKA_SASL_USERNAME", default=None)
@_env_opt("--sasl-password", envvar="KAFKA_SASL_PASSWORD", default=None, show_default=False)
@_env_opt("--ssl-cafile", envvar="KAFKA_SSL_CAFILE", default=None)
@_env_opt("--ssl-certfile", envvar="KAFKA_SSL_CERTFILE", default=None)
@_env_opt("--ssl-keyfile", envvar="KAFKA_SSL_KEYFILE", default=None)
@_env_opt("--s3-endpoint-url", envvar="S3_ENDPOINT_URL", default=None, help="Unset means AWS.")
@_env_opt("--s3-bucket", envvar="S3_BUCKET", default="voxline-audio")
@_env_opt("--s3-prefix", envvar="S3_PREFIX", default="")
@_env_opt("--aws-region", envvar="AWS_REGION", default=None)
@click.option(
    "--since",
    callback=_since,
    metavar="TIME|DURATION",
    default=None,
    help="Only requests sent at or after this ISO time (UTC if no zone), or this long ago "
    "(15m, 2h, 7d). Default: the whole topic.",
)
@click.option(
    "--verify-content/--metadata-only",
    default=False,
    show_default=True,
    help="Download and hash every object; else compare sizes and sha256 metadata and hash "
    "only a sample.",
)
@click.option(
    "--sample",
    default=20,
    show_default=True,
    type=click.IntRange(0),
    help="Objects downloaded and hashed with --metadata-only.",
)
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
@click.option(
    "--show", default=DEFAULT_SHOW, show_default=True, type=click.IntRange(0), help="Ids per row."
)
def reconcile_command(
    since: dt.datetime | None,
    verify_content: bool,
    sample: int,
    as_json: bool,
    show: int,
    **kw: Any,
) -> None:
    """Check that every request ended as exactly one outcome with its audio object or dead
    letter in place. Exit 0 when nothing is lost and nothing conflicts or is missing or
    corrupt; 1 otherwise."""
    kafka = KafkaSettings(
        bootstrap_servers=kw["bootstrap_servers"],
        request_topic=kw["request_topic"],
        completion_topic=kw["completion_topic"],
        dlq_topic=kw["dlq_topic"],
        security_protocol=kw["security_protocol"],
        sasl_mechanism=kw["sasl_mechanism"],
        sasl_username=kw["sasl_username"],
        sasl_password=kw["sasl_password"],
        ssl_cafile=kw["ssl_cafile"],
        ssl_certfile=kw["ssl_certfile"],
        ssl_keyfile=kw["ssl_keyfile"],
    )
    store = StoreSettings(
        endpoint_url=kw["s3_endpoint_url"],
        bucket=kw["s3_bucket"],
        prefix=kw["s3_prefix"],
        region=kw["aws_region"],
    )
    try:
        connection_options(kafka)  # settings that cannot work (e.g. SASL without a user)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    report = asyncio.run(
        reconcile(kafka, store, since=since, verify_content=verify_content, sample=sample)
    )
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        Console(width=None if sys.stdout.isatty() else 160).print(report_table(report, show))
    sys.exit(0 if report.ok else 1)
