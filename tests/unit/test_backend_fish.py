"""The Fish Speech adapter against the fake Fish API server, over real sockets (what every HTTP
adapter shares is in test_backend_http.py)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import time

import httpx
import pytest

from processor.backends.fish import FishSpeechBackend, error_for_response, error_message
from processor.errors import InvalidInput, Permanent, Systemic, Transient
from processor.request import Reference, Voice
from tests.fakes.fish_server import running_fake
from tests.unit.backend_helpers import (
    REF_URI,
    REF_WAV,
    Fake,
    adapter_fixtures,
    cloning,
    failure,
    measured_rate,
    refused,
    sent,
    utterance,
)

pytestmark = pytest.mark.timeout(30)

fake, backend = adapter_fixtures(running_fake, lambda url: FishSpeechBackend("fish", url))


# --- request shapes ---------------------------------------------------------------------


async def test_plain_text_is_json_and_returns_a_44k_wav(
    backend: FishSpeechBackend, fake: Fake
) -> None:
    audio = await backend.synthesize(utterance(language="de"))

    assert measured_rate(audio) == 44100
    assert fake.stats()["last_content_type"] == "application/json"
    assert sent(fake) == {
        "text": "Hello there, world.",
        "format": "wav",
        "chunk_length": 200,
        "normalize": True,
        "streaming": False,
        "use_memory_cache": "off",
    }


async def test_preset_is_a_cached_reference_id(backend: FishSpeechBackend, fake: Fake) -> None:
    await backend.synthesize(utterance(voice=Voice(preset="narrator-01")))

    assert (sent(fake)["reference_id"], sent(fake)["use_memory_cache"]) == ("narrator-01", "on")
    assert "references" not in sent(fake)


async def test_seed_and_sampling_params_are_sent(backend: FishSpeechBackend, fake: Fake) -> None:
    params = {
        "temperature": 0.6,
        "top_p": 0.9,
        "repetition_penalty": 1,
        "max_new_tokens": 900.0,
        "chunk_length": 300,
        "speed": 1.5,  # the self-hosted server has no speed: not sent
    }
    await backend.synthesize(utterance(seed=42, params=params))

    body = sent(fake)
    assert body["seed"] == 42
    assert (body["temperature"], body["top_p"], body["repetition_penalty"]) == (0.6, 0.9, 1.0)
    assert (body["max_new_tokens"], body["chunk_length"]) == (900, 300)
    assert "speed" not in body


async def test_constructor_chunk_length_is_the_default(fake: Fake) -> None:
    async with contextlib.aclosing(FishSpeechBackend("fish", fake.url, chunk_length=400)) as fish:
        await fish.synthesize(utterance())

    assert sent(fake)["chunk_length"] == 400


async def test_reference_audio_goes_inline_as_msgpack(
    backend: FishSpeechBackend, fake: Fake
) -> None:
    audio = await backend.synthesize(cloning(REF_URI, REF_WAV, "The transcript of the clip."))

    assert audio.duration_ms > 0
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


# --- what Fish cannot do: InvalidInput from check, before any I/O ---------------------------


@pytest.mark.parametrize(
    ("voice", "message"),
    [
        (Voice(description="a calm narrator"), "fish speech has no voice design"),
        (Voice(reference=Reference(REF_URI)), "transcript"),
        (Voice(reference=Reference(REF_URI, "   ")), "transcript"),
        (Voice(preset="narrator", reference=Reference(REF_URI, "words")), "not both"),
    ],
)
async def test_a_voice_fish_cannot_do_is_invalid_input(
    backend: FishSpeechBackend, fake: Fake, voice: Voice, message: str
) -> None:
    await refused(backend, utterance(voice=voice), message)

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
async def test_ill_typed_params_are_invalid_input(params: dict[str, object], field: str) -> None:
    await refused(FishSpeechBackend("fish", "http://127.0.0.1:9"), utterance(params=params), field)


# --- server errors ----------------------------------------------------------------------


async def test_out_of_range_param_is_a_permanent_422_naming_the_field(
    backend: FishSpeechBackend,
) -> None:
    with pytest.raises(Permanent) as caught:
        await backend.synthesize(utterance(params={"top_p": 5}))

    assert not isinstance(caught.value, InvalidInput)
    assert caught.value.http_status == 422
    assert "top_p" in caught.value.message
    assert "between 0.1 and 1.0" in caught.value.message


async def test_text_over_the_servers_max_is_permanent(
    backend: FishSpeechBackend, fake: Fake
) -> None:
    fake.set(max_text_length=10)

    error = await failure(backend, kind=Permanent)

    assert str(error) == "HTTP 400: Text is too long, max length is 10"


async def test_prompt_too_long_is_a_permanent_500(backend: FishSpeechBackend, fake: Fake) -> None:
    fake.set(max_prompt_chars=5)

    error = await failure(backend, kind=Permanent)

    assert "HTTP 500: Prompt is too long" in str(error)


@pytest.mark.parametrize(
    "message", ["Failed to generate speech", "No audio generated, please check the input text."]
)
async def test_generation_failures_are_transient_500s(
    backend: FishSpeechBackend, fake: Fake, message: str
) -> None:
    fake.set(fail_status=500, fail_message=message)

    error = await failure(backend)

    assert str(error) == f"HTTP 500: {message}"


async def test_fail_first_n_recovers(backend: FishSpeechBackend, fake: Fake) -> None:
    fake.set(fail_first_n=1)

    assert "Failed to generate speech" in str(await failure(backend))
    assert (await backend.synthesize(utterance())).duration_ms > 0


async def test_hosted_out_of_credits_is_systemic(backend: FishSpeechBackend, fake: Fake) -> None:
    fake.set(hosted_errors=True, fail_status=402, fail_message="Insufficient balance")

    error = await failure(backend, kind=Systemic)

    assert str(error) == "HTTP 402: Insufficient balance"


@pytest.mark.parametrize("status", [429, 503])
async def test_hosted_throttling_is_transient_with_retry_after(
    backend: FishSpeechBackend, fake: Fake, status: int
) -> None:
    fake.set(hosted_errors=True, fail_status=status, fail_message="slow down", retry_after="7")

    error = await failure(backend)

    assert isinstance(error, Transient)
    assert (error.http_status, error.retry_after) == (status, 7.0)
    assert "slow down" in error.message


# --- health, queueing, the fake itself --------------------------------------------------


async def test_ready_follows_health_and_auth(backend: FishSpeechBackend, fake: Fake) -> None:
    assert await backend.ready()

    fake.set(api_key="secret")

    assert not await backend.ready()


async def test_ready_with_the_key(fake: Fake) -> None:
    fake.set(api_key="secret")

    async with contextlib.aclosing(FishSpeechBackend("fish", fake.url, api_key="secret")) as fish:
        assert await fish.ready()


async def test_one_generation_at_a_time_and_the_queue_overflows_with_500(
    backend: FishSpeechBackend, fake: Fake
) -> None:
    fake.set(latency_ms=150, queue_limit=1)
    started = time.monotonic()

    async def timed() -> float | BaseException:
        try:
            await backend.synthesize(utterance())
        except Transient as exc:
            return exc
        return time.monotonic() - started

    results = await asyncio.gather(*(timed() for _ in range(3)))

    failures = [r for r in results if isinstance(r, Transient)]
    durations = sorted(r for r in results if isinstance(r, float))
    assert [f.http_status for f in failures] == [500]
    assert "Failed to generate speech" in failures[0].message
    assert durations[1] - durations[0] >= 0.12  # the second waited for the first
    stats = fake.stats()
    assert (stats["generations"], stats["queued_max"]) == (2, 1)
    assert stats["statuses"] == {"200": 2, "500": 1}


async def test_fake_refuses_other_content_types_with_415(fake: Fake) -> None:
    async with httpx.AsyncClient(base_url=fake.url) as client:
        response = await client.post(
            "/v1/tts", content=b"text=hi", headers={"Content-Type": "text/plain"}
        )

    assert response.status_code == 415
    assert "application/msgpack" in response.headers["Accept"]
    assert error_message(response.content) == "Unsupported Media Type"
    error = error_for_response(415, error_message(response.content), None)
    assert isinstance(error, Permanent)


async def test_fake_takes_json_references_as_base64(fake: Fake) -> None:
    body = {
        "text": "hi",
        "references": [{"audio": base64.b64encode(REF_WAV).decode(), "text": "t"}],
    }
    async with httpx.AsyncClient(base_url=fake.url) as client:
        response = await client.post("/v1/tts", json=body)

    assert response.status_code == 200
    assert sent(fake)["references"][0]["audio"]["bytes"] == len(REF_WAV)


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
        ({"message": {"why": 1}}, '{"why": 1}'),
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
