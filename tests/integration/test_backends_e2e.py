"""Several backends at once on the real broker and store: routing by the request's
``backend`` field, one failing backend held (not dead-lettered) while the others carry on,
and long text split, synthesized in chunks and joined into one object."""

from __future__ import annotations

import io
import json
import wave
from pathlib import Path

import pytest

from processor.audio import wav_info
from processor.backends.base import Utterance
from processor.backends.cosyvoice import CosyVoiceBackend
from processor.backends.espeak import EspeakBackend
from processor.chunking import split_text
from processor.request import Voice
from processor.store import S3Store
from tests.fakes.cosyvoice_server import running_fake as cosyvoice_fake
from tests.fakes.fish_server import running_fake as fish_fake
from tests.integration.harness import (
    get_objects,
    produce,
    read_topic,
    request,
    running,
    unique_settings,
    wait_for_events,
)
from tests.integration.services import Services
from tests.unit.test_chunking import EN_CHAPTER, ZH_PARAGRAPHS, repeat_to

pytestmark = pytest.mark.integration
SILENCE_MS = 200  # processor.audio.join_wavs' default gap between chunks


def _config(tmp_path: Path, cosy_url: str, fish_url: str) -> str:
    path = tmp_path / "voxline.toml"
    path.write_text(
        f"""
default_backend = "espeak"

[backends.espeak]
kind = "espeak"
max_in_flight = 2
text_limit = 1000

[backends.cosy]
kind = "cosyvoice"
url = "{cosy_url}"
max_in_flight = 4
text_limit = 300
[backends.cosy.options]
version = 2
default_speaker = "中文女"

[backends.fish]
kind = "fish"
url = "{fish_url}"
max_in_flight = 2
""",
        encoding="utf-8",
    )
    return str(path)


async def test_three_backends_one_failing_the_others_unaffected(
    services: Services, tmp_path: Path
) -> None:
    async with (
        cosyvoice_fake(latency_ms=20, ms_per_char=250) as cosy,  # a Chinese voice's pace
        fish_fake(fail_first_n=1_000_000) as fish,  # answers 500 to everything
    ):
        settings = unique_settings(
            services, "three", config_path=_config(tmp_path, cosy.url, fish.url)
        )
        espeak_ids = [f"es-{i}" for i in range(20)]
        cosy_ids = [f"cv-{i}" for i in range(20)]
        fish_ids = [f"fi-{i}" for i in range(20)]
        records = []
        for i in range(20):  # the failing backend's requests come first in every round
            records.append(request(fish_ids[i], "A voice from the broken server.", backend="fish"))
            records.append(request(espeak_ids[i], "Hello from the embedded backend."))
            records.append(request(cosy_ids[i], "你好，欢迎收听。", backend="cosy"))
        async with running(settings) as app:
            await produce(settings, records)
            events = await wait_for_events(settings, set(espeak_ids + cosy_ids), timeout=120)
            assert app.pipeline is not None
            fish_gate = app.pipeline.routes["fish"].gate
            assert fish_gate.is_open, "the failing backend's breaker should be open"
            assert not any(rid in events for rid in fish_ids), "held, not dead-lettered"
        assert await read_topic(settings.kafka, settings.kafka.dlq_topic) == []
    for rid in espeak_ids + cosy_ids:
        (event,) = events[rid]
        body = event.json()
        assert body["status"] == "succeeded"
        assert body["backend"] == ("cosy" if rid.startswith("cv-") else "espeak")
    fish_calls = fish.stats()["requests"]
    assert isinstance(fish_calls, int)
    assert fish_calls < 40, "an open breaker keeps calls away from a dead backend"


async def _expected_duration(backend: object, chunks: list[str], voice: Voice) -> int:
    """Duration of the chunks synthesized one by one, plus the gaps the joiner puts between."""
    total_frames = 0
    rate = 0
    for text in chunks:
        audio = await backend.synthesize(  # type: ignore[attr-defined]
            Utterance(text=text, voice=voice)
        )
        info = wav_info(audio.data)
        total_frames += info.frames
        rate = info.sample_rate
    total_frames += round(rate * SILENCE_MS / 1000) * (len(chunks) - 1)
    return round(total_frames * 1000 / rate)


async def test_long_texts_become_one_object_as_long_as_their_chunks(
    services: Services, tmp_path: Path
) -> None:
    zh = repeat_to(ZH_PARAGRAPHS, 5000)
    en = repeat_to([EN_CHAPTER], 5000)
    # 250 ms a character: a Chinese voice's pace (the quality gate checks the duration)
    async with cosyvoice_fake(ms_per_char=250) as cosy, fish_fake() as fish:
        settings = unique_settings(
            services, "long", config_path=_config(tmp_path, cosy.url, fish.url)
        )
        async with running(settings):
            await produce(
                settings,
                [
                    request("zh-chapter", zh, backend="cosy", language="zh"),
                    request("en-chapter", en, language="en"),
                ],
            )
            events = await wait_for_events(settings, {"zh-chapter", "en-chapter"}, timeout=300)
        direct = CosyVoiceBackend("cosy", cosy.url, version=2, default_speaker="中文女")
        zh_expected = await _expected_duration(direct, split_text(zh, 300), Voice())
        await direct.aclose()
    espeak = EspeakBackend("espeak")
    en_expected = await _expected_duration(espeak, split_text(en, 1000), Voice(preset=None))
    await espeak.aclose()

    zh_body, en_body = events["zh-chapter"][0].json(), events["en-chapter"][0].json()
    assert zh_body["status"] == en_body["status"] == "succeeded", (zh_body, en_body)
    assert zh_body["chunks"] == len(split_text(zh, 300)) >= 17
    assert en_body["chunks"] == len(split_text(en, 1000)) >= 5
    objects = await get_objects(services, [zh_body["audio"]["uri"], en_body["audio"]["uri"]])
    for body, expected in ((zh_body, zh_expected), (en_body, en_expected)):
        data, _ = objects[body["audio"]["uri"]]
        with wave.open(io.BytesIO(data)) as wav:
            measured = round(wav.getnframes() * 1000 / wav.getframerate())
        assert abs(measured - expected) <= body["chunks"], (measured, expected)
        assert abs(body["audio"]["duration_ms"] - measured) <= 1
    assert json.loads(json.dumps(zh_body))["audio"]["sample_rate"] == 24000


async def test_a_chunk_failing_for_good_fails_the_request_and_publishes_no_audio(
    services: Services, tmp_path: Path
) -> None:
    text = repeat_to(ZH_PARAGRAPHS, 3000)
    chunks = split_text(text, 1000)
    assert max(map(len, chunks)) > 600 > min(map(len, chunks)), "some chunks pass, some fail"
    async with cosyvoice_fake() as cosy, fish_fake(max_prompt_chars=600) as fish:
        settings = unique_settings(
            services, "partial", config_path=_config(tmp_path, cosy.url, fish.url)
        )
        async with running(settings):
            await produce(settings, [request("too-long-chunk", text, backend="fish")])
            events = await wait_for_events(settings, {"too-long-chunk"}, timeout=120)
        (event,) = events["too-long-chunk"]
        body = event.json()
        assert body["status"] == "failed"
        assert body["reason"] == "permanent"
        assert "Prompt is too long" in body["error"]["message"]
        key = f"{settings.store.prefix}too-long-chunk.wav"
        async with S3Store(
            services.bucket, endpoint_url=services.s3_endpoint_url, region="us-east-1"
        ) as store:
            assert not await store.exists(key), "no partial audio may be published"
