"""The one seam every TTS backend implements."""

from __future__ import annotations

import dataclasses
from typing import Protocol

from processor.request import Request

#: Content-Type per audio format (contract: "Content-Type set per format").
CONTENT_TYPES = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "opus": "audio/ogg",
    # Raw signed 16-bit little-endian; audio/L16 would promise big-endian (RFC 2586).
    "pcm": "application/octet-stream",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Audio:
    """Synthesized audio, with its properties measured from the bytes."""

    data: bytes
    format: str
    sample_rate: int
    channels: int
    duration_ms: int


class Backend(Protocol):
    """A TTS server family. ``synthesize`` raises only ``processor.errors`` classes."""

    name: str

    async def synthesize(self, request: Request) -> Audio:
        """One synthesis call (no retries here: the pipeline owns retries)."""
        ...

    async def aclose(self) -> None:
        """Release connections and subprocesses."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class ReferenceAudio:
    """A clone prompt read from the store: checked, as a PCM WAV."""

    uri: str
    wav: bytes
    sample_rate: int
    channels: int
    duration_ms: int


class ReferenceLoader(Protocol):
    """Reads reference audio named by ``s3://bucket/key``.

    Raises ``InvalidInput`` when the bucket is not allowed, the object is missing, or the audio
    is not usable (not a PCM WAV, too long, too low a rate); ``Systemic`` when the store is down.
    """

    async def load(self, uri: str) -> ReferenceAudio: ...
