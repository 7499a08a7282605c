"""The synthesize stage: a request's text, through its backend's gate, to audio in the
requested format.

The reference audio a voice names is loaded here, before the gate: a missing object is the
request's own fault (``invalid_input``) and a store outage holds the record, and neither
touches the backend's breaker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Callable, Mapping

import structlog

from processor import tracing
from processor.audio import join_wavs, wav_info
from processor.backends.base import Audio, ReferenceAudio, ReferenceLoader, Utterance, utterance_of
from processor.cache import ChunkCache
from processor.chunking import split_sentences, split_text
from processor.errors import Expired, InvalidInput, Stage, VoxlineError
from processor.held import HeldAudio
from processor.lexicon import Lexicon, LexiconLoader
from processor.mastering_step import lead_s, mastered
from processor.observability import Metrics
from processor.quality import Thresholds
from processor.quality_gate import QualityGate
from processor.request import Request
from processor.retry import Decision, Policy
from processor.routes import Route
from processor.segments import Timing, join_pieces, plan_of, utterance_for, with_lexicons
from processor.steps import Tally, now, run_step
from processor.tempo import tempo_parts
from processor.transcode import transcode
from processor.usage import Usage

Logger = structlog.typing.FilteringBoundLogger

#: With the cache on, a sentence shorter than this joins the next in one chunk (``Yes.``).
SHORTEST_SENTENCE = 24


def check_deadline(request: Request) -> None:
    if request.deadline is not None and request.deadline <= now():
        raise Expired(
            f"deadline {request.deadline.isoformat()} passed before synthesis",
            stage=Stage.SYNTHESIZE,
            error_type="deadline_passed",
        )


def join(parts: list[Audio]) -> Audio:
    """Chunks' WAVs in order, silence between them, measured from the joined bytes."""
    if len(parts) == 1:
        return parts[0]
    wav = join_wavs([p.data for p in parts])
    info = wav_info(wav)
    return Audio(wav, "wav", info.sample_rate, info.channels, info.duration_ms)


def call_fields(route: Route, tally: Tally) -> dict[str, object]:
    """What every log line about a record's backend calls says."""
    return {"backend": route.name, "window": route.gate.limit, "attempt": tally.attempts}


@dataclasses.dataclass(frozen=True, slots=True)
class Synthesized:
    audio: Audio
    chunks: int
    seconds: float
    usage: Usage = dataclasses.field(default_factory=Usage)
    #: the segment plan and where each piece landed (SSML, marks, subtitles), else None
    timing: Timing | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    """One record's synthesis: what every chunk of it needs."""

    route: Route
    request: Request
    tally: Tally
    rlog: Logger
    usage: Usage


