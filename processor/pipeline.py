"""What happens to one record: decode -> synthesize -> store -> publish, or dead-letter.

``Pipeline.handle`` returns only once the record has its outcome acknowledged by the broker
(a succeeded event, or a dead letter plus a failed event). It raises only when cancelled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

import stamina
import structlog

from processor.backends.base import CONTENT_TYPES, Audio, Backend
from processor.classify import clamp_backoff
from processor.errors import (
    Expired,
    InvalidInput,
    Permanent,
    Reason,
    Stage,
    Systemic,
    Transient,
    VoxlineError,
)
from processor.events import (
    FAILED_TYPE,
    SUCCEEDED_TYPE,
    DeadLetterRef,
    Failure,
    StoredAudio,
    Timings,
    ce_headers,
    dead_letter_headers,
    encode,
    failed_body,
    succeeded_body,
)
from processor.publisher import EventSink
from processor.request import Request, best_effort_request_id, parse_request
from processor.settings import Settings
from processor.store import AudioStore, object_key

T = TypeVar("T")
log = structlog.get_logger("voxline.pipeline")


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    """A consumed record, copied out of the Kafka client's type at the edge."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: Sequence[tuple[str, bytes]] = ()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


class _Outcome(Exception):
    """Carries a routed failure and the backend attempts made so far."""

    def __init__(self, error: VoxlineError, attempts: int, first_failed_at: dt.datetime) -> None:
        super().__init__(error.message)
        self.error = error
        self.attempts = attempts
        self.first_failed_at = first_failed_at


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        backends: Mapping[str, Backend],
        store: AudioStore,
        sink: EventSink,
    ) -> None:
        self.settings = settings
        self.backends = backends
        self.store = store
        self.sink = sink

    async def handle(self, record: Record) -> str:
        """Process one record to its outcome; returns ``"succeeded"`` or ``"failed"``."""
        started = time.monotonic()
        rlog = log.bind(topic=record.topic, partition=record.partition, offset=record.offset)
        try:
            request = parse_request(record.value, max_text_chars=self.settings.max_text_chars)
        except InvalidInput as exc:
            request_id = best_effort_request_id(record.value) or _fallback_subject(record)
            await self._fail(
                record, request_id, {}, exc, 0, _now(), rlog.bind(request_id=request_id)
            )
            return "failed"
        rlog = rlog.bind(request_id=request.request_id)
        try:
            audio, attempts, synth_s = await self._synthesize(request, record, rlog)
            stored, store_s = await self._store(request, audio, rlog)
        except _Outcome as out:
            await self._fail(
                record,
                request.request_id,
                request.metadata,
                out.error,
                out.attempts,
                out.first_failed_at,
                rlog,
            )
            return "failed"
        total_s = time.time() - record.timestamp_ms / 1000
        queued_s = max(0.0, total_s - (time.monotonic() - started))
        body = succeeded_body(
            request.request_id,
            stored,
            backend=self._backend_name(request),
            attempts=attempts,
            chunks=1,
            timings=Timings(_ms(queued_s), _ms(synth_s), _ms(store_s), _ms(total_s)),
            metadata=request.metadata,
        )
        await self._publish_event(request.request_id, SUCCEEDED_TYPE, "succeeded", body, rlog)
        rlog.info(
            "succeeded",
            stage="publish",
            attempt=attempts,
            uri=stored.uri,
            duration_ms=stored.duration_ms,
        )
        return "succeeded"

    # -- synthesize -------------------------------------------------------------------------

    def _backend_name(self, request: Request) -> str:
        return request.backend or self.settings.backend

    async def _synthesize(
        self, request: Request, record: Record, rlog: structlog.typing.FilteringBoundLogger
    ) -> tuple[Audio, int, float]:
        name = self._backend_name(request)
        first_failed: dt.datetime | None = None
        attempts = 0
        backend = self.backends.get(name)
        if backend is None:
            known = ", ".join(sorted(self.backends))
            raise _Outcome(
                InvalidInput(
                    f"$.backend: no backend named {name!r} (configured: {known})",
                    stage=Stage.VALIDATE,
                    error_type="unknown_backend",
                ),
                0,
                _now(),
            )
        if request.deadline is not None and request.deadline <= _now():
            raise _Outcome(
                Expired(
                    f"deadline {request.deadline.isoformat()} passed before synthesis",
                    stage=Stage.SYNTHESIZE,
                    error_type="deadline_passed",
                ),
                0,
                _now(),
            )
        retry = self.settings.retry
        budget_end = time.monotonic() + retry.timeout_s

        def backoff(exc: Exception) -> bool | float:
            if not isinstance(exc, Transient):
                return False
            if exc.retry_after is None:
                return True
            return clamp_backoff(exc.retry_after, 0.0, budget_end - time.monotonic())

        t0 = time.monotonic()
        while True:
            try:
                async for attempt in stamina.retry_context(
                    on=backoff,
                    attempts=retry.attempts,
                    timeout=retry.timeout_s,
                    wait_initial=retry.wait_initial_s,
                    wait_max=retry.wait_max_s,
                ):
                    with attempt:
                        attempts += 1
                        try:
                            audio = await backend.synthesize(request)
                        except VoxlineError as exc:
                            first_failed = first_failed or _now()
                            rlog.warning(
                                "backend call failed",
                                stage="synthesize",
                                attempt=attempts,
                                error_type=exc.error_type,
                                error=exc.message,
                                http_status=exc.http_status,
                            )
                            raise
                        return audio, attempts, time.monotonic() - t0
            except Systemic as exc:
                await self._wait_systemic(exc, attempts, rlog)
            except Transient as exc:
                exhausted = Transient(
                    f"gave up after {attempts} attempts: {exc.message}",
                    stage=exc.stage,
                    http_status=exc.http_status,
                    error_type=exc.error_type,
                )
                raise _Outcome(exhausted, attempts, first_failed or _now()) from exc
            except Permanent as exc:
                raise _Outcome(exc, attempts, first_failed or _now()) from exc
            except VoxlineError as exc:  # pragma: no cover - every subclass is routed above
                raise _Outcome(Permanent(exc.message, stage=exc.stage), attempts, _now()) from exc
            except Exception as exc:
                # A bug in an adapter must not wedge the partition: dead-letter this record.
                rlog.exception("unexpected backend error", stage="synthesize", attempt=attempts)
                raise _Outcome(
                    Permanent(
                        f"internal error: {type(exc).__name__}: {exc}",
                        stage=Stage.SYNTHESIZE,
                        error_type="internal_error",
                    ),
                    attempts,
                    first_failed or _now(),
                ) from exc

    async def _wait_systemic(
        self, exc: Systemic, attempt: int, rlog: structlog.typing.FilteringBoundLogger
    ) -> None:
        """A dependency is down for everyone: hold the record (it is not its fault)."""
        wait = min(self.settings.retry.systemic_wait_max_s, 1.0 + attempt)
        rlog.warning(
            "dependency unavailable; holding record",
            stage=exc.stage.value,
            error_type=exc.error_type,
            error=exc.message,
            wait_s=wait,
        )
        await asyncio.sleep(wait)

    async def _until_done(
        self, op: Callable[[], Awaitable[T]], rlog: structlog.typing.FilteringBoundLogger
    ) -> T:
        """Run ``op`` until it stops failing systemically."""
        tries = 0
        while True:
            try:
                return await op()
            except Systemic as exc:
                tries += 1
                await self._wait_systemic(exc, tries, rlog)

    # -- store --------------------------------------------------------------------------------

    async def _store(
        self, request: Request, audio: Audio, rlog: structlog.typing.FilteringBoundLogger
    ) -> tuple[StoredAudio, float]:
        digest = hashlib.sha256(audio.data).hexdigest()
        key = object_key(self.settings.store.prefix, request.request_id, audio.format)
        t0 = time.monotonic()
        try:
            uri = await self._until_done(
                lambda: self.store.put(
                    key,
                    audio.data,
                    CONTENT_TYPES.get(audio.format, "application/octet-stream"),
                    {"request_id": request.request_id, "sha256": digest},
                ),
                rlog,
            )
        except Permanent as exc:
            raise _Outcome(exc, 1, _now()) from exc
        stored = StoredAudio(
            uri=uri,
            bytes=len(audio.data),
            sha256=digest,
            format=audio.format,
            sample_rate=audio.sample_rate,
            channels=audio.channels,
            duration_ms=audio.duration_ms,
        )
        return stored, time.monotonic() - t0

    # -- publish ------------------------------------------------------------------------------

    async def _publish_event(
        self,
        subject: str,
        ce_type: str,
        status: str,
        body: Mapping[str, object],
        rlog: structlog.typing.FilteringBoundLogger,
    ) -> None:
        headers = ce_headers(subject, ce_type, status, self.settings.event_source, _now())
        value = encode(body)
        await self._until_done(
            lambda: self.sink.send(
                self.settings.kafka.completion_topic, subject.encode(), value, headers
            ),
            rlog,
        )

    async def _fail(
        self,
        record: Record,
        request_id: str,
        metadata: Mapping[str, str],
        error: VoxlineError,
        attempts: int,
        first_failed_at: dt.datetime,
        rlog: structlog.typing.FilteringBoundLogger,
    ) -> None:
        reason = error.reason or Reason.RETRIES_EXHAUSTED
        failure = Failure(
            stage=error.stage,
            reason=reason,
            error_type=error.error_type,
            message=error.message,
            attempts=attempts,
            first_failed_at=first_failed_at,
            failed_at=_now(),
            http_status=error.http_status,
        )
        headers = dead_letter_headers(
            record.headers,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp_ms,
            group_id=self.settings.kafka.group_id,
            processor=self.settings.processor_id,
            failure=failure,
        )
        dlq_topic = self.settings.kafka.dlq_topic
        partition, offset = await self._until_done(
            lambda: self.sink.send(
                dlq_topic, record.key, record.value, headers, record.timestamp_ms
            ),
            rlog,
        )
        body = failed_body(
            request_id,
            reason=reason,
            error_type=error.error_type,
            message=error.message,
            dead_letter=DeadLetterRef(dlq_topic, partition, offset),
            attempts=attempts,
            metadata=metadata,
        )
        await self._publish_event(request_id, FAILED_TYPE, "failed", body, rlog)
        rlog.warning(
            "dead-lettered",
            stage=error.stage.value,
            reason=reason.value,
            error_type=error.error_type,
            error=error.message,
            attempt=attempts,
            dlq_partition=partition,
            dlq_offset=offset,
        )


def _fallback_subject(record: Record) -> str:
    """A subject for a record whose request_id cannot be read: its original key if it is a
    usable id, else its coordinates."""
    if record.key:
        try:
            key = record.key.decode()
        except UnicodeDecodeError:
            key = ""
        if (
            key
            and len(key) <= 128
            and all(c.isascii() and (c.isalnum() or c in "._:-") for c in key)
        ):
            return key
    return f"{record.topic}:{record.partition}:{record.offset}"
