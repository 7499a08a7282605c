"""The CosyVoice adapter against the fake CosyVoice FastAPI server, over real sockets."""

from __future__ import annotations

import asyncio
import io
import socket
import sys
import time
import wave
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal

import httpx
import pytest

from processor.audio import pcm_to_wav, silence
from processor.backends.base import ReferenceAudio
from processor.backends.cosyvoice import V3_PREFIX, CosyVoiceBackend, plan_call
from processor.errors import InvalidInput, Permanent, Stage, Transient
from processor.request import Reference, Request, Voice
from tests.fakes.cosyvoice_server import FakeHandle, running_fake

pytestmark = pytest.mark.timeout(30)

REF = "s3://refs/alice.wav"
LOW_RATE = "s3://refs/phone.wav"
TOO_LONG = "s3://refs/lecture.wav"


def reference_audio(uri: str, sample_rate: int, ms: int) -> ReferenceAudio:
    wav = pcm_to_wav(silence(sample_rate, 1, 2, ms), sample_rate)
    return ReferenceAudio(uri, wav, sample_rate, 1, ms)


class DictReferences:
    """A ReferenceLoader over a dict, as the store-backed one behaves for known/unknown URIs."""

    def __init__(self, audio: Mapping[str, ReferenceAudio]) -> None:
        self.audio = dict(audio)
        self.loaded: list[str] = []

    async def load(self, uri: str) -> ReferenceAudio:
        self.loaded.append(uri)
        try:
            return self.audio[uri]
        except KeyError:
            raise InvalidInput(f"no reference audio at {uri}", stage=Stage.SYNTHESIZE) from None


@pytest.fixture
def references() -> DictReferences:
    return DictReferences(
        {
            REF: reference_audio(REF, 16000, 1500),
            LOW_RATE: reference_audio(LOW_RATE, 8000, 1500),
            TOO_LONG: reference_audio(TOO_LONG, 16000, 31_000),
        }
    )


@pytest.fixture(params=[1, 2, 3])
def version(request: pytest.FixtureRequest) -> Literal[1, 2, 3]:
    value: Literal[1, 2, 3] = request.param
    return value


@pytest.fixture
async def fake(version: int) -> AsyncIterator[FakeHandle]:
    async with running_fake(version=version) as handle:
        yield handle


@pytest.fixture
async def backend(
    fake: FakeHandle, version: Literal[1, 2, 3], references: DictReferences
) -> AsyncIterator[CosyVoiceBackend]:
    backend = CosyVoiceBackend("cosy", fake.url, version=version, references=references)
    yield backend
    await backend.aclose()


def request(text: str = "Hello there. How are you?", **fields: Any) -> Request:
    return Request(request_id="r-1", text=text, **fields)


def last(fake: FakeHandle) -> dict[str, Any]:
    sent = fake.stats()["last_request"]
    assert isinstance(sent, dict)
    return sent


