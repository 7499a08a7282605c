"""The OpenAI-compatible adapter against the fake speech server, over real sockets."""

from __future__ import annotations

import asyncio
import io
import socket
import wave
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from processor.backends.openai import OpenAIBackend, error_message
from processor.errors import InvalidInput, Permanent, Stage, Systemic, Transient
from processor.request import Reference, Request, Voice
from tests.fakes.openai_server import FakeHandle, running_fake

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def fake() -> AsyncIterator[FakeHandle]:
    async with running_fake() as handle:
        yield handle


@pytest.fixture
async def backend(fake: FakeHandle) -> AsyncIterator[OpenAIBackend]:
    backend = OpenAIBackend("qwen", fake.url, model="qwen3-tts", default_voice="vivian")
    yield backend
    await backend.aclose()


def request(text: str = "Hello there, world.", **fields: Any) -> Request:
    return Request(request_id="r-1", text=text, **fields)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_success_returns_measured_wav_and_sends_the_fields(
    backend: OpenAIBackend, fake: FakeHandle
) -> None:
    voice = Voice(preset="serena", description="a calm narrator")
    audio = await backend.synthesize(request(voice=voice, params={"speed": 1.25}))

    assert audio.format == "wav"
    assert (audio.sample_rate, audio.channels) == (24000, 1)
    assert audio.duration_ms > 0
    with wave.open(io.BytesIO(audio.data)) as reader:
        assert abs(reader.getnframes() / 24 - audio.duration_ms) <= 1
    assert fake.stats()["last_request"] == {
        "model": "qwen3-tts",
        "input": "Hello there, world.",
        "voice": "serena",
        "instructions": "a calm narrator",
        "response_format": "wav",
        "speed": 1.25,
    }
    assert fake.stats()["last_authorization"] is None


async def test_defaults_voice_and_omits_unset_fields(
    backend: OpenAIBackend, fake: FakeHandle
) -> None:
    await backend.synthesize(request())

    sent = fake.stats()["last_request"]
    assert isinstance(sent, dict)
    assert sent["voice"] == "vivian"
    assert "instructions" not in sent
    assert "speed" not in sent


async def test_longer_text_gives_longer_audio(backend: OpenAIBackend) -> None:
    short = await backend.synthesize(request("Hi."))
    long = await backend.synthesize(request("Hi. " * 40))

    assert long.duration_ms > short.duration_ms


async def test_pcm_is_measured_at_the_documented_rate(backend: OpenAIBackend) -> None:
    audio = await backend.synthesize(request(format="pcm"))

    assert (audio.format, audio.sample_rate, audio.channels) == ("pcm", 24000, 1)
    assert abs(len(audio.data) / 48 - audio.duration_ms) <= 1
    assert not audio.data.startswith(b"RIFF")


async def test_base_url_with_v1_suffix_is_not_doubled(fake: FakeHandle) -> None:
    backend = OpenAIBackend("kokoro", fake.url + "/v1/")
    try:
        audio = await backend.synthesize(request())
    finally:
        await backend.aclose()

    assert audio.duration_ms > 0


async def test_503_is_transient_with_its_status(backend: OpenAIBackend, fake: FakeHandle) -> None:
    fake.set(fail_first_n=1)

    with pytest.raises(Transient) as caught:
        await backend.synthesize(request())

    assert caught.value.http_status == 503
    assert caught.value.error_type == "http_503"
    assert caught.value.stage is Stage.SYNTHESIZE
    assert "model is loading" in caught.value.message
    assert (await backend.synthesize(request())).duration_ms > 0  # recovered


async def test_429_carries_retry_after(backend: OpenAIBackend, fake: FakeHandle) -> None:
    fake.set(capacity=0)

    with pytest.raises(Transient) as caught:
        await backend.synthesize(request())

    assert caught.value.http_status == 429
    assert caught.value.retry_after == 1.0


@pytest.mark.parametrize("status", [400, 422])
async def test_request_rejections_are_permanent_with_the_server_message(
    backend: OpenAIBackend, fake: FakeHandle, status: int
) -> None:
    fake.set(fail_status=status)

    with pytest.raises(Permanent) as caught:
        await backend.synthesize(request())

    assert not isinstance(caught.value, InvalidInput)
    assert caught.value.http_status == status
    assert f"fake failure {status}" in caught.value.message


async def test_server_validation_message_reaches_the_error(backend: OpenAIBackend) -> None:
    with pytest.raises(Permanent) as caught:
        await backend.synthesize(request(params={"speed": 9.0}))

    assert caught.value.http_status == 400
    assert "speed" in caught.value.message


async def test_truncated_body_is_transient(backend: OpenAIBackend, fake: FakeHandle) -> None:
    fake.set(truncate=True)

    with pytest.raises(Transient) as caught:
        await backend.synthesize(request())

    assert caught.value.error_type == "truncated"
    assert "truncated" in caught.value.message


async def test_empty_body_is_transient(backend: OpenAIBackend, fake: FakeHandle) -> None:
    fake.set(empty_body=True)

    with pytest.raises(Transient) as caught:
        await backend.synthesize(request())

    assert caught.value.error_type == "empty_body"
    assert caught.value.http_status == 200


