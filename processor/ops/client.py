"""Client-side operations behind ``voxline submit`` and ``voxline dlq``: producing requests,
following completion events, reading and replaying dead letters."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from processor.events import replay_headers
from processor.kafka.options import connection_options
from processor.kafka.records import Record, end_offsets, read_to_end, reader
from processor.settings import KafkaSettings


class SubmitError(ValueError):
    """A line of the input could not be turned into a request."""


@dataclasses.dataclass(frozen=True, slots=True)
class Outgoing:
    request_id: str
    value: bytes


def requests_from_lines(lines: Iterable[str], *, id_prefix: str | None = None) -> list[Outgoing]:
    """JSON Lines (a line starting with ``{``) or plain text, one request a line. Plain text
    lines get a generated request_id. Blank lines are skipped. A JSON line must hold an object
    with a ``request_id``; anything else is an error naming the line, and nothing is sent."""
    prefix = id_prefix or f"req-{uuid.uuid4().hex[:8]}"
    out: list[Outgoing] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SubmitError(f"line {number}: not valid JSON: {exc.msg}") from exc
            rid = obj.get("request_id") if isinstance(obj, dict) else None
            if not isinstance(rid, str) or not rid:
                raise SubmitError(f"line {number}: JSON request without a request_id")
            out.append(Outgoing(rid, line.encode()))
        else:
            rid = f"{prefix}-{len(out) + 1:06d}"
            body = {"request_id": rid, "text": line}
            out.append(Outgoing(rid, json.dumps(body, ensure_ascii=False).encode()))
    return out


class CompletionFollower:
    """Reads completion events from the end of the topic as it was when started."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.consumer = reader(kafka)

    async def start(self) -> None:
        await self.consumer.start()
        ends = await end_offsets(self.consumer, self.kafka.completion_topic)
        self.consumer.assign(list(ends))
        for tp, off in ends.items():
            self.consumer.seek(tp, off)

    async def stop(self) -> None:
        await self.consumer.stop()

    async def follow(
        self,
        wanted: set[str],
        *,
        timeout_s: float,
        on_event: Callable[[dict[str, object]], None] = lambda _: None,
    ) -> dict[str, dict[str, object]]:
        """Events for ``wanted`` request ids (the first per id), until all are in or timeout."""
        seen: dict[str, dict[str, object]] = {}
        give_up = time.monotonic() + timeout_s
        while len(seen) < len(wanted) and time.monotonic() < give_up:
            batch = await self.consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                for msg in messages:
                    try:
                        event = json.loads(msg.value)
                    except (TypeError, ValueError):
                        continue
                    rid = event.get("request_id") if isinstance(event, dict) else None
                    if rid in wanted and rid not in seen:
                        seen[rid] = event
                        on_event(event)
        return seen


def _producer(kafka: KafkaSettings, **options: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **connection_options(kafka), acks="all", enable_idempotence=True, **options
    )


async def produce(
    kafka: KafkaSettings,
    requests: Sequence[Outgoing],
    *,
    on_sent: Callable[[], None] = lambda: None,
) -> None:
    producer = _producer(kafka, linger_ms=10)
    await producer.start()
    try:
        futures = []
        for req in requests:
            futures.append(
                await producer.send(
                    kafka.request_topic, value=req.value, key=req.request_id.encode()
                )
            )
        for fut in futures:
            await fut
            on_sent()
    finally:
        await producer.stop()


class DeadLetter(Record):
    """A record of the dead-letter topic, seen as the ``dlq`` commands see it: the same
    record, plus the request_id and failure time they filter on."""

    __slots__ = ()

    @classmethod
    def of(cls, record: Record) -> DeadLetter:
        return cls(**{f.name: getattr(record, f.name) for f in dataclasses.fields(Record)})

    @property
    def request_id(self) -> str | None:
        try:
            obj = json.loads(self.value or b"")
        except ValueError:
            obj = None
        rid = obj.get("request_id") if isinstance(obj, dict) else None
        if isinstance(rid, str):
            return rid
        return self.key.decode("utf-8", "replace") if self.key else None

    @property
    def failed_at(self) -> dt.datetime | None:
        text = self.header("dlq.failed_at")
        try:
            return dt.datetime.fromisoformat(text) if text else None
        except ValueError:
            return None


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    reasons: frozenset[str] = frozenset()
    error_types: frozenset[str] = frozenset()
    request_ids: frozenset[str] = frozenset()
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def __call__(self, letter: DeadLetter) -> bool:
        if self.reasons and letter.header("dlq.reason") not in self.reasons:
            return False
        if self.error_types and letter.header("dlq.error.type") not in self.error_types:
            return False
        if self.request_ids and letter.request_id not in self.request_ids:
            return False
        when = letter.failed_at
        if self.since and (when is None or when < self.since):
            return False
        return not (self.until and (when is None or when >= self.until))


async def read_dead_letters(kafka: KafkaSettings) -> list[DeadLetter]:
    """Everything in the dead-letter topic up to its current end, oldest first."""
    letters = [DeadLetter.of(r) for r in await read_to_end(kafka, kafka.dlq_topic)]
    letters.sort(key=lambda d: (d.timestamp_ms, d.partition, d.offset))
    return letters


async def replay(
    kafka: KafkaSettings,
    letters: Sequence[Record],
    *,
    on_sent: Callable[[], None] = lambda: None,
) -> int:
    """Resend dead letters to their original topic: same key and value, original headers,
    ``dlq.replay_count`` bumped. The timestamp is the replay's own: an old original timestamp
    could put the record past the topic's retention at once."""
    producer = _producer(kafka)
    await producer.start()
    try:
        for letter in letters:
            topic = letter.header("dlq.original.topic") or kafka.request_topic
            await producer.send_and_wait(
                topic,
                value=letter.value,
                key=letter.key,
                headers=replay_headers(letter.headers),
            )
            on_sent()
    finally:
        await producer.stop()
    return len(letters)