def frames_and_rate(data: bytes) -> tuple[int, int, int, int]:
    with wave.open(io.BytesIO(data)) as reader:
        return (
            reader.getnframes(),
            reader.getframerate(),
            reader.getnchannels(),
            reader.getsampwidth(),
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def v3(text: str, version: int) -> str:
    return V3_PREFIX + text if version == 3 else text


# --- request shapes -------------------------------------------------------------------------


async def test_sft_sends_the_preset_and_returns_wav_at_the_model_rate(
    backend: CosyVoiceBackend, fake: FakeHandle, version: int
) -> None:
    audio = await backend.synthesize(request(voice=Voice(preset="英文女")))

    expected_rate = 22050 if version == 1 else 24000
    frames, rate, channels, width = frames_and_rate(audio.data)
    assert (rate, channels, width) == (expected_rate, 1, 2)
    assert (audio.format, audio.sample_rate, audio.channels) == ("wav", expected_rate, 1)
    assert abs(frames * 1000 / rate - audio.duration_ms) <= 1
    assert last(fake) == {
        "route": "inference_sft",
        "method": "POST",
        "fields": {"tts_text": v3("Hello there. How are you?", version), "spk_id": "英文女"},
        "prompt_wav": None,
    }


async def test_longer_text_gives_longer_audio(backend: CosyVoiceBackend) -> None:
    short = await backend.synthesize(request("Hi.", voice=Voice(preset="中文女")))
    long = await backend.synthesize(request("Hi there. " * 20, voice=Voice(preset="中文女")))

    assert long.duration_ms > 10 * short.duration_ms


async def test_zero_shot_sends_the_transcript_and_the_prompt_wav(
    backend: CosyVoiceBackend, fake: FakeHandle, references: DictReferences, version: int
) -> None:
    voice = Voice(reference=Reference(REF, "Nice to meet you."))

    audio = await backend.synthesize(request(voice=voice))

    sent = last(fake)
    assert sent["route"] == "inference_zero_shot"
    assert sent["fields"] == {
        "tts_text": "Hello there. How are you?",
        "prompt_text": v3("Nice to meet you.", version),
    }
    assert sent["prompt_wav"]["size"] == len(references.audio[REF].wav)
    assert (sent["prompt_wav"]["sample_rate"], sent["prompt_wav"]["duration_ms"]) == (16000, 1500)
    assert references.loaded == [REF]
    assert audio.sample_rate == (22050 if version == 1 else 24000)


async def test_reference_without_text_is_cross_lingual(
    backend: CosyVoiceBackend, fake: FakeHandle, version: int
) -> None:
    await backend.synthesize(request(voice=Voice(reference=Reference(REF))))

    sent = last(fake)
    assert sent["route"] == "inference_cross_lingual"
    assert sent["fields"] == {"tts_text": v3("Hello there. How are you?", version)}
    assert sent["prompt_wav"]["sample_rate"] == 16000


async def test_v1_cross_lingual_gets_a_language_tag(references: DictReferences) -> None:
    async with running_fake(version=1) as fake:
        backend = CosyVoiceBackend("cosy", fake.url, version=1, references=references)
        try:
            voice = Voice(reference=Reference(REF))
            await backend.synthesize(request("Good morning.", voice=voice, language="en"))
            tagged = last(fake)["fields"]["tts_text"]
            await backend.synthesize(request("おはよう。", voice=voice, language="ja"))
            japanese = last(fake)["fields"]["tts_text"]
            await backend.synthesize(request("Good morning.", voice=voice))
            untagged = last(fake)["fields"]["tts_text"]
        finally:
            await backend.aclose()

    assert (tagged, japanese, untagged) == (
        "<|en|>Good morning.",
        "<|jp|>おはよう。",
        "Good morning.",
    )


async def test_v1_instruct_uses_the_preset_speaker() -> None:
    async with running_fake(version=1) as fake:
        backend = CosyVoiceBackend("cosy", fake.url, version=1)
        try:
            voice = Voice(preset="中文男", description="A fiery rebel leader.")
            audio = await backend.synthesize(request(voice=voice))
        finally:
            await backend.aclose()

    assert audio.sample_rate == 22050
    assert last(fake) == {
        "route": "inference_instruct",
        "method": "POST",
        "fields": {
            "tts_text": "Hello there. How are you?",
            "spk_id": "中文男",
            "instruct_text": "A fiery rebel leader.<|endofprompt|>",
        },
        "prompt_wav": None,
    }


@pytest.mark.parametrize("version", [2, 3])
async def test_v2_v3_instruct2_restyles_the_reference(
    backend: CosyVoiceBackend, fake: FakeHandle, version: int
) -> None:
    voice = Voice(description="Speak slowly and calmly.", reference=Reference(REF, "ignored"))

    audio = await backend.synthesize(request(voice=voice))

    sent = last(fake)
    assert sent["route"] == "inference_instruct2"
    assert sent["fields"]["tts_text"] == "Hello there. How are you?"
    if version == 3:
        expected = "You are a helpful assistant. Speak slowly and calmly.<|endofprompt|>"
    else:
        expected = "Speak slowly and calmly.<|endofprompt|>"
    assert sent["fields"]["instruct_text"] == expected
    assert sent["prompt_wav"]["sample_rate"] == 16000
    assert audio.sample_rate == 24000


@pytest.mark.parametrize("version", [3])
async def test_v3_marker_already_in_the_text_is_not_doubled(
    backend: CosyVoiceBackend, fake: FakeHandle
) -> None:
    text = "You are a helpful assistant. Whisper.<|endofprompt|>Hello."
    await backend.synthesize(request(text, voice=Voice(preset="中文女")))

    assert last(fake)["fields"]["tts_text"] == text


async def test_the_v3_fake_breaks_off_without_the_marker_as_the_real_model_does() -> None:
    async with running_fake(version=3) as fake, httpx.AsyncClient(base_url=fake.url) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post("/inference_sft", data={"tts_text": "Hello.", "spk_id": "中文女"})

        assert fake.stats()["dropped"] == {"v3_no_endofprompt": 1}


async def test_no_voice_uses_the_default_speaker(
    fake: FakeHandle, version: Literal[1, 2, 3]
) -> None:
    backend = CosyVoiceBackend("cosy", fake.url, version=version, default_speaker="英文男")
    try:
        await backend.synthesize(request())
    finally:
        await backend.aclose()

    assert last(fake)["fields"]["spk_id"] == "英文男"


@pytest.mark.parametrize("fmt", ["wav", "pcm", "mp3", "opus"])
async def test_always_returns_wav_and_ignores_rate_seed_and_speed(
    backend: CosyVoiceBackend, fake: FakeHandle, fmt: str
) -> None:
    asked = request(
        voice=Voice(preset="中文女"), format=fmt, sample_rate=8000, seed=7, params={"speed": 2.0}
    )

    audio = await backend.synthesize(asked)

    assert audio.format == "wav"
    assert audio.data.startswith(b"RIFF")
    assert audio.sample_rate in (22050, 24000)
    assert set(last(fake)["fields"]) == {"tts_text", "spk_id"}


@pytest.mark.parametrize("version", [2])
async def test_configured_sample_rate_overrides_the_version_default(fake: FakeHandle) -> None:
    backend = CosyVoiceBackend("cosy", fake.url, version=2, sample_rate=22050)
    try:
        audio = await backend.synthesize(request(voice=Voice(preset="中文女")))
    finally:
        await backend.aclose()

    assert frames_and_rate(audio.data)[1] == 22050
    assert audio.sample_rate == 22050


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
    backend: CosyVoiceBackend, fake: FakeHandle, voice: Voice, missing: str
) -> None:
    with pytest.raises(InvalidInput, match=missing) as caught:
        await backend.synthesize(request(voice=voice))

    assert caught.value.stage is Stage.SYNTHESIZE
    assert fake.stats()["requests"] == 0


