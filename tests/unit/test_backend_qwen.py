"""The Qwen3-TTS (vLLM-Omni) adapter against the fake vLLM-Omni server, over real sockets (what
every HTTP adapter shares is in test_backend_http.py)."""

from __future__ import annotations

import base64
import contextlib

import httpx
import pytest

from processor.backends.qwen import SPEAKERS, QwenTTSBackend, language_name
from processor.errors import InvalidInput, Permanent, Systemic
from processor.request import Reference, Voice
from tests.fakes.qwen_server import running_fake
from tests.unit.backend_helpers import (
    REF_URI,
    REF_WAV,
    Fake,
    adapter_fixtures,
    cloning,
    failure,
    measured_rate,
    past_capacity,
    refused,
    sent,
    utterance,
    wav,
)

pytestmark = pytest.mark.timeout(30)

fake, backend = adapter_fixtures(running_fake, lambda url: QwenTTSBackend("qwen", url))


def qwen(default_speaker: str = "vivian") -> QwenTTSBackend:
    """An adapter for pure checks (``check`` sends nothing)."""
    return QwenTTSBackend("qwen", "http://127.0.0.1:9", default_speaker=default_speaker)


# --- request shapes ---------------------------------------------------------------------


async def test_no_voice_is_custom_voice_with_the_default_speaker(
    backend: QwenTTSBackend, fake: Fake
) -> None:
    audio = await backend.synthesize(utterance())

    assert measured_rate(audio) == 24000
    assert sent(fake) == {
        "input": "Hello there, world.",
        "model": "Qwen/Qwen3-TTS",
        "task_type": "CustomVoice",
        "voice": "vivian",
        "language": "Auto",
        "response_format": "wav",
    }


@pytest.mark.parametrize("preset", ["Uncle_Fu", "uncle_fu", "UNCLE_FU"])
async def test_preset_is_a_lower_cased_custom_voice_speaker(
    backend: QwenTTSBackend, fake: Fake, preset: str
) -> None:
    await backend.synthesize(utterance(voice=Voice(preset=preset)))

    assert (sent(fake)["task_type"], sent(fake)["voice"]) == ("CustomVoice", "uncle_fu")


async def test_description_alone_is_voice_design(backend: QwenTTSBackend, fake: Fake) -> None:
    await backend.synthesize(utterance(voice=Voice(description="a calm elderly man")))

    body = sent(fake)
    assert (body["task_type"], body["instructions"]) == ("VoiceDesign", "a calm elderly man")
    assert "voice" not in body


async def test_preset_with_description_is_a_styled_custom_voice(
    backend: QwenTTSBackend, fake: Fake
) -> None:
    await backend.synthesize(utterance(voice=Voice(preset="Ryan", description="very excited")))

    body = sent(fake)
    assert (body["task_type"], body["voice"], body["instructions"]) == (
        "CustomVoice",
        "ryan",
        "very excited",
    )


async def test_reference_with_transcript_is_base_with_a_data_uri(
    backend: QwenTTSBackend, fake: Fake
) -> None:
    audio = await backend.synthesize(cloning(REF_URI, REF_WAV, "The transcript of the clip."))

    assert audio.sample_rate == 24000
    body = sent(fake)
    assert (body["task_type"], body["ref_text"]) == ("Base", "The transcript of the clip.")
    prefix = "data:audio/wav;base64,"
    assert body["ref_audio"].startswith(prefix)
    assert base64.b64decode(body["ref_audio"][len(prefix) :]) == REF_WAV
    assert "voice" not in body
    assert "x_vector_only_mode" not in body


async def test_reference_without_transcript_clones_by_speaker_embedding(
    backend: QwenTTSBackend, fake: Fake
) -> None:
    audio = await backend.synthesize(cloning(REF_URI, REF_WAV))

    assert audio.duration_ms > 0
    assert (sent(fake)["task_type"], sent(fake)["x_vector_only_mode"]) == ("Base", True)
    assert "ref_text" not in sent(fake)


@pytest.mark.parametrize(
    ("code", "name"),
    [("auto", "Auto"), ("zh", "Chinese"), ("ja", "Japanese"), ("pt-BR", "Portuguese")],
)
async def test_language_codes_become_qwen_names(
    backend: QwenTTSBackend, fake: Fake, code: str, name: str
) -> None:
    await backend.synthesize(utterance(language=code))

    assert sent(fake)["language"] == name


async def test_seed_and_params_are_sent(backend: QwenTTSBackend, fake: Fake) -> None:
    params = {
        "speed": 2,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "max_new_tokens": 1024,
        "pitch": 3,  # unknown to Qwen: ignored
    }
    short = await backend.synthesize(utterance())

    fast = await backend.synthesize(utterance(seed=7, params=params))

    body = sent(fake)
    assert body["seed"] == 7
    assert (body["speed"], body["temperature"], body["top_p"]) == (2.0, 0.7, 0.9)
    assert (body["top_k"], body["max_new_tokens"]) == (40, 1024)
    assert "pitch" not in body
    assert fast.duration_ms < short.duration_ms


async def test_empty_model_leaves_the_field_out(fake: Fake) -> None:
    async with contextlib.aclosing(
        QwenTTSBackend("qwen", fake.url, model="", default_speaker="Serena")
    ) as backend:
        await backend.synthesize(utterance())

    assert "model" not in sent(fake)
    assert sent(fake)["voice"] == "serena"


