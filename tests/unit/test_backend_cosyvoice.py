"""The CosyVoice adapter against the fake CosyVoice FastAPI server, over real sockets (what every
HTTP adapter shares is in test_backend_http.py)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx
import pytest

from processor.audio import pcm_to_wav, silence
from processor.backends.cosyvoice import V3_PREFIX, CosyVoiceBackend, plan_call
from processor.errors import InvalidInput, Permanent, Transient
from processor.request import Reference, Voice
from tests.fakes.cosyvoice_server import running_fake
from tests.unit.backend_helpers import (
    Fake,
    at_once,
    cloning,
    measured_rate,
    refused,
    utterance,
    wav,
)

pytestmark = pytest.mark.timeout(30)

REF = "s3://refs/alice.wav"
REF_WAV = wav(1500, 16000)
TEXT = "Hello there. How are you?"
SPEAKER = Voice(preset="中文女")


@pytest.fixture(params=[1, 2, 3])
def version(request: pytest.FixtureRequest) -> Literal[1, 2, 3]:
    value: Literal[1, 2, 3] = request.param
    return value


@pytest.fixture
async def fake(version: int) -> AsyncIterator[Fake]:
    async with running_fake(version=version) as handle:
        yield handle


@pytest.fixture
async def backend(fake: Fake, version: Literal[1, 2, 3]) -> AsyncIterator[CosyVoiceBackend]:
    async with contextlib.aclosing(CosyVoiceBackend("cosy", fake.url, version=version)) as cosy:
        yield cosy


def said(text: str = TEXT, **fields: Any) -> Any:
    return utterance(text, **fields)


def last(fake: Fake) -> dict[str, Any]:
    sent = fake.stats()["last_request"]
    assert isinstance(sent, dict)
    return sent


def v3(text: str, version: int) -> str:
    return V3_PREFIX + text if version == 3 else text


# --- request shapes -------------------------------------------------------------------------


async def test_sft_sends_the_preset_and_returns_wav_at_the_model_rate(
    backend: CosyVoiceBackend, fake: Fake, version: int
) -> None:
    audio = await backend.synthesize(said(voice=Voice(preset="英文女")))

    assert measured_rate(audio) == (22050 if version == 1 else 24000)
    assert last(fake) == {
        "route": "inference_sft",
        "method": "POST",
        "fields": {"tts_text": v3(TEXT, version), "spk_id": "英文女"},
        "prompt_wav": None,
    }


async def test_zero_shot_sends_the_transcript_and_the_prompt_wav(
    backend: CosyVoiceBackend, fake: Fake, version: int
) -> None:
    audio = await backend.synthesize(cloning(REF, REF_WAV, "Nice to meet you.", text=TEXT))

    sent = last(fake)
    assert sent["route"] == "inference_zero_shot"
    assert sent["fields"] == {"tts_text": TEXT, "prompt_text": v3("Nice to meet you.", version)}
    assert sent["prompt_wav"]["size"] == len(REF_WAV)
    assert (sent["prompt_wav"]["sample_rate"], sent["prompt_wav"]["duration_ms"]) == (16000, 1500)
    assert audio.sample_rate == (22050 if version == 1 else 24000)


async def test_reference_without_text_is_cross_lingual(
    backend: CosyVoiceBackend, fake: Fake, version: int
) -> None:
    await backend.synthesize(cloning(REF, REF_WAV, text=TEXT))

    sent = last(fake)
    assert sent["route"] == "inference_cross_lingual"
    assert sent["fields"] == {"tts_text": v3(TEXT, version)}
    assert sent["prompt_wav"]["sample_rate"] == 16000


@pytest.mark.parametrize("version", [1])
async def test_v1_cross_lingual_gets_a_language_tag(backend: CosyVoiceBackend, fake: Fake) -> None:
    spoken = []
    for text, language in [
        ("Good morning.", "en"),
        ("おはよう。", "ja"),
        ("Good morning.", "auto"),
    ]:
        await backend.synthesize(cloning(REF, REF_WAV, text=text, language=language))
        spoken.append(last(fake)["fields"]["tts_text"])

    assert spoken == ["<|en|>Good morning.", "<|jp|>おはよう。", "Good morning."]


@pytest.mark.parametrize("version", [1])
async def test_v1_instruct_uses_the_preset_speaker(backend: CosyVoiceBackend, fake: Fake) -> None:
    voice = Voice(preset="中文男", description="A fiery rebel leader.")

    audio = await backend.synthesize(said(voice=voice))

    assert audio.sample_rate == 22050
    assert last(fake) == {
        "route": "inference_instruct",
        "method": "POST",
        "fields": {
            "tts_text": TEXT,
            "spk_id": "中文男",
            "instruct_text": "A fiery rebel leader.<|endofprompt|>",
        },
        "prompt_wav": None,
    }


@pytest.mark.parametrize("version", [2, 3])
async def test_v2_v3_instruct2_restyles_the_reference(
    backend: CosyVoiceBackend, fake: Fake, version: int
) -> None:
    voice = cloning(REF, REF_WAV, "ignored", description="Speak slowly and calmly.", text=TEXT)

    audio = await backend.synthesize(voice)

    sent = last(fake)
    assert sent["route"] == "inference_instruct2"
    assert sent["fields"]["tts_text"] == TEXT
    if version == 3:
        expected = "You are a helpful assistant. Speak slowly and calmly.<|endofprompt|>"
    else:
        expected = "Speak slowly and calmly.<|endofprompt|>"
    assert sent["fields"]["instruct_text"] == expected
    assert sent["prompt_wav"]["sample_rate"] == 16000
    assert audio.sample_rate == 24000


@pytest.mark.parametrize("version", [3])
async def test_v3_marker_already_in_the_text_is_not_doubled(
    backend: CosyVoiceBackend, fake: Fake
) -> None:
    text = "You are a helpful assistant. Whisper.<|endofprompt|>Hello."
    await backend.synthesize(said(text, voice=SPEAKER))

    assert last(fake)["fields"]["tts_text"] == text


async def test_the_v3_fake_breaks_off_without_the_marker_as_the_real_model_does() -> None:
    async with running_fake(version=3) as fake, httpx.AsyncClient(base_url=fake.url) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post("/inference_sft", data={"tts_text": "Hello.", "spk_id": "中文女"})

        assert fake.stats()["dropped"] == {"v3_no_endofprompt": 1}


async def test_no_voice_uses_the_default_speaker(fake: Fake, version: Literal[1, 2, 3]) -> None:
    cosy = CosyVoiceBackend("cosy", fake.url, version=version, default_speaker="英文男")
    async with contextlib.aclosing(cosy):
        await cosy.synthesize(said())

    assert last(fake)["fields"]["spk_id"] == "英文男"


@pytest.mark.parametrize("version", [2])
async def test_seed_and_speed_are_not_sent(backend: CosyVoiceBackend, fake: Fake) -> None:
    audio = await backend.synthesize(said(voice=SPEAKER, seed=7, params={"speed": 2.0}))

    assert audio.sample_rate == 24000
    assert set(last(fake)["fields"]) == {"tts_text", "spk_id"}


@pytest.mark.parametrize("version", [2])
async def test_configured_sample_rate_overrides_the_version_default(fake: Fake) -> None:
    cosy = CosyVoiceBackend("cosy", fake.url, version=2, sample_rate=22050)
    async with contextlib.aclosing(cosy):
        audio = await cosy.synthesize(said(voice=SPEAKER))

    assert measured_rate(audio) == 22050


# --- capability errors: InvalidInput before anything is sent --------------------------------


@pytest.mark.parametrize(
    ("version", "voice", "missing"),
    [
        (2, Voice(), "voice.preset"),
        (1, Voice(description="calm"), "preset speaker"),
        (2, Voice(description="calm"), "reference audio"),
        (3, Voice(preset="中文女", description="calm"), "reference audio"),
        (1, Voice(description="calm", reference=Reference(REF)), "preset"),
        (2, Voice(preset="中文女", reference=Reference(REF)), "not both"),
    ],
)
async def test_a_voice_the_version_cannot_do_is_invalid_input(
    backend: CosyVoiceBackend, fake: Fake, voice: Voice, missing: str
) -> None:
    await refused(backend, said(voice=voice), missing)

    assert fake.stats()["requests"] == 0


@pytest.mark.parametrize("version", [2])
@pytest.mark.parametrize(
    ("prompt", "complaint"),
    [
        (wav(1500, 8000), "8000 Hz; cosyvoice needs at least 16000 Hz"),
        (wav(31_000, 16000), "at most 30 s"),
    ],
)
async def test_unusable_reference_audio_is_invalid_input(
    backend: CosyVoiceBackend, fake: Fake, prompt: bytes, complaint: str
) -> None:
    with pytest.raises(InvalidInput, match=complaint):
        await backend.synthesize(cloning(REF, prompt, "text"))

    assert fake.stats()["requests"] == 0


def test_plan_is_pure_and_names_the_route() -> None:
    call = plan_call(cloning(REF, None, "hi"), version=3)

    assert call.route == "inference_zero_shot"
    assert call.prompt_uri == REF
    assert call.fields["prompt_text"] == V3_PREFIX + "hi"


def test_unknown_version_is_refused() -> None:
    with pytest.raises(ValueError, match="1, 2 or 3"):
        CosyVoiceBackend("cosy", "http://127.0.0.1:1", version=4)  # type: ignore[arg-type]


# --- how failures end ------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1])
async def test_unknown_speaker_drops_after_the_headers_and_is_transient(
    backend: CosyVoiceBackend, fake: Fake
) -> None:
    with pytest.raises(Transient) as caught:
        await backend.synthesize(said(voice=Voice(preset="nobody")))

    assert caught.value.error_type == "truncated_body"
    assert "dropped mid-body" in caught.value.message
    assert fake.stats()["dropped"] == {"unknown_spk_id": 1}


@pytest.mark.parametrize("version", [2])
async def test_odd_byte_count_is_a_truncated_body(backend: CosyVoiceBackend, fake: Fake) -> None:
    fake.set(malformed=True)

    with pytest.raises(Transient, match="2-byte frames"):
        await backend.synthesize(said(voice=SPEAKER))


@pytest.mark.parametrize("version", [2])
async def test_missing_field_422_is_permanent_with_fastapis_message(
    backend: CosyVoiceBackend,
) -> None:
    # The schema forbids empty text; an utterance built past it shows what the server says.
    with pytest.raises(Permanent) as caught:
        await backend.synthesize(said("", voice=SPEAKER))

    assert not isinstance(caught.value, InvalidInput)
    assert caught.value.http_status == 422
    assert "tts_text: Field required" in caught.value.message


@pytest.mark.parametrize("version", [1])
async def test_500_is_transient_with_the_plain_text_body(fake: Fake) -> None:
    # A v2 adapter pointed at a v1 server: the route exists, the model raises before streaming.
    async with contextlib.aclosing(CosyVoiceBackend("cosy", fake.url, version=2)) as cosy:
        with pytest.raises(Transient) as caught:
            await cosy.synthesize(cloning(REF, REF_WAV, description="calm"))

    assert (caught.value.http_status, caught.value.error_type) == (500, "http_500")
    assert "Internal Server Error" in caught.value.message


# --- the fake's load model and controls ------------------------------------------------------


@pytest.mark.parametrize("version", [2])
async def test_past_the_knee_bodies_break_off(backend: CosyVoiceBackend, fake: Fake) -> None:
    fake.set(capacity=2, knee=1.5, latency_ms=200)

    broken = [r for r in await at_once(backend, 4, said(voice=SPEAKER)) if isinstance(r, Transient)]
    assert broken
    assert all(r.error_type == "truncated_body" for r in broken)
    assert fake.stats()["dropped"] == {"overload": len(broken)}
    assert fake.stats()["in_flight_max"] == 4


@pytest.mark.parametrize("version", [2])
async def test_past_capacity_latency_grows_with_the_load(
    backend: CosyVoiceBackend, fake: Fake
) -> None:
    fake.set(capacity=1, knee=10, latency_ms=100)
    started = time.monotonic()

    results = await at_once(backend, 3, said(voice=SPEAKER))

    assert time.monotonic() - started >= 0.25  # 100 ms x 3 in flight, not 100 ms
    assert not [r for r in results if isinstance(r, BaseException)]
    assert fake.stats()["completed"] == 3


@pytest.mark.parametrize("version", [1])
async def test_fake_takes_get_and_answers_422_as_fastapi(fake: Fake) -> None:
    async with httpx.AsyncClient(base_url=fake.url) as client:
        await client.post("/control", json={"ms_per_char": 10, "speakers": ["a"]})
        # The upstream client sends its form fields in a GET body.
        spoken = await client.request(
            "GET", "/inference_sft", data={"tts_text": "ab", "spk_id": "a"}
        )
        missing = await client.post("/inference_zero_shot", data={"tts_text": "hi"})
        stats = (await client.get("/stats")).json()

    assert spoken.status_code == 200
    assert len(spoken.content) == 2 * round(22050 * 0.020)
    assert missing.status_code == 422
    assert missing.json() == {
        "detail": [
            {
                "type": "missing",
                "loc": ["body", field],
                "msg": "Field required",
                "input": None,
            }
            for field in ("prompt_text", "prompt_wav")
        ]
    }
    assert stats["routes"] == {"inference_sft": 1, "inference_zero_shot": 1}
    assert stats["statuses"] == {"200": 1, "422": 1}


@pytest.mark.parametrize(
    ("version", "route"), [(1, "inference_instruct2"), (2, "inference_instruct")]
)
async def test_fake_answers_500_for_the_route_the_model_lacks(fake: Fake, route: str) -> None:
    fields = {"tts_text": "hi", "instruct_text": "calm", "spk_id": "中文女"}
    prompt = pcm_to_wav(silence(16000, 1, 2, 500), 16000)
    async with httpx.AsyncClient(base_url=fake.url) as client:
        answer = await client.post(
            f"/{route}", data=fields, files={"prompt_wav": ("p.wav", prompt, "audio/wav")}
        )

    assert (answer.status_code, answer.text) == (500, "Internal Server Error")
