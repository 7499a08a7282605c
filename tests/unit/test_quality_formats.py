"""Audio that is not WAV and the quality gate (issue 12).

Every built-in adapter asks its server for WAV or raw PCM (OpenAI-compatible and Qwen:
``response_format: "wav"``; Fish: ``format: "wav"``; CosyVoice answers raw PCM, wrapped in a
WAV; espeak-ng writes WAV), so every chunk they deliver is a WAV the gate decodes. A server that
answers another format anyway (an OpenAI-compatible server's default is MP3; Fish's hosted API
defaults to MP3) never reaches the gate: the adapter refuses the body as ``malformed_audio``, a
transient error the pipeline retries. Audio another format than WAV handed to the gate is passed
unmeasured, as the README says.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from processor.backends.base import Audio, Backend, Utterance
from processor.backends.fish import FishSpeechBackend
from processor.backends.openai import OpenAIBackend
from processor.backends.qwen import QwenTTSBackend
from processor.errors import Transient
from processor.observability import Metrics
from processor.quality import Thresholds
from processor.quality_gate import QualityGate
from processor.testing import speechlike
from tests.fakes.common import serve, wav_bytes
from tests.unit.programs import required

pytestmark = pytest.mark.timeout(30)

TEXT = "Hello there, world."
RATE = 24_000


def mp3_of(wav: bytes) -> bytes:
    ffmpeg = required("ffmpeg")
    out = subprocess.run(
        [ffmpeg, "-v", "error", "-f", "wav", "-i", "pipe:0", "-f", "mp3", "pipe:1"],
        input=wav,
        capture_output=True,
        check=True,
    )
    return out.stdout


ADAPTERS: dict[str, tuple[str, str, Callable[[str], Backend]]] = {
    "openai": ("/v1/audio/speech", "response_format", lambda url: OpenAIBackend("o", url)),
    "qwen": ("/v1/audio/speech", "response_format", lambda url: QwenTTSBackend("q", url)),
    "fish": ("/v1/tts", "format", lambda url: FishSpeechBackend("f", url)),
}


@pytest.mark.parametrize("family", sorted(ADAPTERS))
async def test_an_adapter_asks_for_wav_and_refuses_mp3_as_malformed_audio(family: str) -> None:
    path, field, make = ADAPTERS[family]
    mp3 = mp3_of(wav_bytes(speechlike(1500, RATE), RATE))
    asked: list[dict[str, Any]] = []

    async def answer(request: web.Request) -> web.Response:
        asked.append(json.loads(await request.read()))
        return web.Response(body=mp3, content_type="audio/mpeg")

    app = web.Application()
    app.router.add_post(path, answer)
    async with serve(app) as port:
        backend = make(f"http://127.0.0.1:{port}")
        try:
            with pytest.raises(Transient) as caught:
                await backend.synthesize(Utterance(TEXT))
        finally:
            await backend.aclose()
    assert caught.value.error_type == "malformed_audio"
    (body,) = asked
    assert body[field] == "wav", "the adapter asks for WAV"


async def test_audio_in_another_format_is_passed_unmeasured() -> None:
    gate = QualityGate(Thresholds(), Metrics())
    mp3 = mp3_of(wav_bytes(speechlike(1500, RATE), RATE))
    measures, failed = await gate.check(Audio(mp3, "mp3", RATE, 1, 1500), Utterance(TEXT))
    assert (measures, failed) == ({}, [])
    wav = wav_bytes(speechlike(1500, RATE), RATE)
    measures, failed = await gate.check(Audio(wav, "wav", RATE, 1, 1500), Utterance(TEXT))
    assert failed == []
    assert measures["duration_s"] == 1.5