class Synthesizer:
    def __init__(
        self,
        routes: Mapping[str, Route],
        default_route: str,
        *,
        references: ReferenceLoader | None,
        store_policy: Policy,
        metrics: Metrics,
        cache: ChunkCache | None = None,
        quality: Thresholds | None = None,
        lexicons: LexiconLoader | None = None,
        held: HeldAudio,
    ) -> None:
        self.lexicons = lexicons
        #: Records holding audio; a record holding none waits for room before its first call.
        self.held = held
        breakers = {name: r.gate.breaker for name, r in routes.items()}
        self.quality = QualityGate(quality or Thresholds(), metrics, breakers)
        self.routes = routes
        self.default_route = default_route
        self.references = references
        self.store_policy = store_policy
        self.metrics = metrics
        self.cache = cache

    def route(self, request: Request) -> Route:
        name = request.backend or self.default_route
        route = self.routes.get(name)
        if route is None:
            known = ", ".join(sorted(self.routes))
            raise InvalidInput(
                f"$.backend: no backend named {name!r} (configured: {known})",
                stage=Stage.VALIDATE,
                error_type="unknown_backend",
            )
        return route

    async def synthesize(
        self, route: Route, request: Request, tally: Tally, rlog: Logger, usage: Usage | None = None
    ) -> Synthesized:
        """All chunks through the backend's gate (or from the chunk cache), joined in order, in
        the requested format; ``usage`` is counted as it goes (so a failure keeps its figures)."""
        usage = Usage(characters=len(request.text)) if usage is None else usage
        usage.backend = route.name
        job = Job(route, request, tally, rlog, usage)
        check_deadline(request)
        t0 = time.monotonic()
        # SSML (or timing marks): segments and exact silences (processor.segments), else chunks.
        uris = (*request.lexicons, *route.config.lexicons)  # the request's first: they win
        kind = route.config.kind
        plan = plan_of(request, route.config.text_limit, kind=kind, lexicons=bool(uris))
        route.backend.check(utterance_of(request))
        reference = await self._reference(request, tally, rlog)
        if plan is not None and uris:
            plan = with_lexicons(plan, await self._lexicons(uris), kind=kind)
        if plan is None:
            # Whitespace-only pieces carry nothing to speak (validation guarantees some text).
            texts = [t for t in self._texts(route, request) if t.strip()]
            calls = [utterance_of(request, text, reference=reference) for text in texts]
        else:
            calls = [utterance_for(request, piece, reference) for piece in plan.pieces]
            for call in calls:
                route.backend.check(call)
        usage.chunks = len(calls)
        parts = await self._parts(job, calls)
        if plan is not None:  # <prosody rate> where the server takes no speed
            parts = await tempo_parts(parts, plan, kind)
        joined = None if plan is None else join_pieces(parts, [p.gap_ms for p in plan.pieces])
        wav = join(parts) if joined is None else joined.audio
        profile = request.mastering or route.config.mastering
        if profile != "none":  # processor.mastering_step
            rate = request.sample_rate
            audio, usage.loudness = await mastered(wav, profile, request.format, rate)
            if joined is not None and lead_s(profile):  # marks follow the speech it moved
                joined = joined.delayed(lead_s(profile))
        else:
            audio = await self._finish(wav, request, rlog)
        usage.audio_ms = audio.duration_ms
        timing = None if plan is None or joined is None else Timing(plan, joined)
        return Synthesized(audio, len(parts), time.monotonic() - t0, usage, timing)

    async def _lexicons(self, uris: tuple[str, ...]) -> list[Lexicon]:
        """The request's PLS lexicons, in order (outside the gate, as reference audio)."""
        loader = self.lexicons
        if loader is None:
            raise InvalidInput(
                "$.lexicons: no lexicon loader is configured",
                stage=Stage.VALIDATE,
                error_type="lexicon_unavailable",
            )
        loads = [functools.partial(loader.load, uri) for uri in uris]
        return [await run_step(load, self.store_policy) for load in loads]

    async def _reference(
        self, request: Request, tally: Tally, rlog: Logger
    ) -> ReferenceAudio | None:
        named = request.voice.reference
        if named is None:
            return None
        loader = self.references
        if loader is None:
            raise InvalidInput(
                f"no reference loader is configured: cannot read {named.audio_uri}",
                stage=Stage.VALIDATE,
                error_type="reference_unavailable",
            )
        return await run_step(
            lambda: loader.load(named.audio_uri),
            self.store_policy,
            before_wait=self._waiting(request, tally, rlog),
        )

    def _texts(self, route: Route, request: Request) -> list[str]:
        """The chunks' texts: one sentence each when the cache serves the request (an edited
        sentence then misses only itself), else whole sentences packed up to the limit."""
        limit = route.config.text_limit
        if self.cache is not None and self.cache.fine(
            route.config, utterance_of(request), request.cache
        ):
            return split_sentences(request.text, limit, shortest=SHORTEST_SENTENCE)
        return split_text(request.text, limit)

    async def _parts(self, job: Job, calls: list[Utterance]) -> list[Audio]:
        """Every chunk's audio: from the request's cache bundle, the chunk cache or the
        backend; the bundle is written again when any chunk came from elsewhere."""
        cache, mode = self.cache, job.request.cache
        keys = [None if cache is None else cache.key(job.route.config, c, mode) for c in calls]
        named = [k for k in keys if k is not None]
        whole = cache is not None and len(named) == len(keys)
        found = await cache.bundled(named, mode) if cache is not None and whole else {}
        todo = [i for i, key in enumerate(keys) if key is None or key not in found]
        if len(todo) == 1:  # the common case: no tasks to spawn
            made = [await self._chunk(job, calls[todo[0]], keys[todo[0]])]
        else:
            made = await self._chunks(job, [(i, calls[i], keys[i]) for i in todo])
        fresh = iter(made)
        parts = [found[key] if key is not None and key in found else next(fresh) for key in keys]
        for key in named:
            if key in found:
                job.usage.cache_hits += 1
                job.usage.audio_ms += found[key].duration_ms
        if cache is not None and whole and todo:
            await cache.keep_bundle(named, parts, mode)
        return parts

    async def _chunks(
        self, job: Job, calls: list[tuple[int, Utterance, str | None]]
    ) -> list[Audio]:
        """Chunks concurrently (the gate bounds the calls); the first failure cancels the rest."""
        if not calls:
            return []
        tasks = [tracing.chunk_task(i, self._chunk(job, call, key)) for i, call, key in calls]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:  # the first real failure, not the siblings we cancelled for it
            failure = None if task.cancelled() else task.exception()
            if failure is not None:
                raise failure
        return [task.result() for task in tasks]

    async def _chunk(self, job: Job, call: Utterance, key: str | None) -> Audio:
        """One chunk: from the cache, or made by the backend (and then cached)."""
        cache, mode = self.cache, job.request.cache
        if cache is None or key is None:
            audio = await self._made(job, call)
        else:
            audio, hit = await cache.through(key, mode, lambda: self._made(job, call))
            job.usage.cache_hits += hit
        job.usage.audio_ms += audio.duration_ms
        return audio

    async def _made(self, job: Job, call: Utterance) -> Audio:
        """One chunk by the backend: retried on transient errors, held while it is down."""
        route = job.route

        async def once(this: Utterance) -> Audio:
            return await run_step(
                lambda: self._call(job, this),
                route.policy,
                breaker_open=lambda: route.gate.is_open,
                before_wait=self._waiting(job.request, job.tally, job.rlog),
            )

        return await self.quality.made(call, route.name, once, job.rlog, job.usage)

    async def _call(self, job: Job, call: Utterance) -> Audio:
        tally = job.tally
        first = not tally.holds_audio
        if first:  # its sibling chunks may answer while it waits: then it goes too
            await self.held.room(lambda: tally.holds_audio)
        try:
            return await self._gated(job, call)
        finally:
            if first and not tally.holds_audio:
                self.held.missed()

    async def _gated(self, job: Job, call: Utterance) -> Audio:
        route, tally, rlog = job.route, job.tally, job.rlog
        async with route.gate.call(work=len(call.text)):
            tally.attempts += 1
            job.usage.backend_calls += 1
            started = time.monotonic()
            try:
                with tracing.backend_call(route.name, tally.attempts, route.gate.limit, call.text):
                    audio = await route.backend.synthesize(call)
                if not tally.holds_audio:  # given back when the record ends (pipeline)
                    tally.holds_audio = True
                    self.held.take()
                return audio
            except VoxlineError as exc:
                tally.failed()
                self.metrics.retry(route.name, exc.error_type)
                rlog.warning(
                    "backend call failed",
                    stage="synthesize",
                    error_type=exc.error_type,
                    error=exc.message,
                    http_status=exc.http_status,
                    **call_fields(route, tally),
                )
                raise
            finally:
                job.usage.call_took(time.monotonic() - started)

    async def _finish(self, wav: Audio, request: Request, rlog: Logger) -> Audio:
        """The requested format and rate; the backend's WAV (already measured) if it is that."""
        if request.format == "wav" and request.sample_rate in (None, wav.sample_rate):
            return wav
        return await run_step(
            lambda: transcode(wav.data, request.format, sample_rate=request.sample_rate),
            self.store_policy,
            before_wait=lambda error, decision: rlog.warning(
                "transcoding failed; trying again",
                error_type=error.error_type,
                error=error.message,
                wait_s=decision.wait_s,
            ),
        )

    @staticmethod
    def _waiting(
        request: Request, tally: Tally, rlog: Logger
    ) -> Callable[[VoxlineError, Decision], None]:
        def before_wait(error: VoxlineError, decision: Decision) -> None:
            tally.failed()
            check_deadline(request)
            rlog.warning(
                "waiting before the next try",
                stage=error.stage.value,
                decision=decision.action.value,
                wait_s=round(decision.wait_s, 3),
                error_type=error.error_type,
                error=error.message,
                attempt=tally.attempts,
            )

        return before_wait
