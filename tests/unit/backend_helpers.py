"""What the backend adapter tests share: utterances, loaded references, the fake servers'
surface, and a fixture factory for a running fake."""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import wave
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import pytest

from processor.audio import pcm_to_wav, silence, wav_info
from processor.backends.base import Audio, Backend, ReferenceAudio, Utterance
from processor.errors import InvalidInput, Stage, Transient
from processor.request import Reference, Voice

TEXT = "Hello there, world."
REF_URI = "s3://refs/voice.wav"


class Fake(Protocol):
    """A fake TTS server running in this process (``tests.fakes.*.running_fake``)."""

    @property
    def url(self) -> str: ...

    def stats(self) -> dict[str, object]: ...

    def set(self, **switches: Any) -> None: ...


RunningFake = Callable[..., AbstractAsyncContextManager[Fake]]


def fake_fixture(running_fake: RunningFake, **switches: Any) -> Any:
    """A ``fake`` fixture serving ``running_fake(**switches)`` for one test."""

    @pytest.fixture
    async def fake() -> AsyncIterator[Fake]:
        async with running_fake(**switches) as handle:
            yield handle

    return fake


def backend_fixture(make: Callable[[str], Backend]) -> Any:
    """A ``backend`` fixture: ``make(fake.url)``, closed after the test."""

    @pytest.fixture
    async def backend(fake: Fake) -> AsyncIterator[Backend]:
        async with contextlib.aclosing(make(fake.url)) as made:
            yield made

    return backend


def adapter_fixtures(running_fake: RunningFake, make: Callable[[str], Backend]) -> tuple[Any, Any]:
    """The ``fake`` and ``backend`` fixtures of an adapter's tests: ``make(fake.url)`` talking
    to ``running_fake()``."""
    return fake_fixture(running_fake), backend_fixture(make)


def utterance(text: str = TEXT, **fields: Any) -> Utterance:
    return Utterance(text=text, **fields)


def wav(ms: int, rate: int = 24000) -> bytes:
    """A mono 16-bit WAV of ``ms`` milliseconds of silence."""
    return pcm_to_wav(silence(rate, 1, 2, ms), rate)


#: A clone prompt as the pipeline hands it over: 3 s at 24 kHz.
REF_WAV = wav(3000)


def loaded(uri: str, data: bytes) -> ReferenceAudio:
    """``data`` (a WAV) as the reference loader hands it over."""
    info = wav_info(data)
    return ReferenceAudio(uri, data, info.sample_rate, info.channels, info.duration_ms)


def cloning(
    uri: str,
    data: bytes | None,
    transcript: str | None = None,
    *,
    preset: str | None = None,
    description: str | None = None,
    **fields: Any,
) -> Utterance:
    """An utterance cloning the reference at ``uri``, loaded (``data``) or not (``None``)."""
    voice = Voice(preset=preset, description=description, reference=Reference(uri, transcript))
    return utterance(voice=voice, reference=None if data is None else loaded(uri, data), **fields)


async def failure(
    backend: Backend, said: Utterance | None = None, kind: type[Exception] = Transient
) -> Any:
    """The error ``synthesize`` raises for ``said`` (default: plain text), which is a ``kind``."""
    with pytest.raises(kind) as caught:
        await backend.synthesize(said or utterance())
    return caught.value


async def at_once(backend: Backend, calls: int, said: Utterance | None = None) -> list[object]:
    """``calls`` syntheses of ``said`` (default: plain text) started together: the audio or the
    error of each, in order."""
    return await asyncio.gather(
        *(backend.synthesize(said or utterance()) for _ in range(calls)), return_exceptions=True
    )


async def past_capacity(backend: Backend, fake: Fake) -> list[int | None]:
    """Four calls at once to a fake that serves two at a time, slowly: the HTTP statuses of
    the calls that failed transiently (the fake never held more than two)."""
    fake.set(capacity=2, latency_ms=300)
    failed = [r for r in await at_once(backend, 4) if isinstance(r, Transient)]
    assert fake.stats()["in_flight_max"] == 2
    return [r.http_status for r in failed]


async def refused(backend: Backend, said: Utterance, match: str = "") -> InvalidInput:
    """The ``InvalidInput`` that ``check`` raises for ``said``, and ``synthesize`` too, before
    any I/O."""
    with pytest.raises(InvalidInput, match=match) as checked:
        backend.check(said)
    with pytest.raises(InvalidInput) as synthesized:
        await backend.synthesize(said)
    assert synthesized.value.message == checked.value.message
    assert checked.value.stage is Stage.SYNTHESIZE
    return checked.value


def measured_rate(audio: Audio) -> int:
    """The rate of ``audio``, a mono 16-bit WAV whose header agrees with what was measured."""
    assert (audio.format, audio.channels) == ("wav", 1)
    with wave.open(io.BytesIO(audio.data)) as reader:
        assert (reader.getframerate(), reader.getsampwidth()) == (audio.sample_rate, 2)
        assert abs(reader.getnframes() * 1000 / audio.sample_rate - audio.duration_ms) <= 1
        assert reader.getnframes() > 0
    return audio.sample_rate


def sent(fake: Fake) -> dict[str, Any]:
    """The body of the last request the fake received."""
    body = fake.stats()["last_request"]
    assert isinstance(body, dict)
    return body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
