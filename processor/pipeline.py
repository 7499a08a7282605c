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
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import stamina
import structlog

from processor.audio import join_wavs, wav_info
from processor.backends.base import CONTENT_TYPES, Audio
from processor.chunking import split_text
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
from processor.kafka.records import Record
from processor.kafka.sink import EventSink
from processor.observability import Metrics
from processor.request import Request, parse_request, request_id_of
from processor.routes import Route
from processor.settings import Settings
from processor.store import AudioStore, object_key
from processor.transcode import transcode

Logger = structlog.typing.FilteringBoundLogger

T = TypeVar("T")
log = structlog.get_logger("voxline.pipeline")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _join(parts: list[Audio]) -> Audio:
    """Chunks' WAVs in order, silence between them, measured from the joined bytes."""
    wav = join_wavs([p.data for p in parts])
    info = wav_info(wav)
    return Audio(wav, "wav", info.sample_rate, info.channels, info.duration_ms)


class _Outcome(Exception):
    """Carries a routed failure out of the stages to ``handle``."""

    def __init__(self, error: VoxlineError) -> None:
        super().__init__(error.message)
        self.error = error


def _check_deadline(request: Request) -> None:
    if request.deadline is not None and request.deadline <= _now():
        raise _Outcome(
            Expired(
                f"deadline {request.deadline.isoformat()} passed before synthesis",
                stage=Stage.SYNTHESIZE,
                error_type="deadline_passed",
            )
        )


