"""The Qwen3-TTS (vLLM-Omni) adapter against the fake vLLM-Omni server, over real sockets."""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import subprocess
import sys
import wave
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from processor.audio import wav_info
from processor.backends.base import ReferenceAudio
from processor.backends.qwen import SPEAKERS, QwenTTSBackend, error_for_response, language_name
from processor.errors import InvalidInput, Permanent, Stage, Systemic, Transient
from processor.request import Reference, Request, Voice
from tests.fakes.fish_server import tone, wav_bytes
from tests.fakes.qwen_server import FakeHandle, running_fake

pytestmark = pytest.mark.timeout(30)

REF_URI = "s3://voices/narrator.wav"
SHORT_URI = "s3://voices/short.wav"
REF_WAV = wav_bytes(tone(3000, 24000, 400), 24000)
SHORT_WAV = wav_bytes(tone(500, 24000, 400), 24000)


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
    return DictReferences({REF_URI: REF_WAV, SHORT_URI: SHORT_WAV})


@pytest.fixture
async def backend(fake: FakeHandle, references: DictReferences) -> AsyncIterator[QwenTTSBackend]:
    backend = QwenTTSBackend("qwen", fake.url, references=references)
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


async def test_no_voice_is_custom_voice_with_the_default_speaker(
    backend: QwenTTSBackend, fake: FakeHandle
) -> None:
    audio = await backend.synthesize(request())

    assert (audio.format, audio.sample_rate, audio.channels) == ("wav", 24000, 1)
    with wave.open(io.BytesIO(audio.data)) as reader:
        assert reader.getframerate() == 24000
        assert reader.getnframes() > 0
        assert abs(reader.getnframes() / 24 - audio.duration_ms) <= 1
    assert sent(fake) == {
        "input": "Hello there, world.",
        "model": "Qwen/Qwen3-TTS",
        "task_type": "CustomVoice",
        "voice": "vivian",
        "language": "Auto",
        "response_format": "wav",
    }
    assert fake.stats()["last_authorization"] is None


@pytest.mark.parametrize("preset", ["Uncle_Fu", "uncle_fu", "UNCLE_FU"])
async def test_preset_is_a_lower_cased_custom_voice_speaker(
    backend: QwenTTSBackend, fake: FakeHandle, preset: str
) -> None:
    await backend.synthesize(request(voice=Voice(preset=preset)))

    assert (sent(fake)["task_type"], sent(fake)["voice"]) == ("CustomVoice", "uncle_fu")


async def test_description_alone_is_voice_design(backend: QwenTTSBackend, fake: FakeHandle) -> None:
    await backend.synthesize(request(voice=Voice(description="a calm elderly man")))

    body = sent(fake)
    assert (body["task_type"], body["instructions"]) == ("VoiceDesign", "a calm elderly man")
    assert "voice" not in body


async def test_preset_with_description_is_a_styled_custom_voice(
    backend: QwenTTSBackend, fake: FakeHandle
) -> None:
    await backend.synthesize(request(voice=Voice(preset="Ryan", description="very excited")))

    body = sent(fake)
    assert (body["task_type"], body["voice"], body["instructions"]) == (
        "CustomVoice",
        "ryan",
        "very excited",
    )


async def test_reference_with_transcript_is_base_with_a_data_uri(
    backend: QwenTTSBackend, fake: FakeHandle, references: DictReferences
) -> None:
    voice = Voice(reference=Reference(REF_URI, text="The transcript of the clip."))

    audio = await backend.synthesize(request(voice=voice))

    assert audio.sample_rate == 24000
    assert references.loaded == [REF_URI]
    body = sent(fake)
    assert body["task_type"] == "Base"
    assert body["ref_text"] == "The transcript of the clip."
    prefix = "data:audio/wav;base64,"
    assert body["ref_audio"].startswith(prefix)
    assert base64.b64decode(body["ref_audio"][len(prefix) :]) == REF_WAV
    assert "voice" not in body
    assert "x_vector_only_mode" not in body