@pytest.mark.parametrize("version", [2])
@pytest.mark.parametrize(
    ("uri", "complaint"),
    [(LOW_RATE, "8000 Hz; cosyvoice needs at least 16000 Hz"), (TOO_LONG, "at most 30 s")],
)
async def test_unusable_reference_audio_is_invalid_input(
    backend: CosyVoiceBackend, fake: FakeHandle, uri: str, complaint: str
) -> None:
    with pytest.raises(InvalidInput, match=complaint):
        await backend.synthesize(request(voice=Voice(reference=Reference(uri, "text"))))

    assert fake.stats()["requests"] == 0


@pytest.mark.parametrize("version", [2])
async def test_loader_errors_pass_through(backend: CosyVoiceBackend) -> None:
    with pytest.raises(InvalidInput, match=r"no reference audio at s3://refs/missing\.wav"):
        await backend.synthesize(request(voice=Voice(reference=Reference("s3://refs/missing.wav"))))


@pytest.mark.parametrize("version", [2])
async def test_reference_without_a_loader_is_invalid_input(fake: FakeHandle) -> None:
    backend = CosyVoiceBackend("cosy", fake.url)
    try:
        with pytest.raises(InvalidInput, match="no reference loader"):
            await backend.synthesize(request(voice=Voice(reference=Reference(REF))))
    finally:
        await backend.aclose()


def test_plan_is_pure_and_names_the_route() -> None:
    call = plan_call(request(voice=Voice(reference=Reference(REF, "hi"))), version=3)

    assert call.route == "inference_zero_shot"
    assert call.prompt_uri == REF
    assert call.fields["prompt_text"] == V3_PREFIX + "hi"


