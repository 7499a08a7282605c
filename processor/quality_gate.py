"""The quality gate around one chunk's synthesis: measure, regenerate, then decide.

A chunk whose audio fails a check of :mod:`processor.quality` is synthesized again (with a
new seed when the request gave one: the same seed would give the same audio) up to
``Thresholds.attempts`` syntheses in all; if every one fails, :class:`QualityFailed`
dead-letters the request with reason ``quality`` and the last measures in ``dlq.quality.*``
headers. Failures are counted by backend and check (``voxline_quality_failures_total``).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping

import structlog
from prometheus_client import Counter

from processor.asr import Transcriber, error_rate
from processor.backends.base import Audio, Utterance
from processor.breaker import Breaker
from processor.errors import Permanent, Reason, Stage
from processor.observability import Metrics
from processor.quality import Thresholds, failures, measure
from processor.usage import Usage

Logger = structlog.typing.FilteringBoundLogger

_COUNTERS: weakref.WeakKeyDictionary[Metrics, dict[str, Counter]] = weakref.WeakKeyDictionary()


class QualityFailed(Permanent):
    """A chunk's audio failed the quality gate on every synthesis."""

    reason = Reason.QUALITY

    def __init__(self, checks: list[str], measures: Mapping[str, float], attempts: int) -> None:
        shown = ", ".join(f"{k}={v}" for k, v in measures.items())
        super().__init__(
            f"audio failed the quality gate ({', '.join(checks)}) on all {attempts} "
            f"syntheses of a chunk; last measures: {shown}",
            stage=Stage.SYNTHESIZE,
            error_type=f"quality_{checks[0]}",
        )
        self.checks = checks
        self.measures = dict(measures)

    @property
    def headers(self) -> dict[str, str]:
        """The ``dlq.quality.*`` headers: the failed checks and every measured value."""
        out = {"dlq.quality.checks": ",".join(self.checks)}
        out.update({f"dlq.quality.{k}": str(v) for k, v in self.measures.items()})
        return out


#: The gate's counters: name -> help and labels.
COUNTERS = {
    "voxline_quality_failures_total": (
        "Chunk syntheses that failed a quality check, by backend and check.",
        ("backend", "check"),
    ),
    "voxline_quality_asr_skipped_total": (
        "Chunks the ASR round trip could not check (transcription server down or failing), "
        "by backend.",
        ("backend",),
    ),
}


def counter(metrics: Metrics, name: str) -> Counter:
    """The counter ``name`` of :data:`COUNTERS` on ``metrics``' registry (made once)."""
    made = _COUNTERS.setdefault(metrics, {})
    if name not in made:
        text, labels = COUNTERS[name]
        made[name] = Counter(name, text, labels, registry=metrics.registry)
    return made[name]


def failures_counter(metrics: Metrics) -> Counter:
    """``voxline_quality_failures_total{backend,check}`` on ``metrics``' registry (once)."""
    return counter(metrics, "voxline_quality_failures_total")


def speed_of(call: Utterance) -> float:
    speed = call.params.get("speed", 1.0)
    return float(speed) if isinstance(speed, int | float) and speed > 0 else 1.0


#: Audio up to this long is checked on the event loop (about 0.4 ms of CPU a second of audio:
#: no thread hop, and a sibling's failure cannot cancel a chunk between its making and its
#: caching); longer audio in a worker thread, so the loop is never held for long.
INLINE_MAX_MS = 30_000

#: A backend whose chunks end ``quality`` this often, over the last ``BROKEN_WINDOW`` gated
#: chunks (at least ``BROKEN_MIN``), is broken, not the texts: its breaker is tripped.
BROKEN_SHARE, BROKEN_WINDOW, BROKEN_MIN = 0.5, 20, 10