def test_unknown_default_speaker_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="default_speaker"):
        qwen(default_speaker="nobody")


# --- what Qwen cannot take: InvalidInput from check, before any I/O -------------------------


async def test_unknown_preset_is_invalid_input_naming_the_speakers() -> None:
    error = await refused(qwen(), utterance(voice=Voice(preset="alloy")), "'alloy'")

    assert all(name in error.message for name in SPEAKERS)


async def test_unsupported_language_is_invalid_input_listing_the_supported() -> None:
    error = await refused(qwen(), utterance(language="nl"), "'nl'")

    assert "zh (Chinese)" in error.message
    assert "it (Italian)" in error.message


@pytest.mark.parametrize(
    ("voice", "match"),
    [
        (Voice(description="x" * 501), "at most 500"),
        (Voice(preset="Ryan", reference=Reference(REF_URI, "words")), r"voice\.reference alone"),
        (Voice(description="calm", reference=Reference(REF_URI, "words")), r"reference alone"),
    ],
)
async def test_a_voice_qwen_cannot_take_is_invalid_input(voice: Voice, match: str) -> None:
    await refused(qwen(), utterance(voice=voice), match)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"speed": 9}, "params.speed must be from 0.25 to 4.0"),
        ({"speed": "fast"}, "params.speed must be a finite number"),
        ({"max_new_tokens": 5000}, "params.max_new_tokens must be from 1 to 4096"),
        ({"top_k": 2.5}, "params.top_k must be an integer"),
        ({"temperature": False}, "params.temperature must be a finite number"),
    ],
)
async def test_bad_params_are_invalid_input(params: dict[str, object], match: str) -> None:
    await refused(qwen(), utterance(params=params), match)


async def test_reference_shorter_than_a_second_is_invalid_input(
    backend: QwenTTSBackend, fake: Fake
) -> None:
    with pytest.raises(InvalidInput, match="500 ms"):
        await backend.synthesize(cloning(REF_URI, wav(500), "hi"))

    assert fake.stats()["requests"] == 0


# --- server errors ----------------------------------------------------------------------


async def test_generation_failure_reported_as_400_is_transient(
    backend: QwenTTSBackend, fake: Fake
) -> None:
    fake.set(fail_first_n=1)

    error = await failure(backend)

    assert "HTTP 400: Speech generation failed: CUDA out of memory" in str(error)
    assert (await backend.synthesize(utterance())).duration_ms > 0  # recovered


async def test_past_capacity_the_excess_fails_transiently(
    backend: QwenTTSBackend, fake: Fake
) -> None:
    assert await past_capacity(backend, fake) == [400, 400]


async def test_empty_input_is_a_permanent_400(backend: QwenTTSBackend) -> None:
    error = await failure(backend, utterance("   "), Permanent)

    assert not isinstance(error, InvalidInput)
    assert str(error) == "HTTP 400: Input text cannot be empty"


async def test_checkpoint_task_mismatch_is_permanent(backend: QwenTTSBackend, fake: Fake) -> None:
    fake.set(variant="Base")

    error = await failure(backend, utterance(voice=Voice(preset="Ryan")), Permanent)

    assert str(error).startswith("HTTP 400: ")
    assert "Base checkpoint does not support task_type='CustomVoice'" in str(error)


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors_are_transient(
    backend: QwenTTSBackend, fake: Fake, status: int
) -> None:
    fake.set(fail_status=status, fail_message="engine hiccup")

    error = await failure(backend)

    assert f"HTTP {status}: engine hiccup" in str(error)


async def test_unknown_model_is_systemic(fake: Fake) -> None:
    async with contextlib.aclosing(
        QwenTTSBackend("qwen", fake.url, model="Qwen/Qwen3-TTS-12Hz-1.7B-Base")
    ) as backend:
        error = await failure(backend, kind=Systemic)

    assert "HTTP 404: " in str(error)
    assert "does not exist" in str(error)


async def test_ready_when_health_answers(backend: QwenTTSBackend) -> None:
    assert await backend.ready()


# --- the fake's own validation, as the real server's ------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"input": "hi", "voice": "alloy"}, "Invalid voice 'alloy'"),
        ({"input": "hi", "language": "dutch"}, "Invalid language 'Dutch'"),
        (
            {"input": "hi", "task_type": "VoiceDesign"},
            "VoiceDesign task requires 'instructions'",
        ),
        ({"input": "hi", "ref_text": "words"}, "Base task requires 'ref_audio'"),
        (
            {
                "input": "hi",
                "task_type": "Base",
                "ref_audio": "data:audio/wav;base64,AAAA",
                "ref_text": "t",
            },
            "cannot decode ref_audio",
        ),
        ({"input": "hi", "instructions": "x" * 501}, "Instructions too long"),
        ({"input": "hi", "speed": 9}, "speed"),
    ],
)
async def test_fake_refuses_as_the_real_server(
    fake: Fake, body: dict[str, object], message: str
) -> None:
    async with httpx.AsyncClient(base_url=fake.url) as client:
        response = await client.post("/v1/audio/speech", json=body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error["message"]
    assert (error["type"], error["code"]) == ("BadRequestError", 400)


# --- pure parts -------------------------------------------------------------------------


def test_every_supported_language_code_maps() -> None:
    assert [language_name(code) for code in ("de", "fr", "ru", "es", "it", "ko", "en")] == [
        "German",
        "French",
        "Russian",
        "Spanish",
        "Italian",
        "Korean",
        "English",
    ]
