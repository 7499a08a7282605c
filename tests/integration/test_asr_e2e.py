"""The quality gate's ASR round trip end to end, on the real broker and store: the fake OpenAI
speech server makes the audio, the fake transcription server hears scripted text. Heard right:
the request succeeds and its event reports the error rate; heard wrong once: regenerated;
heard wrong every time: dead-lettered as ``quality`` (check ``asr``, the rate in the headers);
transcription server down: the request succeeds, its chunk counted in ``asr_skipped``."""

from __future__ import annotations

import dataclasses

import pytest

from processor.asr import AsrSettings
from processor.ops.client import read_dead_letters
from processor.quality import Thresholds
from processor.settings import Settings
from tests.fakes import asr_server, openai_server
from tests.integration import harness as h
from tests.integration.services import Services

pytestmark = pytest.mark.integration

TEXT = "It was the best of times, it was the worst of times, it was the age of wisdom."
WRONG = "It was the best of crimes, it was the worst of rhymes, in the page of whiskers."


def with_asr(settings: Settings, url: str) -> Settings:
    asr = AsrSettings(url, max_error=0.2, attempts=2, wait_s=2.0, timeout_s=5.0)
    quality = Thresholds(attempts=2, asr=asr)
    return dataclasses.replace(
        settings, backends=dataclasses.replace(settings.backends, quality=quality)
    )


async def test_heard_right_wrong_once_wrong_always_and_down(services: Services) -> None:
    async with (
        openai_server.running_fake(latency_ms=5) as tts,
        asr_server.running_fake(text=TEXT) as asr,
    ):
        settings = with_asr(
            h.unique_settings(services, "asr", backend="openai", backend_url=tts.url), asr.url
        )
        async with h.running(settings):
            await h.produce(settings, [h.request("right", TEXT, language="en")])
            right = (await h.wait_for_events(settings, {"right"}, timeout=60))["right"][0].json()

            asr.set(script=[WRONG])
            await h.produce(settings, [h.request("once", TEXT, language="en")])
            once = (await h.wait_for_events(settings, {"once"}, timeout=60))["once"][0].json()

            asr.set(text=WRONG)
            await h.produce(settings, [h.request("always", TEXT, language="en")])
            always = (await h.wait_for_events(settings, {"always"}, timeout=60))["always"]
            (letter,) = await read_dead_letters(settings.kafka)

            asr.set(down=True)
            await h.produce(settings, [h.request("down", TEXT, language="en")])
            down = (await h.wait_for_events(settings, {"down"}, timeout=60))["down"][0].json()

    assert right["status"] == "succeeded"
    assert (right["quality"]["asr_error_rate"], right["quality"]["asr_skipped"]) == (0.0, 0)

    assert once["status"] == "succeeded"
    assert (once["quality"]["regenerated"], once["quality"]["asr_error_rate"]) == (1, 0.0)

    body = always[0].json()
    assert (body["status"], body["reason"]) == ("failed", "quality")
    assert body["error"]["type"] == "quality_asr"
    assert letter.header("dlq.quality.checks") == "asr"
    assert float(letter.header("dlq.quality.asr_error_rate") or 0) > 0.2

    assert down["status"] == "succeeded"
    assert down["quality"]["asr_skipped"] == 1
    assert "asr_error_rate" not in down["quality"]
