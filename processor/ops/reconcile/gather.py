"""Gathering reconcile's facts: the three topics from Kafka, the objects from the store.
Turning a record into a fact is pure (``request_seen``, ``outcome_of``, ``letter_of``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import random
from collections.abc import Mapping
from typing import Any

from processor.events import DeadLetterRef
from processor.kafka.records import Record, read_to_end
from processor.ops.reconcile.accounting import (
    Letter,
    Outcome,
    Report,
    RequestSeen,
    StoredObject,
    account,
)
from processor.parking import retry_topic
from processor.request import request_id_of
from processor.settings import KafkaSettings, StoreSettings
from processor.store import S3Store


def request_seen(record: Record) -> RequestSeen:
    rid = request_id_of(record.topic, record.partition, record.offset, record.key, record.value)
    return RequestSeen(rid, record.topic, record.partition, record.offset, record.timestamp_ms)


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


def letter_of(record: Record) -> Letter:
    topic, partition, offset = (
        record.header("dlq.original.topic"),
        record.header("dlq.original.partition"),
        record.header("dlq.original.offset"),
    )
    original = None
    if topic is not None and partition and offset and partition.isdigit() and offset.isdigit():
        original = DeadLetterRef(topic, int(partition), int(offset))
    return Letter(
        record.topic, record.partition, record.offset, record.header("dlq.reason"), original
    )


async def list_objects(
    store: StoreSettings, *, verify_content: bool, sample: int = 20, concurrency: int = 16
) -> tuple[list[StoredObject], int]:
    """Every object under the prefix with its size and sha256 metadata; the bytes of all of
    them (``verify_content``) or of a sample are downloaded and hashed. Returns the objects
    and how many were downloaded."""
    async with S3Store(
        store.bucket,
        endpoint_url=store.endpoint_url,
        region=store.region,
        max_connections=concurrency,
    ) as s3:
        listed = await _list(s3, store.prefix)
        chosen = {key for key, _, _ in listed}
        if not verify_content:
            keys = sorted(chosen)
            chosen = set(random.Random(0).sample(keys, min(sample, len(keys))))
        gate = asyncio.Semaphore(concurrency)

        async def one(key: str, size: int, modified: int | None) -> StoredObject:
            async with gate:
                return await _inspect(s3, key, size, modified, download=key in chosen)

        objects = await asyncio.gather(*(one(*item) for item in listed))
    return list(objects), len(chosen)


async def _list(s3: S3Store, prefix: str) -> list[tuple[str, int, int | None]]:
    out = []
    paginator = s3.client.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=s3.bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            modified = item.get("LastModified")
            ms = None if modified is None else int(modified.timestamp() * 1000)
            out.append((item["Key"], int(item.get("Size", 0)), ms))
    return out


async def _inspect(
    s3: S3Store, key: str, size: int, modified: int | None, *, download: bool
) -> StoredObject:
    if not download:
        head = await s3.client.head_object(Bucket=s3.bucket, Key=key)
        meta = {k.lower(): v for k, v in head.get("Metadata", {}).items()}
        return StoredObject(
            key, int(head.get("ContentLength", size)), meta.get("sha256"), None, modified
        )
    data, got = await s3.get(key)
    meta = {k.lower(): v for k, v in got["Metadata"].items()}
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
    requests, events, letters, parked = await asyncio.gather(
        read_to_end(kafka, kafka.request_topic, since_ms=since_ms),
        read_to_end(kafka, kafka.completion_topic, since_ms=since_ms),
        read_to_end(kafka, kafka.dlq_topic, since_ms=since_ms),
        read_to_end(kafka, retry_topic(kafka.request_topic, kafka.retry_topic), since_ms=since_ms),
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
        parked=[request_seen(r).request_id for r in parked],
    )