def test_unknown_version_is_refused() -> None:
    with pytest.raises(ValueError, match="1, 2 or 3"):
        CosyVoiceBackend("cosy", "http://127.0.0.1:1", version=4)  # type: ignore[arg-type]


# --- how failures end ------------------------------------------------------------------------


@pytest.mark.parametrize("version", [2])
async def test_connection_dropped_mid_body_is_transient(
    backend: CosyVoiceBackend, fake: FakeHandle
) -> None:
    fake.set(fail_first_n=1)

    with pytest.raises(Transient) as caught:
        await backend.synthesize(request(voice=Voice(preset="中文女")))

    assert caught.value.error_type == "truncated_body"
    assert caught.value.http_status == 200
    assert "dropped mid-body" in caught.value.message
    assert (await backend.synthesize(request(voice=Voice(preset="中文女")))).duration_ms > 0


@pytest.mark.parametrize("version", [1])
async def test_unknown_speaker_drops_after_the_headers_and_is_transient(
    backend: CosyVoiceBackend, fake: FakeHandle
) -> None:
    with pytest.raises(Transient) as caught:
        await backend.synthesize(request(voice=Voice(preset="nobody")))

    assert caught.value.error_type == "truncated_body"
    assert fake.stats()["dropped"] == {"unknown_spk_id": 1}


@pytest.mark.parametrize("version", [2])
async def test_empty_body_is_transient(backend: CosyVoiceBackend, fake: FakeHandle) -> None:
    fake.set(empty_body=True)

    with pytest.raises(Transient) as caught:
        await backend.synthesize(request(voice=Voice(preset="中文女")))

    assert caught.value.error_type == "empty_body"
    assert caught.value.http_status == 200


@pytest.mark.parametrize("version", [2])
async def test_odd_byte_count_is_a_truncated_body(
    backend: CosyVoiceBackend, fake: FakeHandle
) -> None:
    fake.set(malformed=True)

    with pytest.raises(Transient) as caught:
        await backend.synthesize(request(voice=Voice(preset="中文女")))

    assert caught.value.error_type == "truncated_body"
    assert "2-byte frames" in caught.value.message


@pytest.mark.parametrize("version", [2])
async def test_missing_field_422_is_permanent_with_fastapis_message(
    backend: CosyVoiceBackend,
) -> None:
    # The schema forbids empty text; a request built past it shows what the server says.
    with pytest.raises(Permanent) as caught:
        await backend.synthesize(request("", voice=Voice(preset="中文女")))

    assert not isinstance(caught.value, InvalidInput)
    assert caught.value.http_status == 422
    assert "tts_text: Field required" in caught.value.message


@pytest.mark.parametrize("version", [1])
async def test_500_is_transient_with_the_plain_text_body(
    fake: FakeHandle, references: DictReferences
) -> None:
    # A v2 adapter pointed at a v1 server: the route exists, the model raises before streaming.
    backend = CosyVoiceBackend("cosy", fake.url, version=2, references=references)
    try:
        voice = Voice(description="calm", reference=Reference(REF))
        with pytest.raises(Transient) as caught:
            await backend.synthesize(request(voice=voice))
    finally:
        await backend.aclose()

    assert caught.value.http_status == 500
    assert caught.value.error_type == "http_500"
    assert "Internal Server Error" in caught.value.message


async def test_connection_refused_is_transient_connect() -> None:
    backend = CosyVoiceBackend("down", f"http://127.0.0.1:{free_port()}", default_speaker="a")
    try:
        with pytest.raises(Transient) as caught:
            await backend.synthesize(request())
    finally:
        await backend.aclose()

    assert caught.value.error_type == "connect"
    assert caught.value.http_status is None


@pytest.mark.parametrize("version", [2])
async def test_slow_server_is_transient_timeout(fake: FakeHandle) -> None:
    fake.set(latency_ms=2000)
    backend = CosyVoiceBackend("slow", fake.url, timeout=httpx.Timeout(0.2))
    try:
        with pytest.raises(Transient) as caught:
            await backend.synthesize(request(voice=Voice(preset="中文女")))
    finally:
        await backend.aclose()

    assert caught.value.error_type == "timeout"


