"""Test doubles that ship with the seams (as httpx ships ``MockTransport``): an in-memory
event sink, audio store, reference loader and a scripted backend. They implement the same
protocols as the real ones, so the pipeline runs on them unchanged, without Kafka or S3.

A *script* is a list of what successive calls do: an exception to raise, or ``None`` to
succeed. When the script runs out, calls succeed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from processor.audio import pcm_to_wav
from processor.backends.base import Audio, ReferenceAudio, Utterance
from processor.errors import InvalidInput, Stage
from processor.kafka.sink import Outbound

Step = BaseException | None


def tone(duration_ms: int = 100, sample_rate: int = 16_000) -> Audio:
    """A WAV of silence of the given length, measured as a backend would report it."""
    frames = sample_rate * duration_ms // 1000
    return Audio(pcm_to_wav(b"\0\0" * frames, sample_rate), "wav", sample_rate, 1, duration_ms)


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
        audio: Callable[[Utterance], Audio] = lambda _: tone(),
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