class QualityGate:
    def __init__(
        self,
        thresholds: Thresholds,
        metrics: Metrics,
        breakers: Mapping[str, Breaker | None] | None = None,
        transcriber: Transcriber | None = None,
    ) -> None:
        self.thresholds = thresholds
        self.failed = failures_counter(metrics)
        self.skipped = counter(metrics, "voxline_quality_asr_skipped_total")
        self.breakers = breakers or {}
        self.recent: dict[str, collections.deque[bool]] = {}
        asr = thresholds.asr if thresholds.enabled else None
        #: The ASR round trip (``processor.asr``) when ``[quality.asr]`` is configured.
        self.asr = transcriber or (Transcriber(asr) if asr is not None else None)

    def _settled(self, backend: str, bad: bool) -> None:
        """A chunk's verdict after its regenerations; trips the backend's breaker when most
        of its recent chunks ended bad."""
        recent = self.recent.setdefault(backend, collections.deque(maxlen=BROKEN_WINDOW))
        recent.append(bad)
        breaker = self.breakers.get(backend)
        if breaker is None or len(recent) < BROKEN_MIN or sum(recent) < BROKEN_SHARE * len(recent):
            return
        if breaker.state != "open":
            breaker.trip(time.monotonic(), "quality")
            recent.clear()

    async def check(self, audio: Audio, call: Utterance) -> tuple[dict[str, float], list[str]]:
        """The chunk's measures and the checks it fails (none for audio that is not WAV:
        the gate measures only what it can decode)."""
        if audio.format != "wav":
            return {}, []
        t = self.thresholds
        try:
            if audio.duration_ms <= INLINE_MAX_MS:
                measures = measure(audio.data, call.text, t, speed=speed_of(call))
            else:
                measures = await asyncio.to_thread(
                    measure, audio.data, call.text, t, speed=speed_of(call)
                )
        except ValueError:
            return {"decodable": 0.0}, ["undecodable"]
        failed = failures(measures, call.language, t, call.text)
        if not failed and self.asr is not None:
            failed = await self._heard(self.asr, audio, call, measures)
        return measures, failed

    @staticmethod
    async def _heard(
        asr: Transcriber, audio: Audio, call: Utterance, measures: dict[str, float]
    ) -> list[str]:
        """The ASR round trip of audio that passed the signal checks: ``asr`` when the
        transcription differs from the text by more than ``max_error``."""
        heard = await asr.heard(audio.data, call.language)
        if heard is None:
            measures["asr_skipped"] = 1.0
            return []
        rate = round(error_rate(call.text, heard, call.language), 4)
        measures["asr_error_rate"] = rate
        return ["asr"] if rate > asr.settings.max_error else []

    async def aclose(self) -> None:
        if self.asr is not None:
            await self.asr.aclose()

    async def made(
        self,
        call: Utterance,
        backend: str,
        synthesize: Callable[[Utterance], Awaitable[Audio]],
        rlog: Logger,
        usage: Usage | None = None,
    ) -> Audio:
        """``synthesize(call)`` until its audio passes the gate, or :class:`QualityFailed`."""
        t = self.thresholds
        if not t.enabled:
            return await synthesize(call)
        attempts = max(1, t.attempts)
        for attempt in range(1, attempts + 1):
            this = call
            if attempt > 1 and call.seed is not None:
                this = dataclasses.replace(call, seed=call.seed + attempt - 1)
            audio = await synthesize(this)
            measures, failed = await self.check(audio, this)
            if measures.get("asr_skipped"):
                self.skipped.labels(backend=backend).inc()
            if not failed:
                if usage is not None and measures:
                    usage.quality.append(measures)
                self._settled(backend, False)
                return audio
            if usage is not None:
                usage.regenerated += attempt < attempts
            for name in failed:
                self.failed.labels(backend=backend, check=name).inc()
            rlog.warning(
                "chunk failed the quality gate",
                stage="synthesize",
                backend=backend,
                checks=failed,
                quality_attempt=attempt,
                measures=measures,
            )
        self._settled(backend, True)
        raise QualityFailed(failed, measures, attempts)


def quality_summary(chunks: list[dict[str, float]], regenerated: int) -> dict[str, float]:
    """The event's ``quality``: the worst of each measure over a request's chunks."""
    out: dict[str, float] = {"chunks_checked": len(chunks), "regenerated": regenerated}
    keys = ("silence_ratio", "clipping_ratio", "repetition", "leading_silence_s")
    for key in (*keys, "trailing_silence_s"):
        out[key] = max(c[key] for c in chunks)
    out["dc_offset"] = max((c["dc_offset"] for c in chunks), key=abs)
    out["seconds_per_char_min"] = min(c["seconds_per_char"] for c in chunks)
    out["seconds_per_char_max"] = max(c["seconds_per_char"] for c in chunks)
    rates = [c["asr_error_rate"] for c in chunks if "asr_error_rate" in c]
    skipped = sum(1 for c in chunks if c.get("asr_skipped"))
    if rates:
        out["asr_error_rate"] = max(rates)
    if rates or skipped:
        out["asr_skipped"] = skipped
    return out
