"""Issue 11 end to end on the real broker and store with espeak-ng: an English and a Chinese
chapter in SSML with a PLS lexicon from the refs bucket, speech marks and both subtitle
formats. Every object exists, the break is exact digital silence, every mark stands at the
end of a silence the joiner wrote, cues start at the sentence marks and the last cue ends
with the audio."""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

import aioboto3
import pysubs2
import pytest

from processor.audio import wav_pcm
from processor.config import ReferenceConfig
from tests.integration import harness
from tests.integration.services import Services

pytestmark = pytest.mark.integration

REFS = "voxline-refs"
NS = 'xmlns="http://www.w3.org/2005/01/pronunciation-lexicon"'
PLS = (
    f'<lexicon version="1.0" {NS} alphabet="ipa" xml:lang="en">'
    "<lexeme><grapheme>W3C</grapheme><alias>World Wide Web Consortium</alias></lexeme>"
    "<lexeme><grapheme>重庆市</grapheme><alias>重庆城</alias></lexeme>"
    "</lexicon>"
)
EN = (
    "<speak><p><s>Chapter one.</s><break time='1500ms'/><mark name='start'/>"
    "<s>The W3C wrote the <sub alias='Speech Synthesis Markup Language'>SSML</sub> standard."
    "</s><s>It was published on <say-as interpret-as='date'>2010-09-07</say-as>.</s></p></speak>"
)
ZH = (
    "<speak><p><s>第一章。</s><break time='1500ms'/><mark name='start'/>"
    "<s>我住在重庆市，电话是<say-as interpret-as='telephone'>555-1234</say-as>。</s></p></speak>"
)

#: What the lexicon, <sub> and <say-as> must have put into the backend's input.
SPOKEN = {
    "ch-en": ["World Wide Web Consortium", "Speech Synthesis Markup Language", "September 7, 2010"],
    "ch-zh": ["重庆城", "五五五，一二三四"],
}


def silent_runs(pcm: bytes) -> list[tuple[int, int]]:
    """(first frame, end frame) of each run of zero 16-bit mono samples."""
    runs, start = [], None
    for i in range(0, len(pcm) + 2, 2):
        zero = i < len(pcm) and pcm[i : i + 2] == b"\0\0"
        if zero and start is None:
            start = i // 2
        elif not zero and start is not None:
            runs.append((start, i // 2))
            start = None
    return runs


def around(runs: list[tuple[int, int]], ms: float, time_ms: int) -> tuple[int, int]:
    """The silent run holding ``time_ms`` (its end may be 1 ms before: rounding)."""
    held = [r for r in runs if r[0] * ms <= time_ms <= r[1] * ms + 1]
    assert held, f"no silence at {time_ms} ms"
    return held[0]


async def test_ssml_chapters_with_a_lexicon_marks_and_subtitles(
    services: Services, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = harness.unique_settings(services, "ssml", max_in_flight=4)
    refs = ReferenceConfig(allowed_buckets=frozenset({REFS}))
    settings = dataclasses.replace(
        settings, backends=dataclasses.replace(settings.backends, references=refs)
    )
    key = f"tests/ssml-{uuid.uuid4().hex[:8]}/names.pls"
    async with aioboto3.Session().client("s3", endpoint_url=services.s3_endpoint_url) as s3:
        await s3.put_object(Bucket=REFS, Key=key, Body=PLS.encode())
    asks: dict[str, Any] = {
        "text_type": "ssml",
        "lexicons": [f"s3://{REFS}/{key}"],
        "marks": ["sentence", "ssml"],
        "subtitles": ["srt", "vtt"],
    }
    chapters = {"ch-en": (EN, "en"), "ch-zh": (ZH, "zh")}
    async with harness.running(settings):
        await harness.produce(
            settings,
            [harness.request(rid, t, language=lang, **asks) for rid, (t, lang) in chapters.items()],
        )
        events = await harness.wait_for_events(settings, set(chapters), timeout=120)
    worst = lead = 0.0
    for rid in chapters:
        (event,) = events[rid]
        body = event.json()
        assert body["status"] == "succeeded", body
        uris = [body["audio"]["uri"], body["marks"], *body["subtitles"].values()]
        assert sorted(body["subtitles"]) == ["srt", "vtt"]
        objects = await harness.get_objects(services, uris)
        info, pcm = wav_pcm(objects[body["audio"]["uri"]][0])
        ms = 1000 / info.sample_rate
        runs = silent_runs(pcm)
        marks = [json.loads(x) for x in objects[body["marks"]][0].decode().splitlines()]
        sentences = [m for m in marks if m["type"] == "sentence"]
        (start,) = [m for m in marks if m["type"] == "ssml"]
        assert start["value"] == "start"
        spoken = " ".join(m["value"] for m in sentences)  # what the backend was sent
        for said in SPOKEN[rid]:
            assert said in spoken, (rid, spoken)
        # The break: 1.5 s of digital silence (+-1 frame, espeak's own may add) before 'start'.
        # The break: 1.5 s of digital silence (+-1 frame; espeak's own silence may add to
        # it) up to the 'start' mark.
        run = around(runs, ms, start["time"])
        assert (run[1] - run[0]) * ms >= 1500 - ms
        assert start["time"] - run[0] * ms >= 1500 - ms, "the break lies before the mark"
        # Timing truth: every later mark is in silence that began at least a sentence gap
        # (200 ms, written by the joiner) before it; espeak's leading silence may follow it.
        for mark in marks:
            if mark["time"] == 0:
                continue
            run = around(runs, ms, mark["time"])
            assert mark["time"] - run[0] * ms >= 200 - ms, (rid, mark)
            worst = max(worst, max(0.0, mark["time"] - run[1] * ms))
            lead = max(lead, run[1] * ms - mark["time"])
        duration = body["audio"]["duration_ms"]
        for ext in ("srt", "vtt"):
            text = objects[body["subtitles"][ext]][0].decode()
            subs = pysubs2.SSAFile.from_string(text)
            cue_starts = [e.start for e in subs.events]
            assert {m["time"] for m in sentences} <= set(cue_starts)
            assert cue_starts == sorted(cue_starts)
            assert abs(subs.events[-1].end - duration) <= 50
    with capsys.disabled():
        print(
            f"\n[figure] SSML chapters en+zh (espeak-ng): largest mark error {worst:.2f} ms "
            f"(mark after its silence); espeak's own leading silence after a mark up to "
            f"{lead:.0f} ms"
        )