async def test_a_body_that_is_not_audio_is_transient(
    backend: OpenAIBackend, fake: FakeHandle
) -> None:
    fake.set(corrupt=True)

    with pytest.raises(Transient) as caught:
        await backend.synthesize(request())

    assert caught.value.error_type == "malformed_audio"
    assert "truncated/malformed audio" in caught.value.message


async def test_streamed_wav_with_placeholder_sizes_is_repaired(
    backend: OpenAIBackend, fake: FakeHandle
) -> None:
    whole = await backend.synthesize(request())
    fake.set(streamed_wav=True)

    streamed = await backend.synthesize(request())

    assert streamed == whole
    with wave.open(io.BytesIO(streamed.data)) as reader:
        assert reader.getnframes() > 0


async def test_connection_refused_is_transient_connect() -> None:
    backend = OpenAIBackend("down", f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(Transient) as caught:
            await backend.synthesize(request())
    finally:
        await backend.aclose()

    assert caught.value.error_type == "connect"
    assert caught.value.http_status is None


async def test_slow_server_is_transient_timeout(fake: FakeHandle) -> None:
    fake.set(latency_ms=2000)
    backend = OpenAIBackend("slow", fake.url, timeout=httpx.Timeout(0.2))
    try:
        with pytest.raises(Transient) as caught:
            await backend.synthesize(request())
    finally:
        await backend.aclose()

    assert caught.value.error_type == "timeout"


async def test_reference_audio_is_invalid_input_and_sends_nothing(
    backend: OpenAIBackend, fake: FakeHandle
) -> None:
    voice = Voice(reference=Reference(audio_uri="s3://bucket/ref.wav"))

    with pytest.raises(InvalidInput, match="cannot clone"):
        await backend.synthesize(request(voice=voice))

    assert fake.stats()["requests"] == 0


@pytest.mark.parametrize("fmt", ["mp3", "flac", "opus"])
async def test_compressed_formats_are_refused_for_now(backend: OpenAIBackend, fmt: str) -> None:
    with pytest.raises(InvalidInput, match="later release"):
        await backend.synthesize(request(format=fmt))


async def test_api_key_is_sent_as_bearer_and_kept_out_of_repr(fake: FakeHandle) -> None:
    fake.set(api_key="sk-test-123")
    backend = OpenAIBackend("openai", fake.url, api_key="sk-test-123")
    try:
        await backend.synthesize(request())
    finally:
        await backend.aclose()

    assert fake.stats()["last_authorization"] == "Bearer sk-test-123"
    assert "sk-test" not in repr(backend)


async def test_wrong_api_key_is_systemic(fake: FakeHandle) -> None:
    fake.set(api_key="right")
    backend = OpenAIBackend("openai", fake.url, api_key="wrong")
    try:
        with pytest.raises(Systemic) as caught:
            await backend.synthesize(request())
    finally:
        await backend.aclose()

    assert caught.value.http_status == 401


async def test_a_given_client_is_used_and_left_open(fake: FakeHandle) -> None:
    async with httpx.AsyncClient() as client:
        backend = OpenAIBackend("shared", fake.url, client=client)
        await backend.synthesize(request())
        await backend.aclose()

        assert not client.is_closed


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error": {"message": "Input is empty", "type": "invalid"}}', "Input is empty"),
        (b'{"detail": "Voice not found"}', "Voice not found"),
        (
            b'{"detail": [{"loc": ["body", "input"], "msg": "Field required"}]}',
            "input: Field required",
        ),
        (b'{"statusCode": 500, "message": "No audio generated"}', "No audio generated"),
        (b"Internal Server Error", "Internal Server Error"),
    ],
)
def test_error_bodies_become_short_messages(body: bytes, message: str) -> None:
    assert error_message(body) == message


def test_error_messages_are_capped() -> None:
    assert len(error_message(b'{"detail": "' + b"x" * 5000 + b'"}')) <= 300


async def test_fake_capacity_rejects_the_excess_with_429(
    backend: OpenAIBackend, fake: FakeHandle
) -> None:
    fake.set(capacity=2, latency_ms=300)

    results = await asyncio.gather(
        *(backend.synthesize(request()) for _ in range(4)), return_exceptions=True
    )

    rejected = [r for r in results if isinstance(r, Transient)]
    assert len(rejected) == 2
    assert all(r.http_status == 429 for r in rejected)
    assert fake.stats()["in_flight_max"] == 2
    assert fake.stats()["statuses"] == {"200": 2, "429": 2}


async def test_fake_is_driven_over_http(fake: FakeHandle) -> None:
    async with httpx.AsyncClient(base_url=fake.url) as client:
        changed = await client.post("/control", json={"fail_status": 500, "latency_ms": 5})
        refused = await client.post("/control", json={"no_such_switch": 1})
        stats = (await client.get("/stats")).json()

    assert changed.status_code == 200
    assert refused.status_code == 400
    assert stats["switches"]["fail_status"] == 500
    assert stats["switches"]["latency_ms"] == 5
