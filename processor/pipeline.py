"""What happens to one record: decode -> synthesize -> store -> publish, or dead-letter.

``Pipeline.handle`` returns only once the record has its outcome acknowledged by the broker
(a succeeded event, or a dead letter plus a failed event). It raises only when cancelled:
the stages raise ``VoxlineError``s, which are routed in one place (``_process``), and any
other exception is retried a few times and then dead-lettered as ``internal_error``.

Records with the same request_id are processed one after the other, in the order they were
handed in (offset order), so the later one's audio is the one that stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import traceback
from collections.abc import AsyncIterator, Mapping

import structlog

from processor import tracing
from processor.backends.base import CONTENT_TYPES, ReferenceLoader
from processor.cache import ChunkCache
from processor.cloudevents_in import causation_of, open_record
from processor.errors import InternalError, InvalidInput, Stage, VoxlineError
from processor.events import StoredAudio, Timings, succeeded_body
from processor.held import HeldAudio
from processor.kafka.records import Record
from processor.kafka.sink import EventSink
from processor.lexicon import LexiconLoader
from processor.observability import Metrics
from processor.outcomes import Logger, Outcomes
from processor.parking import Parking, resumed, retry_topic
from processor.quality_gate import quality_summary
from processor.request import Request, parse_request, request_id_of
from processor.routes import Route
from processor.settings import Settings
from processor.sidecars import store_sidecars
from processor.steps import Park, Tally, run_step
from processor.store import AudioStore, object_key
from processor.synthesis import Synthesized, Synthesizer, call_fields
from processor.usage import Usage

log = structlog.get_logger("voxline.pipeline")

#: Unexpected failures of one record before it is dead-lettered as ``internal_error``.
INTERNAL_ATTEMPTS = 3


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def record_log(record: Record, request_id: str) -> Logger:
    """The logger for one record: every line names where it came from and its request."""
    bound: Logger = log.bind(
        topic=record.topic, partition=record.partition, offset=record.offset, request_id=request_id
    )
    return bound


def internal_error(exc: BaseException, failures: int) -> InternalError:
    """``internal_error`` naming the exception and the last frame it passed through."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
    return InternalError(
        f"internal error ({failures} tries): {type(exc).__name__}: {exc}{where}",
        stage=Stage.SYNTHESIZE,
        error_type="internal_error",
    )


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        routes: Mapping[str, Route],
        default_route: str,
        store: AudioStore,
        sink: EventSink,
        metrics: Metrics | None = None,
        *,
        references: ReferenceLoader | None = None,
        cache: ChunkCache | None = None,
        lexicons: LexiconLoader | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.routes = routes
        self.default_route = default_route
        self.store = store
        self.step_policy = settings.retry.policy()
        self.synth = Synthesizer(
            routes,
            default_route,
            references=references,
            store_policy=self.step_policy,
            metrics=self.metrics,
            cache=cache,
            quality=settings.backends.quality,
            lexicons=lexicons,
            held=HeldAudio(settings.backends.audio_window),
        )
        # The lanes' shares, the same at every gate (processor.app.build_routes).
        self.synth.held.shares = next((r.gate.shares for r in routes.values()), {})
        self.outcomes = Outcomes(settings, sink, self.step_policy, self.metrics)
        k = settings.kafka
        parked_to = retry_topic(k.request_topic, k.retry_topic)
        self.parking = Parking(sink, parked_to, self.step_policy, self.metrics, settings.max_parks)
        self._turns: dict[str, asyncio.Event] = {}

    @tracing.traced_record
    async def handle(self, record: Record) -> str:
        """Process one record to its outcome; returns ``"succeeded"`` or ``"failed"``."""
        failures = 0
        while True:
            try:
                return await self._handle(record)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.exception(
                    "unexpected error processing record",
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    failures=failures,
                )
                if failures >= INTERNAL_ATTEMPTS:
                    return await self.dead_letter(record, internal_error(exc, failures))

    async def dead_letter(self, record: Record, error: VoxlineError) -> str:
        """Dead-letter ``record`` with ``error`` (and publish its failed event)."""
        request_id = request_id_of(
            record.topic, record.partition, record.offset, record.key, record.value
        )
        rlog = record_log(record, request_id)
        tracing.failed(error)
        await tracing.within(
            "voxline.publish",
            self.outcomes.failed(record, request_id, {}, error, Tally(), rlog),
            producer=True,
        )
        return "failed"

    async def _handle(self, record: Record) -> str:
        started = time.monotonic()
        try:
            with tracing.span("voxline.validate"):
                request = parse_request(
                    open_record(record.headers, record.value).value,  # a CloudEvent's request
                    max_text_chars=self.settings.max_text_chars,
                    # Room for the longest allowed text in UTF-8 plus the other fields.
                    max_record_bytes=max(256 * 1024, 4 * self.settings.max_text_chars + 65536),
                )
        except InvalidInput as exc:
            return await self.dead_letter(record, exc)
        self.metrics.observe_stage("decode", time.monotonic() - started)
        async with self._turn(request.request_id):
            return await self._process(record, request, started)

    @contextlib.asynccontextmanager
    async def _turn(self, request_id: str) -> AsyncIterator[None]:
        """Wait for the records with the same request_id handed in before this one. Entered
        before the first await of ``_handle``, so the queue follows the order of hand-in."""
        before = self._turns.get(request_id)
        mine = self._turns[request_id] = asyncio.Event()
        try:
            if before is not None:
                await before.wait()
            yield
        finally:
            mine.set()
            if self._turns.get(request_id) is mine:
                del self._turns[request_id]

    async def _process(self, record: Record, request: Request, started: float) -> str:
        tally = resumed(record.headers)  # attempts before earlier parks count too
        try:
            return await self._outcome(record, request, started, tally)
        finally:
            if tally.holds_audio:  # stored and published, failed or parked: room for the next
                self.synth.held.give()

    async def _outcome(self, record: Record, request: Request, started: float, tally: Tally) -> str:
        rlog = record_log(record, request.request_id)
        usage = Usage(characters=len(request.text))
        try:
            route = self.synth.route(request)
            result = await self.synth.synthesize(route, request, tally, rlog, usage)
            stored, store_s = await self._store(request, result)
            prefix = self.settings.store.prefix  # marks and subtitles beside the audio
            sidecars = await store_sidecars(self.store, prefix, request, result, self.step_policy)
        except (Park, VoxlineError) as caught:  # the one place a record's failure is routed
            error = caught if isinstance(caught, VoxlineError) else None
            if isinstance(caught, Park):  # to the delay topic; an error if it cannot go
                error = await self.parking.park(record, request, tally, caught, rlog)
            if error is None:
                return "parked"
            tracing.failed(error)
            await tracing.within(
                "voxline.publish",
                self.outcomes.failed(
                    record, request.request_id, request.metadata, error, tally, rlog, usage
                ),
                producer=True,
            )
            return "failed"
        await self._succeeded(
            record, request, route, result, stored, store_s, tally, started, rlog, sidecars
        )
        return "succeeded"

    async def _store(self, request: Request, result: Synthesized) -> tuple[StoredAudio, float]:
        audio = result.audio
        digest = hashlib.sha256(audio.data).hexdigest()
        key = object_key(self.settings.store.prefix, request.request_id, audio.format)
        t0 = time.monotonic()
        uri = await tracing.within(
            "voxline.store",
            run_step(
                lambda: self.store.put(
                    key,
                    audio.data,
                    CONTENT_TYPES.get(audio.format, "application/octet-stream"),
                    {"request_id": request.request_id, "sha256": digest},
                ),
                self.step_policy,
            ),
            {"voxline.object.key": key, "voxline.object.bytes": len(audio.data)},
        )
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

    async def _succeeded(
        self,
        record: Record,
        request: Request,
        route: Route,
        result: Synthesized,
        stored: StoredAudio,
        store_s: float,
        tally: Tally,
        started: float,
        rlog: Logger,
        sidecars: dict[str, object] | None = None,
    ) -> None:
        total_s = time.time() - record.timestamp_ms / 1000
        queued_s = max(0.0, total_s - (time.monotonic() - started))
        body = succeeded_body(
            request.request_id,
            stored,
            backend=route.name,
            attempts=tally.attempts,
            chunks=result.chunks,
            timings=Timings(_ms(queued_s), _ms(result.seconds), _ms(store_s), _ms(total_s)),
            metadata=request.metadata,
            usage=result.usage.as_event(),
        )
        body.update(sidecars or {})
        if result.usage.quality:
            body["quality"] = quality_summary(result.usage.quality, result.usage.regenerated)
        if result.usage.loudness is not None:
            body["loudness"] = result.usage.loudness
        t_pub = time.monotonic()
        causation = causation_of(record.headers, record.value)
        await tracing.within(
            "voxline.publish",
            self.outcomes.succeeded(
                request.request_id, body, causation, result.usage, request.metadata
            ),
            producer=True,
        )
        self.metrics.observe_stage("synthesize", result.seconds)
        self.metrics.observe_stage("store", store_s)
        self.metrics.observe_stage("publish", time.monotonic() - t_pub)
        self.metrics.observe_stage("total", time.monotonic() - started)
        self.metrics.succeeded(route.name, result.chunks)
        rlog.info(
            "succeeded",
            stage="publish",
            uri=stored.uri,
            duration_ms=stored.duration_ms,
            chunks=result.chunks,
            **call_fields(route, tally),
        )