async def test_reference_without_transcript_clones_by_speaker_embedding(
    backend: QwenTTSBackend, fake: FakeHandle
) -> None:
    audio = await backend.synthesize(request(voice=Voice(reference=Reference(REF_URI))))

    assert audio.duration_ms > 0
    body = sent(fake)
    assert (body["task_type"], body["x_vector_only_mode"]) == ("Base", True)
    assert "ref_text" not in body


@pytest.mark.parametrize(
    ("code", "name"),
    [("auto", "Auto"), ("zh", "Chinese"), ("ja", "Japanese"), ("pt-BR", "Portuguese")],
)
async def test_language_codes_become_qwen_names(
    backend: QwenTTSBackend, fake: FakeHandle, code: str, name: str
) -> None:
    await backend.synthesize(request(language=code))

    assert sent(fake)["language"] == name


async def test_seed_and_params_are_sent(backend: QwenTTSBackend, fake: FakeHandle) -> None:
    params = {
        "speed": 2,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "max_new_tokens": 1024,
        "pitch": 3,  # unknown to Qwen: ignored
    }
    short = await backend.synthesize(request())

    fast = await backend.synthesize(request(seed=7, params=params))

    body = sent(fake)
    assert body["seed"] == 7
    assert (body["speed"], body["temperature"], body["top_p"]) == (2.0, 0.7, 0.9)
    assert (body["top_k"], body["max_new_tokens"]) == (40, 1024)
    assert "pitch" not in body
    assert fast.duration_ms < short.duration_ms


async def test_request_format_does_not_change_what_is_asked(
    backend: QwenTTSBackend, fake: FakeHandle
) -> None:
    audio = await backend.synthesize(request(format="opus", sample_rate=48000))

    assert sent(fake)["response_format"] == "wav"
    assert (audio.format, audio.sample_rate) == ("wav", 24000)


async def test_empty_model_leaves_the_field_out(fake: FakeHandle) -> None:
    backend = QwenTTSBackend("qwen", fake.url + "/v1", model="", default_speaker="Serena")
    try:
        await backend.synthesize(request())
    finally:
        await backend.aclose()

    assert "model" not in sent(fake)
    assert sent(fake)["voice"] == "serena"


def test_unknown_default_speaker_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="default_speaker"):
        QwenTTSBackend("qwen", "http://127.0.0.1:9", default_speaker="nobody")


# --- capability errors (nothing sent) ---------------------------------------------------


async def test_unknown_preset_is_invalid_input_naming_the_speakers(
    backend: QwenTTSBackend, fake: FakeHandle
) -> None:
    with pytest.raises(InvalidInput) as caught:
        await backend.synthesize(request(voice=Voice(preset="alloy")))

    assert "'alloy'" in caught.value.message
    assert all(name in caught.value.message for name in SPEAKERS)
    assert fake.stats()["requests"] == 0


async def test_unsupported_language_is_invalid_input_listing_the_supported(
    backend: QwenTTSBackend, fake: FakeHandle
) -> None:
    with pytest.raises(InvalidInput) as caught:
        await backend.synthesize(request(language="nl"))

    assert "'nl'" in caught.value.message
    assert "zh (Chinese)" in caught.value.message
    assert "it (Italian)" in caught.value.message
    assert fake.stats()["requests"] == 0


async def test_description_over_500_chars_is_invalid_input(
    backend: QwenTTSBackend, fake: FakeHandle
) -> None:
    with pytest.raises(InvalidInput, match="at most 500"):
        await backend.synthesize(request(voice=Voice(description="x" * 501)))

    assert fake.stats()["requests"] == 0


@pytest.mark.parametrize(
    "voice",
    [
        Voice(preset="Ryan", reference=Reference(REF_URI, "words")),
        Voice(description="calm", reference=Reference(REF_URI, "words")),
    ],
)
async def test_reference_with_a_speaker_or_design_is_invalid_input(
    backend: QwenTTSBackend, references: DictReferences, voice: Voice
) -> None:
    with pytest.raises(InvalidInput, match=r"voice\.reference alone"):
        await backend.synthesize(request(voice=voice))

    assert references.loaded == []


