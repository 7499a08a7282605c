"""The one seam every TTS backend implements, and the few rules every adapter shares.

The pipeline hands an adapter an ``Utterance`` (what to speak and how to voice it), never the
whole request: format, sample rate, deadline and metadata are the pipeline's business. It calls
``check`` once per request (pure: no I/O), loads the reference audio the voice names, and then
``synthesize`` once per chunk, with the reference already loaded.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Protocol

from processor.audio import fix_streamed_wav, wav_info
from processor.errors import InvalidInput, Stage, Transient
from processor.request import Request, Voice

#: Content-Type per audio format (contract: "Content-Type set per format").
CONTENT_TYPES = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "opus": "audio/ogg",
    # Raw signed 16-bit little-endian; audio/L16 would promise big-endian (RFC 2586).
    "pcm": "application/octet-stream",
}

_NO_PARAMS: Mapping[str, object] = MappingProxyType({})
_DEFAULT_VOICE = Voice()


@dataclasses.dataclass(frozen=True, slots=True)
class Audio:
    """Synthesized audio, with its properties measured from the bytes."""

    data: bytes
    format: str
    sample_rate: int
    channels: int
    duration_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class ReferenceAudio:
    """A clone prompt read from the store: checked, as a PCM WAV."""

    uri: str
    wav: bytes
    sample_rate: int
    channels: int
    duration_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class Utterance:
    """What a backend must speak: one chunk's text and how to voice it."""

    text: str
    voice: Voice = _DEFAULT_VOICE
    language: str = "auto"
    seed: int | None = None
    # default_factory: on 3.11 a mappingproxy is unhashable, which dataclasses reject as a default
    params: Mapping[str, object] = dataclasses.field(default_factory=lambda: _NO_PARAMS)
    #: ``voice.reference``'s audio, loaded by the pipeline before the backend's gate.
    reference: ReferenceAudio | None = None


def utterance_of(
    request: Request, text: str | None = None, *, reference: ReferenceAudio | None = None
) -> Utterance:
    """The part of ``request`` a backend needs; ``text`` (one chunk) defaults to the whole."""
    return Utterance(
        text=request.text if text is None else text,
        voice=request.voice,
        language=request.language,
        seed=request.seed,
        params=request.params,
        reference=reference,
    )


class Backend(Protocol):
    """A TTS server family. Its methods raise only ``processor.errors`` classes."""

    name: str

    def check(self, utterance: Utterance) -> None:
        """Raise ``InvalidInput`` for what this backend cannot do (pure, no I/O; called once
        per request before the reference is loaded)."""
        ...

    async def synthesize(self, utterance: Utterance) -> Audio:
        """One synthesis call, WAV at the backend's own rate (no retries here: the pipeline
        owns retries)."""
        ...

    async def aclose(self) -> None:
        """Release connections and subprocesses."""
        ...


class ReferenceLoader(Protocol):
    """Reads reference audio named by ``s3://bucket/key``.

    Raises ``InvalidInput`` when the bucket is not allowed, the object is missing, or the audio
    is not usable (not a PCM WAV, too long, too low a rate); ``Systemic`` when the store is down.
    """

    async def load(self, uri: str) -> ReferenceAudio: ...


# -- shared by the adapters ------------------------------------------------------------------


def invalid(message: str) -> InvalidInput:
    """A request this backend cannot serve."""
    return InvalidInput(message, stage=Stage.SYNTHESIZE)


def transient(message: str, error_type: str, http_status: int | None = None) -> Transient:
    """A call that failed this time."""
    return Transient(
        message, stage=Stage.SYNTHESIZE, http_status=http_status, error_type=error_type
    )


def measure(
    data: bytes, *, http_status: int | None = None, silent: str = "malformed_audio"
) -> Audio:
    """WAV audio from a backend's answer, or ``Transient`` when it is empty (``empty_body``),
    not a WAV (``malformed_audio``) or holds no frames (``silent``)."""
    if not data:
        raise transient("empty body: the server sent no audio", "empty_body", http_status)
    try:
        # Servers that stream wav write placeholder sizes, as espeak-ng does.
        wav = fix_streamed_wav(data)
        info = wav_info(wav)
    except ValueError as exc:
        raise transient(
            f"truncated/malformed audio: {exc}", "malformed_audio", http_status
        ) from exc
    if info.frames == 0:
        raise transient("truncated/malformed audio: no frames", silent, http_status)
    return Audio(wav, "wav", info.sample_rate, info.channels, info.duration_ms)


def reference_audio(utterance: Utterance) -> ReferenceAudio:
    """The loaded audio of ``voice.reference`` (ask only when the voice names one);
    ``InvalidInput`` when nobody loaded it."""
    if utterance.reference is None:
        named = utterance.voice.reference
        uri = "voice.reference" if named is None else named.audio_uri
        raise invalid(f"no reference loader is configured: cannot read {uri}")
    return utterance.reference


def finite(value: object) -> float | None:
    """The value as a finite float, or ``None`` (booleans are not numbers here)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return number if math.isfinite(number) else None


def number(value: object, field: str) -> float:
    """A finite number for ``field``, else ``InvalidInput`` naming it."""
    result = finite(value)
    if result is None:
        raise invalid(f"{field} must be a finite number")
    return result


def integer(value: object, field: str) -> int:
    """A whole number (``900.0`` too) for ``field``, else ``InvalidInput`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(f"{field} must be an integer")
    if isinstance(value, float) and not value.is_integer():
        raise invalid(f"{field} must be an integer")
    return int(value)