@pytest.mark.parametrize("version", [2])
async def test_a_given_client_is_used_and_left_open(fake: FakeHandle) -> None:
    async with httpx.AsyncClient() as client:
        backend = CosyVoiceBackend("shared", fake.url, client=client, default_speaker="中文女")
        await backend.synthesize(request())
        await backend.aclose()

        assert not client.is_closed


# --- the fake's load model and controls ------------------------------------------------------


@pytest.mark.parametrize("version", [2])
async def test_past_the_knee_bodies_break_off(backend: CosyVoiceBackend, fake: FakeHandle) -> None:
    fake.set(capacity=2, knee=1.5, latency_ms=200)

    results = await asyncio.gather(
        *(backend.synthesize(request(voice=Voice(preset="中文女"))) for _ in range(4)),
        return_exceptions=True,
    )

    broken = [r for r in results if isinstance(r, Transient)]
    assert broken
    assert all(r.error_type == "truncated_body" for r in broken)
    assert fake.stats()["dropped"] == {"overload": len(broken)}
    assert fake.stats()["in_flight_max"] == 4


@pytest.mark.parametrize("version", [2])
async def test_past_capacity_latency_grows_with_the_load(
    backend: CosyVoiceBackend, fake: FakeHandle
) -> None:
    fake.set(capacity=1, knee=10, latency_ms=100)
    started = time.monotonic()

    await asyncio.gather(
        *(backend.synthesize(request(voice=Voice(preset="中文女"))) for _ in range(3))
    )

    assert time.monotonic() - started >= 0.25  # 100 ms x 3 in flight, not 100 ms
    assert fake.stats()["completed"] == 3


@pytest.mark.parametrize("version", [1])
async def test_fake_is_driven_over_http_and_takes_get(fake: FakeHandle) -> None:
    async with httpx.AsyncClient(base_url=fake.url) as client:
        changed = await client.post("/control", json={"ms_per_char": 10, "speakers": ["a"]})
        refused = await client.post("/control", json={"no_such_switch": 1})
        # The upstream client sends its form fields in a GET body.
        spoken = await client.request(
            "GET", "/inference_sft", data={"tts_text": "ab", "spk_id": "a"}
        )
        missing = await client.post("/inference_zero_shot", data={"tts_text": "hi"})
        stats = (await client.get("/stats")).json()

    assert changed.status_code == 200
    assert refused.status_code == 400
    assert spoken.status_code == 200
    assert len(spoken.content) == 2 * round(22050 * 0.020)
    assert missing.status_code == 422
    assert missing.json() == {
        "detail": [
            {
                "type": "missing",
                "loc": ["body", "prompt_text"],
                "msg": "Field required",
                "input": None,
            },
            {
                "type": "missing",
                "loc": ["body", "prompt_wav"],
                "msg": "Field required",
                "input": None,
            },
        ]
    }
    assert stats["switches"]["ms_per_char"] == 10
    assert stats["routes"] == {"inference_sft": 1, "inference_zero_shot": 1}
    assert stats["statuses"] == {"200": 1, "422": 1}


@pytest.mark.parametrize(
    ("version", "route"), [(1, "inference_instruct2"), (2, "inference_instruct")]
)
async def test_fake_answers_500_for_the_route_the_model_lacks(fake: FakeHandle, route: str) -> None:
    fields = {"tts_text": "hi", "instruct_text": "calm", "spk_id": "中文女"}
    wav = pcm_to_wav(silence(16000, 1, 2, 500), 16000)
    async with httpx.AsyncClient(base_url=fake.url) as client:
        answer = await client.post(
            f"/{route}", data=fields, files={"prompt_wav": ("p.wav", wav, "audio/wav")}
        )

    assert (answer.status_code, answer.text) == (500, "Internal Server Error")


async def test_cli_prints_the_port_and_serves() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.cosyvoice_server",
        "--port",
        "0",
        "--version",
        "1",
        "--capacity",
        "3",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        assert line.startswith(b"LISTENING ")
        port = int(line.split()[1])
        async with httpx.AsyncClient() as client:
            stats = (await client.get(f"http://127.0.0.1:{port}/stats")).json()
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)

    assert stats["sample_rate"] == 22050
    assert stats["switches"]["capacity"] == 3
    assert process.returncode == 0