async def test_reference_shorter_than_a_second_is_invalid_input(
    backend: QwenTTSBackend, fake: FakeHandle
) -> None:
    with pytest.raises(InvalidInput, match="500 ms"):
        await backend.synthesize(request(voice=Voice(reference=Reference(SHORT_URI, "hi"))))

    assert fake.stats()["requests"] == 0


async def test_reference_without_a_loader_is_invalid_input(fake: FakeHandle) -> None:
    backend = QwenTTSBackend("qwen", fake.url)
    try:
        with pytest.raises(InvalidInput, match="no reference loader"):
            await backend.synthesize(request(voice=Voice(reference=Reference(REF_URI))))
    finally:
        await backend.aclose()


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
async def test_bad_params_are_invalid_input(
    backend: QwenTTSBackend, fake: FakeHandle, params: dict[str, object], match: str
) -> None:
    with pytest.raises(InvalidInput, match=match):
        await backend.synthesize(request(params=params))

    assert fake.stats()["requests"] == 0


# --- server errors ----------------------------------------------------------------------


async def test_generation_failure_reported_as_400_is_transient(
    backend: QwenTTSBackend, fake: FakeHandle
) -> None:
    fake.set(fail_first_n=1)

    with pytest.raises(Transient) as caught:
        await backend.synthesize(request())

    assert caught.value.http_status == 400
    assert caught.value.error_type == "http_400"
    assert "Speech generation failed: CUDA out of memory" in caught.value.message
    assert (await backend.synthesize(request())).duration_ms > 0  # recovered


async def test_past_capacity_the_excess_fails_transiently(
    backend: QwenTTSBackend, fake: FakeHandle
) -> None:
    fake.set(capacity=2, latency_ms=300)

    results = await asyncio.gather(
        *(backend.synthesize(request()) for _ in range(4)), return_exceptions=True
    )

    failed = [r for r in results if isinstance(r, Transient)]
    assert len(failed) == 2
    assert all(r.http_status == 400 for r in failed)
    assert fake.stats()["in_flight_max"] == 2


async def test_empty_input_is_a_permanent_400(backend: QwenTTSBackend) -> None:
    with pytest.raises(Permanent) as caught:
        await backend.synthesize(request("   "))

    assert not isinstance(caught.value, InvalidInput)
    assert caught.value.message == "HTTP 400: Input text cannot be empty"


async def test_checkpoint_task_mismatch_is_permanent(
    backend: QwenTTSBackend, fake: FakeHandle
) -> None:
    fake.set(variant="Base")

    with pytest.raises(Permanent) as caught:
        await backend.synthesize(request(voice=Voice(preset="Ryan")))

    assert caught.value.http_status == 400
    assert "Base checkpoint does not support task_type='CustomVoice'" in caught.value.message


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors_are_transient(
    backend: QwenTTSBackend, fake: FakeHandle, status: int
) -> None:
    fake.set(fail_status=status, fail_message="engine hiccup")

    with pytest.raises(Transient) as caught:
        await backend.synthesize(request())

    assert caught.value.http_status == status
    assert "engine hiccup" in caught.value.message


async def test_unknown_model_is_systemic(fake: FakeHandle) -> None:
    backend = QwenTTSBackend("qwen", fake.url, model="Qwen/Qwen3-TTS-12Hz-1.7B-Base")
    try:
        with pytest.raises(Systemic) as caught:
            await backend.synthesize(request())
    finally:
        await backend.aclose()

    assert caught.value.http_status == 404
    assert "does not exist" in caught.value.message


async def test_wrong_api_key_is_systemic(fake: FakeHandle) -> None:
    fake.set(api_key="right")
    backend = QwenTTSBackend("qwen", fake.url, api_key="wrong")
    try:
        with pytest.raises(Systemic) as caught:
            await backend.synthesize(request())
    finally:
        await backend.aclose()

    assert caught.value.http_status == 401
    assert caught.value.message == "HTTP 401: Unauthorized"