@dataclasses.dataclass(slots=True)
class _Tally:
    """Backend calls made for one record, across its chunks and holds."""

    attempts: int = 0
    first_failed_at: dt.datetime | None = None

    def failed(self) -> dt.datetime:
        self.first_failed_at = self.first_failed_at or _now()
        return self.first_failed_at


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        routes: Mapping[str, Route],
        default_route: str,
        store: AudioStore,
        sink: EventSink,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.routes = routes
        self.default_route = default_route
        self.store = store
        self.sink = sink

    async def handle(self, record: Record) -> str:
        """Process one record to its outcome; returns ``"succeeded"`` or ``"failed"``."""
        started = time.monotonic()
        rlog = log.bind(topic=record.topic, partition=record.partition, offset=record.offset)
        try:
            request = parse_request(
                record.value,
                max_text_chars=self.settings.max_text_chars,
                # Room for the longest allowed text in UTF-8 plus the other fields.
                max_record_bytes=max(256 * 1024, 4 * self.settings.max_text_chars + 65536),
            )
            self.metrics.observe_stage("decode", time.monotonic() - started)
        except InvalidInput as exc:
            request_id = request_id_of(
                record.topic, record.partition, record.offset, record.key, record.value
            )
            await self._fail(
                record, request_id, {}, exc, 0, _now(), rlog.bind(request_id=request_id)
            )
            return "failed"
        rlog = rlog.bind(request_id=request.request_id)
        tally = _Tally()
        try:
            route = self._route(request)
            audio, chunks, synth_s = await self._synthesize(route, request, tally, rlog)
            stored, store_s = await self._store(request, audio, rlog)
        except _Outcome as out:
            await self._fail(
                record,
                request.request_id,
                request.metadata,
                out.error,
                tally.attempts,
                tally.first_failed_at or _now(),
                rlog,
            )
            return "failed"
        total_s = time.time() - record.timestamp_ms / 1000
        queued_s = max(0.0, total_s - (time.monotonic() - started))
        body = succeeded_body(
            request.request_id,
            stored,
            backend=route.name,
            attempts=tally.attempts,
            chunks=chunks,
            timings=Timings(_ms(queued_s), _ms(synth_s), _ms(store_s), _ms(total_s)),
            metadata=request.metadata,
        )
        t_pub = time.monotonic()
        await self._publish_event(request.request_id, SUCCEEDED_TYPE, "succeeded", body, rlog)
        self.metrics.observe_stage("synthesize", synth_s)
        self.metrics.observe_stage("store", store_s)
        self.metrics.observe_stage("publish", time.monotonic() - t_pub)
        self.metrics.observe_stage("total", time.monotonic() - started)
        self.metrics.succeeded(route.name, chunks)
        rlog.info(
            "succeeded",
            stage="publish",
            attempt=tally.attempts,
            backend=route.name,
            window=route.gate.limit,
            uri=stored.uri,
            duration_ms=stored.duration_ms,
            chunks=chunks,
        )
        return "succeeded"

    # -- synthesize -------------------------------------------------------------------------

    def _route(self, request: Request) -> Route:
        name = request.backend or self.default_route
        route = self.routes.get(name)
        if route is None:
            known = ", ".join(sorted(self.routes))
            raise _Outcome(
                InvalidInput(
                    f"$.backend: no backend named {name!r} (configured: {known})",
                    stage=Stage.VALIDATE,
                    error_type="unknown_backend",
                )
            )
        return route

    async def _synthesize(
        self, route: Route, request: Request, tally: _Tally, rlog: Logger
    ) -> tuple[Audio, int, float]:
        """All chunks through the backend's gate, joined in order, in the requested format."""
        _check_deadline(request)
        t0 = time.monotonic()
        # Backends speak WAV at their own rate; format and rate are the pipeline's job.
        base = dataclasses.replace(request, format="wav", sample_rate=None)
        # Whitespace-only pieces carry nothing to speak (validation guarantees some text).
        texts = [t for t in split_text(request.text, route.config.text_limit) if t.strip()]
        if len(texts) == 1:  # the common case: no tasks to spawn
            parts = [
                await self._chunk(route, dataclasses.replace(base, text=texts[0]), tally, rlog)
            ]
        else:
            parts = await self._chunks(route, base, texts, tally, rlog)
        joined = parts[0] if len(parts) == 1 else _join(parts)
        try:
            audio = await self._finish_audio(joined, request, rlog)
        except Permanent as exc:
            raise _Outcome(exc) from exc
        return audio, len(parts), time.monotonic() - t0

    async def _chunks(
        self, route: Route, base: Request, texts: list[str], tally: _Tally, rlog: Logger
    ) -> list[Audio]:
        """Chunks concurrently (the gate bounds the calls); the first failure cancels the rest."""
        calls = [
            asyncio.create_task(self._chunk(route, dataclasses.replace(base, text=t), tally, rlog))
            for t in texts
        ]
        try:
            await asyncio.wait(calls, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
        for call in calls:  # the first real failure, not the siblings we cancelled for it
            failure = None if call.cancelled() else call.exception()
            if failure is not None:
                raise failure
        return [call.result() for call in calls]

    async def _finish_audio(self, wav: Audio, request: Request, rlog: Logger) -> Audio:
        """The requested format and rate; the backend's WAV (already measured) if it is that."""
        if request.format == "wav" and request.sample_rate in (None, wav.sample_rate):
            return wav
        return await self._until_done(
            lambda: transcode(wav.data, request.format, sample_rate=request.sample_rate), rlog
        )

    async def _chunk(self, route: Route, request: Request, tally: _Tally, rlog: Logger) -> Audio:
        """One chunk: retried on transient errors, held while the backend is down."""
        retry = self.settings.retry
        gate = route.gate

        def backoff(exc: Exception) -> bool | float:
            if not isinstance(exc, Transient) or gate.is_open:
                return False  # an open breaker turns retrying into holding (below)
            if exc.retry_after is None:
                return True
            return clamp_backoff(exc.retry_after, 0.0, budget_end - time.monotonic())

        while True:
            budget_end = time.monotonic() + route.config.retry_timeout_s
            try:
                async for attempt in stamina.retry_context(
                    on=backoff,
                    attempts=route.config.retry_attempts,
                    timeout=route.config.retry_timeout_s,
                    wait_initial=retry.wait_initial_s,
                    wait_max=retry.wait_max_s,
                ):
                    with attempt:
                        return await self._call(route, request, tally, rlog)
            except Systemic as exc:
                await self._hold(exc, request, tally, rlog)
            except Transient as exc:
                if gate.is_open:
                    await self._hold(exc, request, tally, rlog)
                    continue
                raise _Outcome(
                    Transient(
                        f"gave up after {tally.attempts} attempts: {exc.message}",
                        stage=exc.stage,
                        http_status=exc.http_status,
                        error_type=exc.error_type,
                    )
                ) from exc
            except Permanent as exc:
                raise _Outcome(exc) from exc

    async def _call(self, route: Route, request: Request, tally: _Tally, rlog: Logger) -> Audio:
        async with route.gate.call(work=len(request.text)):
            tally.attempts += 1
            try:
                return await route.backend.synthesize(request)
            except VoxlineError as exc:
                tally.failed()
                self.metrics.retry(route.name, exc.error_type)
                rlog.warning(
                    "backend call failed",
                    stage="synthesize",
                    attempt=tally.attempts,
                    backend=route.name,
                    window=route.gate.limit,
                    error_type=exc.error_type,
                    error=exc.message,
                    http_status=exc.http_status,
                )
                raise
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as exc:
                # A bug in an adapter must not wedge the partition: dead-letter this record.
                rlog.exception(
                    "unexpected backend error", stage="synthesize", attempt=tally.attempts
                )
                tally.failed()
                raise _Outcome(
                    Permanent(
                        f"internal error: {type(exc).__name__}: {exc}",
                        stage=Stage.SYNTHESIZE,
                        error_type="internal_error",
                    )
                ) from exc

    async def _hold(self, exc: VoxlineError, request: Request, tally: _Tally, rlog: Logger) -> None:
        """The backend is down for everyone: wait (the gate admits again when its breaker's
        probe succeeds), unless the request's own deadline passes meanwhile."""
        tally.failed()
        _check_deadline(request)
        rlog.warning(
            "backend unavailable; holding record",
            stage=exc.stage.value,
            error_type=exc.error_type,
            error=exc.message,
            attempt=tally.attempts,
        )
        # The gate does the real waiting (for the breaker's probe); this only paces the loop.
        await asyncio.sleep(0.2)

    async def _wait_systemic(
        self, exc: VoxlineError, attempt: int, rlog: structlog.typing.FilteringBoundLogger
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
            raise _Outcome(exc) from exc
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
        self.metrics.dead_lettered(reason.value, error.stage.value)
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
