"""Test doubles that ship with the seams (as httpx ships ``MockTransport``): an in-memory
event sink, audio store, reference loader and a scripted backend. They implement the same
protocols as the real ones, so the pipeline runs on them unchanged, without Kafka or S3.

A *script* is a list of what successive calls do: an exception to raise, or ``None`` to
succeed. When the script runs out, calls succeed.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable, Mapping

import numpy as np

from processor.audio import pcm_to_wav
from processor.backends.base import Audio, ReferenceAudio, Utterance
from processor.errors import InvalidInput, Stage
from processor.kafka.sink import Outbound
from processor.quality import Thresholds, pace_bounds, spoken_length

Step = BaseException | None


def speechlike(duration_ms: float, rate: int, seed: int = 0) -> bytes:
    """16-bit mono PCM of ``duration_ms`` with syllables (80-250 ms, 120-320 Hz with two
    harmonics) and short gaps, at about -20 dBFS RMS: it passes the quality gate."""
    rng = random.Random(seed)
    total = max(1, round(rate * duration_ms / 1000))
    out = np.zeros(total)
    pos = 0
    while pos < total:
        length = int(rate * rng.uniform(0.08, 0.25))
        f0 = rng.uniform(120, 320)
        t = np.arange(min(length, total - pos)) / rate
        voice = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2, 3))
        envelope = np.sin(np.pi * np.arange(len(t)) / max(len(t), 1)) ** 0.5
        out[pos : pos + len(t)] = 0.2 * voice * envelope
        pos += len(t) + int(rate * rng.uniform(0.03, 0.12))
    return bytes(np.clip(np.round(out * 32767), -32768, 32767).astype("<i2").tobytes())


def tone(duration_ms: int = 100, sample_rate: int = 16_000, seed: int = 0) -> Audio:
    """A WAV of speech-like sound (:func:`speechlike`) of the given length, measured as a
    backend would report it."""
    pcm = speechlike(duration_ms, sample_rate, seed)
    return Audio(pcm_to_wav(pcm, sample_rate), "wav", sample_rate, 1, duration_ms)


def spoken(utterance: Utterance, seed: int = 0) -> Audio:
    """Speech-like audio as long as a voice takes over the utterance's text (the middle of
    the quality gate's pace bounds for its language, divided by its speed; at least 100 ms)."""
    low, high = pace_bounds(Thresholds(), utterance.language, utterance.text)
    speed = utterance.params.get("speed", 1.0)
    speed = float(speed) if isinstance(speed, int | float) and speed > 0 else 1.0
    seconds = spoken_length(utterance.text) * math.sqrt(low * high) / speed
    return tone(max(100, round(seconds * 1000)), seed=seed)


class Script:
    """Successive steps; ``gate`` (if set) must be released before each call proceeds."""

    def __init__(self, steps: list[Step] | None = None) -> None:
        self.steps = list(steps or [])
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def next(self) -> None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.steps:
            step = self.steps.pop(0)
            if step is not None:
                raise step


class MemorySink:
    """Keeps what was sent, per topic; ``scripts`` make sends to a topic fail."""

    def __init__(self) -> None:
        self.sent: list[Outbound] = []
        self.scripts: dict[str, Script] = {}

    async def send(self, out: Outbound) -> tuple[int, int]:
        if out.topic in self.scripts:
            await self.scripts[out.topic].next()
        self.sent.append(out)
        return 0, len(self.on(out.topic)) - 1

    def on(self, topic: str) -> list[Outbound]:
        return [s for s in self.sent if s.topic == topic]


class MemoryStore:
    """Objects in a dict; ``script`` makes puts fail."""

    def __init__(self, bucket: str = "memory") -> None:
        self.bucket = bucket
        self.objects: dict[str, tuple[bytes, str, dict[str, str]]] = {}
        self.script = Script()

    async def put(
        self, key: str, data: bytes, content_type: str, metadata: Mapping[str, str]
    ) -> str:
        await self.script.next()
        self.objects[key] = (data, content_type, dict(metadata))
        return f"s3://{self.bucket}/{key}"

    async def exists(self, key: str) -> bool:
        return key in self.objects


class MemoryReferences:
    """Reference audio by URI; an unknown URI is ``InvalidInput`` as for a missing object."""

    def __init__(self, audio: Mapping[str, ReferenceAudio] | None = None) -> None:
        self.audio = dict(audio or {})
        self.script = Script()

    async def load(self, uri: str) -> ReferenceAudio:
        await self.script.next()
        if uri not in self.audio:
            raise InvalidInput(
                f"reference audio {uri} does not exist",
                stage=Stage.VALIDATE,
                error_type="reference_missing",
            )
        return self.audio[uri]


class ScriptedBackend:
    """A backend whose calls follow a script; records every utterance it was given."""

    def __init__(
        self,
        name: str = "scripted",
        steps: list[Step] | None = None,
        *,
        audio: Callable[[Utterance], Audio] = spoken,
        check: Callable[[Utterance], None] = lambda _: None,
        hook: Callable[[Utterance], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self.script = Script(steps)
        self.calls: list[Utterance] = []
        self._audio = audio
        self._check = check
        self._hook = hook
        self.closed = False

    def check(self, utterance: Utterance) -> None:
        self._check(utterance)

    async def synthesize(self, utterance: Utterance) -> Audio:
        self.calls.append(utterance)
        if self._hook is not None:
            await self._hook(utterance)
        await self.script.next()
        return self._audio(utterance)

    async def aclose(self) -> None:
        self.closed = True