async def test_api_key_is_sent_as_bearer_and_kept_out_of_repr(fake: FakeHandle) -> None:
    fake.set(api_key="sk-qwen-123")
    backend = QwenTTSBackend("qwen", fake.url, api_key="sk-qwen-123")
    try:
        await backend.synthesize(request())
    finally:
        await backend.aclose()

    assert fake.stats()["last_authorization"] == "Bearer sk-qwen-123"
    assert "sk-qwen" not in repr(backend)


async def test_truncated_body_is_transient(backend: QwenTTSBackend, fake: FakeHandle) -> None:
    fake.set(truncate=True)

    with pytest.raises(Transient) as caught:
        await backend.synthesize(request())

    assert caught.value.error_type == "truncated"


async def test_empty_body_is_transient(backend: QwenTTSBackend, fake: FakeHandle) -> None:
    fake.set(empty_body=True)

    with pytest.raises(Transient) as caught:
        await backend.synthesize(request())

    assert (caught.value.error_type, caught.value.http_status) == ("empty_body", 200)


async def test_a_body_that_is_not_audio_is_transient(
    backend: QwenTTSBackend, fake: FakeHandle
) -> None:
    fake.set(corrupt=True)

    with pytest.raises(Transient) as caught:
        await backend.synthesize(request())

    assert caught.value.error_type == "malformed_audio"


async def test_connection_refused_is_transient_connect() -> None:
    backend = QwenTTSBackend("down", f"http://127.0.0.1:{free_port()}")
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
    backend = QwenTTSBackend("slow", fake.url, timeout=httpx.Timeout(0.2))
    try:
        with pytest.raises(Transient) as caught:
            await backend.synthesize(request())
    finally:
        await backend.aclose()

    assert caught.value.error_type == "timeout"


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
    fake: FakeHandle, body: dict[str, object], message: str
) -> None:
    async with httpx.AsyncClient(base_url=fake.url) as client:
        response = await client.post("/v1/audio/speech", json=body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error["message"]
    assert (error["type"], error["code"]) == ("BadRequestError", 400)


async def test_fake_is_driven_over_http(fake: FakeHandle) -> None:
    async with httpx.AsyncClient(base_url=fake.url) as client:
        changed = await client.post("/control", json={"variant": "VoiceDesign"})
        refused = await client.post("/control", json={"no_such_switch": 1})
        stats = (await client.get("/stats")).json()

    assert changed.status_code == 200
    assert refused.status_code == 400
    assert stats["switches"]["variant"] == "VoiceDesign"


def test_fake_runs_as_a_process() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.qwen_server", "--port", "0", "--variant", "Base"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("LISTENING ")
        url = f"http://127.0.0.1:{int(line.split()[1])}"
        response = httpx.post(f"{url}/v1/audio/speech", json={"input": "hi", "voice": "ryan"})
        assert response.status_code == 400
        assert "Base checkpoint" in response.json()["error"]["message"]
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


# --- pure parts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        (400, "Speech generation failed: CUDA out of memory", Transient),
        (400, "TTS model did not produce audio output.", Transient),
        (400, "No output generated from the model.", Transient),
        (400, "Client disconnected", Transient),
        (400, "Input text cannot be empty", Permanent),
        (400, "Invalid voice 'x'. Supported: vivian", Permanent),
        (400, "Invalid language 'Xx'. Supported: Auto", Permanent),
        (401, "Unauthorized", Systemic),
        (404, "The model `x` does not exist.", Systemic),
        (500, "EngineDeadError", Transient),
    ],
)
def test_status_and_message_pick_the_error_class(
    status: int, message: str, kind: type[Exception]
) -> None:
    error = error_for_response(status, message, None)

    assert type(error) is kind
    assert (error.http_status, error.error_type) == (status, f"http_{status}")
    assert error.stage is Stage.SYNTHESIZE


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
