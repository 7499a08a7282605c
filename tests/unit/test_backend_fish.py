"""The Fish Speech adapter against the fake Fish API server, over real sockets."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import socket
import subprocess
import sys
import time
import wave
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from processor.audio import wav_info
from processor.backends.base import ReferenceAudio
from processor.backends.fish import FishSpeechBackend, error_for_response, error_message
from processor.errors import InvalidInput, Permanent, Stage, Systemic, Transient
from processor.request import Reference, Request, Voice
from tests.fakes.fish_server import FakeHandle, running_fake, tone, wav_bytes

pytestmark = pytest.mark.timeout(30)

REF_URI = "s3://voices/narrator.wav"
REF_WAV = wav_bytes(tone(3000, 24000, 400), 24000)


class DictReferences:
    """Reference audio from a dict, checked as the store-backed loader hands it over."""

    def __init__(self, clips: dict[str, bytes]) -> None:
        self.clips = clips
        self.loaded: list[str] = []

    async def load(self, uri: str) -> ReferenceAudio:
        self.loaded.append(uri)
        wav = self.clips.get(uri)
        if wav is None:
            raise InvalidInput(f"{uri}: no such object", stage=Stage.SYNTHESIZE)
        info = wav_info(wav)
        return ReferenceAudio(uri, wav, info.sample_rate, info.channels, info.duration_ms)


@pytest.fixture
async def fake() -> AsyncIterator[FakeHandle]:
    async with running_fake() as handle:
        yield handle


@pytest.fixture
def references() -> DictReferences:
    return DictReferences({REF_URI: REF_WAV})


@pytest.fixture
async def backend(fake: FakeHandle, references: DictReferences) -> AsyncIterator[FishSpeechBackend]:
    backend = FishSpeechBackend("fish", fake.url, references=references)
    yield backend
    await backend.aclose()


def request(text: str = "Hello there, world.", **fields: Any) -> Request:
    return Request(request_id="r-1", text=text, **fields)


def sent(fake: FakeHandle) -> dict[str, Any]:
    body = fake.stats()["last_request"]
    assert isinstance(body, dict)
    return body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- request shapes ---------------------------------------------------------------------


async def test_plain_text_is_json_and_returns_a_44k_wav(
    backend: FishSpeechBackend, fake: FakeHandle
) -> None:
    audio = await backend.synthesize(request())

    assert (audio.format, audio.sample_rate, audio.channels) == ("wav", 44100, 1)
    with wave.open(io.BytesIO(audio.data)) as reader:
        assert reader.getframerate() == 44100
        assert reader.getnframes() > 0
        assert abs(reader.getnframes() / 44.1 - audio.duration_ms) <= 1
    assert fake.stats()["last_content_type"] == "application/json"
    assert sent(fake) == {
        "text": "Hello there, world.",
        "format": "wav",
        "chunk_length": 200,
        "normalize": True,
        "streaming": False,
        "use_memory_cache": "off",
    }
    assert fake.stats()["last_authorization"] is None


async def test_preset_is_a_cached_reference_id(
    backend: FishSpeechBackend, fake: FakeHandle
) -> None:
    await backend.synthesize(request(voice=Voice(preset="narrator-01")))

    assert sent(fake)["reference_id"] == "narrator-01"
    assert sent(fake)["use_memory_cache"] == "on"
    assert "references" not in sent(fake)


async def test_seed_and_sampling_params_are_sent(
    backend: FishSpeechBackend, fake: FakeHandle
) -> None:
    params = {
        "temperature": 0.6,
        "top_p": 0.9,
        "repetition_penalty": 1,
        "max_new_tokens": 900.0,
        "chunk_length": 300,
        "speed": 1.5,  # the self-hosted server has no speed: not sent
    }
    await backend.synthesize(request(seed=42, params=params))

    body = sent(fake)
    assert body["seed"] == 42
    assert (body["temperature"], body["top_p"], body["repetition_penalty"]) == (0.6, 0.9, 1.0)
    assert (body["max_new_tokens"], body["chunk_length"]) == (900, 300)
    assert "speed" not in body


async def test_constructor_chunk_length_is_the_default(fake: FakeHandle) -> None:
    backend = FishSpeechBackend("fish", fake.url, chunk_length=400)
    try:
        await backend.synthesize(request())
    finally:
        await backend.aclose()

    assert sent(fake)["chunk_length"] == 400


async def test_reference_audio_goes_inline_as_msgpack(
    backend: FishSpeechBackend, fake: FakeHandle, references: DictReferences
) -> None:
    voice = Voice(reference=Reference(REF_URI, text="The transcript of the clip."))

    audio = await backend.synthesize(request(voice=voice))

    assert audio.duration_ms > 0
    assert references.loaded == [REF_URI]
    assert fake.stats()["last_content_type"] == "application/msgpack"
    body = sent(fake)
    assert body["references"] == [
        {
            "audio": {"bytes": len(REF_WAV), "sha256": hashlib.sha256(REF_WAV).hexdigest()},
            "text": "The transcript of the clip.",
        }
    ]
    assert body["use_memory_cache"] == "off"
    assert "reference_id" not in body


async def test_longer_text_gives_longer_audio(backend: FishSpeechBackend) -> None:
    short = await backend.synthesize(request("Hi."))
    long = await backend.synthesize(request("Hi. " * 40))

    assert long.duration_ms > short.duration_ms


async def test_request_format_does_not_change_what_is_asked(
    backend: FishSpeechBackend, fake: FakeHandle
) -> None:
    audio = await backend.synthesize(request(format="mp3", sample_rate=16000))

    assert sent(fake)["format"] == "wav"
    assert (audio.format, audio.sample_rate) == ("wav", 44100)


async def test_base_url_with_v1_suffix_is_not_doubled(fake: FakeHandle) -> None:
    backend = FishSpeechBackend("fish", fake.url + "/v1/")
    try:
        assert (await backend.synthesize(request())).duration_ms > 0
    finally:
        await backend.aclose()


# --- capability errors (nothing sent) ---------------------------------------------------


async def test_voice_design_is_invalid_input(backend: FishSpeechBackend, fake: FakeHandle) -> None:
    with pytest.raises(InvalidInput) as caught:
        await backend.synthesize(request(voice=Voice(description="a calm narrator")))

    assert caught.value.message == (
        "fish speech has no voice design; use a reference_id or reference audio"
    )
    assert caught.value.stage is Stage.SYNTHESIZE
    assert fake.stats()["requests"] == 0


@pytest.mark.parametrize("text", [None, "   "])
async def test_reference_without_transcript_is_invalid_input(
    backend: FishSpeechBackend, fake: FakeHandle, references: DictReferences, text: str | None
) -> None:
    voice = Voice(reference=Reference(REF_URI, text=text))

    with pytest.raises(InvalidInput, match="transcript"):
        await backend.synthesize(request(voice=voice))

    assert references.loaded == []
    assert fake.stats()["requests"] == 0


async def test_preset_and_reference_together_are_invalid_input(
    backend: FishSpeechBackend,
) -> None:
    voice = Voice(preset="narrator", reference=Reference(REF_URI, text="words"))

    with pytest.raises(InvalidInput, match="not both"):
        await backend.synthesize(request(voice=voice))


async def test_reference_without_a_loader_is_invalid_input(fake: FakeHandle) -> None:
    backend = FishSpeechBackend("fish", fake.url)
    try:
        with pytest.raises(InvalidInput, match="no reference loader"):
            await backend.synthesize(request(voice=Voice(reference=Reference(REF_URI, "words"))))
    finally:
        await backend.aclose()

    assert fake.stats()["requests"] == 0


async def test_missing_reference_object_propagates_the_loaders_error(
    backend: FishSpeechBackend, fake: FakeHandle
) -> None:
    voice = Voice(reference=Reference("s3://voices/missing.wav", text="words"))

    with pytest.raises(InvalidInput, match="no such object"):
        await backend.synthesize(request(voice=voice))

    assert fake.stats()["requests"] == 0


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"top_p": "high"}, "params.top_p"),
        ({"temperature": True}, "params.temperature"),
        ({"max_new_tokens": 10.5}, "params.max_new_tokens"),
        ({"chunk_length": "200"}, "params.chunk_length"),
    ],
)
async def test_ill_typed_params_are_invalid_input(
    backend: FishSpeechBackend, fake: FakeHandle, params: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidInput, match=field):
        await backend.synthesize(request(params=params))

    assert fake.stats()["requests"] == 0


# --- server errors ----------------------------------------------------------------------


async def test_out_of_range_param_is_a_permanent_422_naming_the_field(
    backend: FishSpeechBackend,
) -> None:
    with pytest.raises(Permanent) as caught:
        await backend.synthesize(request(params={"top_p": 5}))

    assert not isinstance(caught.value, InvalidInput)
    assert caught.value.http_status == 422
    assert "top_p" in caught.value.message
    assert "between 0.1 and 1.0" in caught.value.message


async def test_text_over_the_servers_max_is_permanent(
    backend: FishSpeechBackend, fake: FakeHandle
) -> None:
    fake.set(max_text_length=10)

    with pytest.raises(Permanent) as caught:
        await backend.synthesize(request("This text is longer than ten characters."))

    assert caught.value.http_status == 400
    assert caught.value.message == "HTTP 400: Text is too long, max length is 10"


async def test_prompt_too_long_is_a_permanent_500(
    backend: FishSpeechBackend, fake: FakeHandle
) -> None:
    fake.set(max_prompt_chars=5)

    with pytest.raises(Permanent) as caught:
        await backend.synthesize(request())

    assert caught.value.http_status == 500
    assert "Prompt is too long" in caught.value.message


@pytest.mark.parametrize(
    "message", ["Failed to generate speech", "No audio generated, please check the input text."]
)
async def test_generation_failures_are_transient_500s(
    backend: FishSpeechBackend, fake: FakeHandle, message: str
) -> None:
    fake.set(fail_status=500, fail_message=message)

    with pytest.raises(Transient) as caught:
        await backend.synthesize(request())

    assert caught.value.http_status == 500
    assert caught.value.error_type == "http_500"
    assert caught.value.message == f"HTTP 500: {message}"


async def test_fail_first_n_recovers(backend: FishSpeechBackend, fake: FakeHandle) -> None:
    fake.set(fail_first_n=1)

    with pytest.raises(Transient, match="Failed to generate speech"):
        await backend.synthesize(request())
    assert (await backend.synthesize(request())).duration_ms > 0


async def test_wrong_api_key_is_systemic(fake: FakeHandle) -> None:
    fake.set(api_key="right")
    backend = FishSpeechBackend("fish", fake.url, api_key="wrong")
    try:
        with pytest.raises(Systemic) as caught:
            await backend.synthesize(request())
    finally:
        await backend.aclose()

    assert caught.value.http_status == 401
    assert "Invalid token" in caught.value.message
    assert "wrong" not in caught.value.message


async def test_api_key_is_sent_as_bearer_and_kept_out_of_repr(fake: FakeHandle) -> None:
    fake.set(api_key="sk-fish-123")
    backend = FishSpeechBackend("fish", fake.url, api_key="sk-fish-123")
    try:
        await backend.synthesize(request())
        assert await backend.ready()
    finally:
        await backend.aclose()

    assert fake.stats()["last_authorization"] == "Bearer sk-fish-123"
    assert "sk-fish" not in repr(backend)


async def test_hosted_out_of_credits_is_systemic(
    backend: FishSpeechBackend, fake: FakeHandle
) -> None:
    fake.set(hosted_errors=True, fail_status=402, fail_message="Insufficient balance")

    with pytest.raises(Systemic) as caught:
        await backend.synthesize(request())

    assert caught.value.http_status == 402
    assert caught.value.message == "HTTP 402: Insufficient balance"


@pytest.mark.parametrize("status", [429, 503])
async def test_hosted_throttling_is_transient_with_retry_after(
    backend: FishSpeechBackend, fake: FakeHandle, status: int
) -> None:
    fake.set(hosted_errors=True, fail_status=status, fail_message="slow down", retry_after="7")

    with pytest.raises(Transient) as caught:
        await backend.synthesize(request())

    assert caught.value.http_status == status
    assert caught.value.retry_after == 7.0
    assert "slow down" in caught.value.message


async def test_truncated_body_is_transient(backend: FishSpeechBackend, fake: FakeHandle) -> None:
    fake.set(truncate=True)

    with pytest.raises(Transient) as caught:
        await backend.synthesize(request())

    assert caught.value.error_type == "truncated"


async def test_empty_body_is_transient(backend: FishSpeechBackend, fake: FakeHandle) -> None:
    fake.set(empty_body=True)

    with pytest.raises(Transient) as caught:
        await backend.synthesize(request())

    assert (caught.value.error_type, caught.value.http_status) == ("empty_body", 200)


async def test_a_body_that_is_not_audio_is_transient(
    backend: FishSpeechBackend, fake: FakeHandle
) -> None:
    fake.set(corrupt=True)

    with pytest.raises(Transient) as caught:
        await backend.synthesize(request())

    assert caught.value.error_type == "malformed_audio"


async def test_connection_refused_is_transient_connect() -> None:
    backend = FishSpeechBackend("down", f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(Transient) as caught:
            await backend.synthesize(request())
        assert not await backend.ready()
    finally:
        await backend.aclose()

    assert caught.value.error_type == "connect"
    assert caught.value.http_status is None


async def test_slow_server_is_transient_timeout(fake: FakeHandle) -> None:
    fake.set(latency_ms=2000)
    backend = FishSpeechBackend("slow", fake.url, timeout=httpx.Timeout(0.2))
    try:
        with pytest.raises(Transient) as caught:
            await backend.synthesize(request())
    finally:
        await backend.aclose()

    assert caught.value.error_type == "timeout"


# --- health, queueing, the fake itself --------------------------------------------------


async def test_ready_follows_health_and_auth(backend: FishSpeechBackend, fake: FakeHandle) -> None:
    assert await backend.ready()

    fake.set(api_key="secret")

    assert not await backend.ready()


async def test_one_generation_at_a_time_and_the_queue_overflows_with_500(
    backend: FishSpeechBackend, fake: FakeHandle
) -> None:
    fake.set(latency_ms=150, queue_limit=1)
    started = time.monotonic()

    async def timed() -> float | BaseException:
        try:
            await backend.synthesize(request())
        except Transient as exc:
            return exc
        return time.monotonic() - started

    results = await asyncio.gather(*(timed() for _ in range(3)))

    failures = [r for r in results if isinstance(r, Transient)]
    durations = sorted(r for r in results if isinstance(r, float))
    assert len(failures) == 1
    assert failures[0].http_status == 500
    assert "Failed to generate speech" in failures[0].message
    assert durations[1] - durations[0] >= 0.12  # the second waited for the first
    stats = fake.stats()
    assert stats["generations"] == 2
    assert stats["queued_max"] == 1
    assert stats["statuses"] == {"200": 2, "500": 1}


async def test_fake_refuses_other_content_types_with_415(fake: FakeHandle) -> None:
    async with httpx.AsyncClient(base_url=fake.url) as client:
        response = await client.post(
            "/v1/tts", content=b"text=hi", headers={"Content-Type": "text/plain"}
        )

    assert response.status_code == 415
    assert "application/msgpack" in response.headers["Accept"]
    assert error_message(response.content) == "Unsupported Media Type"
    error = error_for_response(415, error_message(response.content), None)
    assert isinstance(error, Permanent)


async def test_fake_takes_json_references_as_base64(fake: FakeHandle) -> None:
    body = {
        "text": "hi",
        "references": [{"audio": base64.b64encode(REF_WAV).decode(), "text": "t"}],
    }
    async with httpx.AsyncClient(base_url=fake.url) as client:
        response = await client.post("/v1/tts", json=body)

    assert response.status_code == 200
    assert sent(fake)["references"][0]["audio"]["bytes"] == len(REF_WAV)


async def test_fake_is_driven_over_http(fake: FakeHandle) -> None:
    async with httpx.AsyncClient(base_url=fake.url) as client:
        changed = await client.post("/control", json={"queue_limit": 3, "latency_ms": 5})
        refused = await client.post("/control", json={"no_such_switch": 1})
        health = await client.get("/v1/health")
        stats = (await client.get("/stats")).json()

    assert changed.status_code == 200
    assert refused.status_code == 400
    assert health.json() == {"status": "ok"}
    assert stats["switches"]["queue_limit"] == 3


def test_fake_runs_as_a_process() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.fish_server", "--port", "0", "--max-text-length", "9"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("LISTENING ")
        url = f"http://127.0.0.1:{int(line.split()[1])}"
        response = httpx.post(f"{url}/v1/tts", json={"text": "longer than nine"})
        assert response.status_code == 400
        assert response.json()["message"] == "Text is too long, max length is 9"
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


# --- pure parts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"statusCode": 500, "message": "No audio generated", "error": "Internal Server Error"},
            "No audio generated",
        ),
        ({"statusCode": 401, "message": None, "error": "Unauthorized"}, "Unauthorized"),
        ({"message": "Insufficient balance", "status": 402}, "Insufficient balance"),
        (
            [{"type": "missing", "loc": ["text"], "msg": "Field required", "in": "body"}],
            "text: Field required",
        ),
        (
            {"statusCode": 422, "message": [{"loc": ["top_p"], "msg": "too big"}], "error": "x"},
            "top_p: too big",
        ),
        ({"error": {"message": "openai shaped"}}, "openai shaped"),
    ],
)
def test_error_bodies_become_short_messages(body: object, message: str) -> None:
    assert error_message(json.dumps(body).encode()) == message


def test_plain_text_and_huge_error_bodies() -> None:
    assert error_message(b"Internal Server Error") == "Internal Server Error"
    huge = json.dumps({"statusCode": 500, "message": "x" * 5000, "error": "e"}).encode()
    assert len(error_message(huge)) <= 300


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        (500, "Prompt is too long: 9000 > 8192", Permanent),
        (500, "Failed to generate speech", Transient),
        (402, "out of credits", Systemic),
        (401, "Invalid token", Systemic),
        (400, "Text is too long, max length is 10", Permanent),
        (422, "top_p: too big", Permanent),
        (503, "busy", Transient),
    ],
)
def test_status_and_message_pick_the_error_class(
    status: int, message: str, kind: type[Exception]
) -> None:
    error = error_for_response(status, message, None)

    assert type(error) is kind
    assert error.http_status == status
    assert error.error_type == f"http_{status}"
    assert error.stage is Stage.SYNTHESIZE
