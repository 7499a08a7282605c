"""The OpenAI-compatible adapter against the fake speech server, over real sockets (what every
HTTP adapter shares is in test_backend_http.py)."""

from __future__ import annotations

import pytest

from processor.backends.openai import OpenAIBackend
from processor.errors import InvalidInput, Permanent, Transient
from processor.request import Voice
from tests.fakes.openai_server import running_fake
from tests.unit.backend_helpers import (
    Fake,
    adapter_fixtures,
    cloning,
    measured_rate,
    past_capacity,
    refused,
    sent,
    utterance,
)

pytestmark = pytest.mark.timeout(30)

fake, backend = adapter_fixtures(
    running_fake, lambda url: OpenAIBackend("qwen", url, model="qwen3-tts", default_voice="vivian")
)


async def test_success_returns_measured_wav_and_sends_the_fields(
    backend: OpenAIBackend, fake: Fake
) -> None:
    voice = Voice(preset="serena", description="a calm narrator")
    audio = await backend.synthesize(utterance(voice=voice, params={"speed": 1.25}, seed=3))

    assert measured_rate(audio) == 24000
    assert sent(fake) == {
        "model": "qwen3-tts",
        "input": "Hello there, world.",
        "voice": "serena",
        "instructions": "a calm narrator",
        "response_format": "wav",
        "speed": 1.25,
    }


async def test_defaults_voice_and_omits_unset_fields(backend: OpenAIBackend, fake: Fake) -> None:
    await backend.synthesize(utterance(language="ja"))

    assert sent(fake)["voice"] == "vivian"
    assert set(sent(fake)) == {"model", "input", "voice", "response_format"}


async def test_streamed_wav_with_placeholder_sizes_is_repaired(
    backend: OpenAIBackend, fake: Fake
) -> None:
    whole = await backend.synthesize(utterance())
    fake.set(streamed_wav=True)

    streamed = await backend.synthesize(utterance())

    assert streamed == whole


# --- what the API cannot express: InvalidInput, nothing sent --------------------------------


async def test_reference_audio_is_invalid_input(backend: OpenAIBackend, fake: Fake) -> None:
    await refused(backend, cloning("s3://bucket/ref.wav", None), "cannot clone")

    assert fake.stats()["requests"] == 0


@pytest.mark.parametrize("speed", ["fast", True, float("nan")])
async def test_a_speed_that_is_not_a_number_is_invalid_input(
    backend: OpenAIBackend, speed: object
) -> None:
    await refused(backend, utterance(params={"speed": speed}), r"params\.speed must be a finite")


# --- the server's answers ---------------------------------------------------------------------


async def test_503_is_transient_with_its_status(backend: OpenAIBackend, fake: Fake) -> None:
    fake.set(fail_first_n=1)

    with pytest.raises(Transient) as caught:
        await backend.synthesize(utterance())

    assert (caught.value.http_status, caught.value.error_type) == (503, "http_503")
    assert "model is loading" in caught.value.message
    assert (await backend.synthesize(utterance())).duration_ms > 0  # recovered


async def test_429_carries_retry_after(backend: OpenAIBackend, fake: Fake) -> None:
    fake.set(capacity=0)

    with pytest.raises(Transient) as caught:
        await backend.synthesize(utterance())

    assert (caught.value.http_status, caught.value.retry_after) == (429, 1.0)


@pytest.mark.parametrize("status", [400, 422])
async def test_request_rejections_are_permanent_with_the_server_message(
    backend: OpenAIBackend, fake: Fake, status: int
) -> None:
    fake.set(fail_status=status)

    with pytest.raises(Permanent) as caught:
        await backend.synthesize(utterance())

    assert not isinstance(caught.value, InvalidInput)
    assert caught.value.http_status == status
    assert f"fake failure {status}" in caught.value.message


async def test_server_validation_message_reaches_the_error(backend: OpenAIBackend) -> None:
    with pytest.raises(Permanent) as caught:
        await backend.synthesize(utterance(params={"speed": 9.0}))

    assert caught.value.http_status == 400
    assert "speed" in caught.value.message


async def test_past_capacity_the_excess_is_rejected_with_429(
    backend: OpenAIBackend, fake: Fake
) -> None:
    assert await past_capacity(backend, fake) == [429, 429]
    assert fake.stats()["statuses"] == {"200": 2, "429": 2}
