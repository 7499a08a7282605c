"""Speech marks and subtitles through the pipeline on a recording backend: the sidecars beside
the audio, their URIs in the event, and timing truth (every mark at a silence or a piece
boundary the joiner measured; cues at the sentence marks; the last cue at the audio's end)."""

from __future__ import annotations

import json
from typing import Any

import pysubs2

from processor.audio import wav_info
from processor.backends.base import Audio, Utterance
from processor.segments import Joined, Piece, Plan, Timing, plain_script
from processor.ssml import Voicing
from processor.subtitles import LINE_CHARS, LINES, MAX_CUE_MS, cues
from tests.unit.test_pipeline import World, record
from tests.unit.test_ssml import MS_PER_CHAR, RATE, loud, zero_runs

TEXT = "The first sentence is here. A second one follows it! And a third?"
SSML = (
    "<speak><s>Intro.</s><break time='700ms'/><mark name='chapter-1'/>"
    "<s>Chapter one starts.</s><mark name='end'/></speak>"
)


def objects(world: World) -> dict[str, bytes]:
    return {key: value[0] for key, value in world.store.objects.items()}


def marks_of(world: World) -> list[dict[str, Any]]:
    lines = objects(world)["r0.marks.jsonl"].decode().splitlines()
    return [json.loads(line) for line in lines]


def mark_errors_ms(wav: bytes, marks: list[dict[str, Any]]) -> list[float]:
    """For each mark, how far (ms) it is from the audio's start or the end of a silence."""
    edges = [0] + [start + frames for start, frames in zero_runs(wav)]
    return [min(abs(m["time"] * RATE / 1000 - e) for e in edges) * 1000 / RATE for m in marks]


async def test_sentence_marks_are_measured_and_point_into_the_text() -> None:
    world = World(audio=loud)
    assert await world.pipeline.handle(record(text=TEXT, marks=["sentence"])) == "succeeded"
    marks = marks_of(world)
    assert [TEXT[m["start"] : m["end"]] for m in marks] == [m["value"] for m in marks]
    assert [m["value"] for m in marks] == [
        "The first sentence is here.",
        "A second one follows it!",
        "And a third?",
    ]
    assert [c.text for c in world.backend.calls] == [m["value"] for m in marks]
    errors = mark_errors_ms(objects(world)["r0.wav"], marks)
    print(f"largest sentence mark error: {max(errors):.3f} ms")
    assert max(errors) <= 1.0
    (event,) = world.events()
    assert event["marks"] == "s3://memory/r0.marks.jsonl"


async def test_acx_room_tone_before_the_speech_moves_every_mark_by_its_length() -> None:
    plain, acx = World(audio=loud), World(audio=loud)
    assert await plain.pipeline.handle(record(text=TEXT, marks=["sentence"])) == "succeeded"
    rec = record(text=TEXT, marks=["sentence"], mastering="acx")
    assert await acx.pipeline.handle(rec) == "succeeded"
    moved = [b["time"] - a["time"] for a, b in zip(marks_of(plain), marks_of(acx), strict=True)]
    assert moved == [750, 750, 750]


async def test_ssml_marks_stand_at_the_start_of_what_follows_them() -> None:
    world = World(audio=loud)
    rec = record(text=SSML, text_type="ssml", marks=["ssml", "sentence"])
    assert await world.pipeline.handle(rec) == "succeeded"
    marks = marks_of(world)
    assert [(m["type"], m["value"]) for m in marks] == [
        ("sentence", "Intro."),
        ("ssml", "chapter-1"),
        ("sentence", "Chapter one starts."),
        ("ssml", "end"),
    ]
    intro_ms = MS_PER_CHAR * len("Intro.")
    assert marks[1]["time"] == marks[2]["time"] == intro_ms + 700
    wav = objects(world)["r0.wav"]
    assert marks[3]["time"] == wav_info(wav).duration_ms
    assert SSML[marks[1]["start"] :].startswith("<mark name='chapter-1'/>")
    errors = mark_errors_ms(wav, marks[:3])
    print(f"largest ssml/sentence mark error: {max(errors):.3f} ms")
    assert max(errors) <= 1.0


async def test_word_marks_are_refused_before_any_call() -> None:
    world = World(audio=loud)
    assert await world.pipeline.handle(record(text=TEXT, marks=["word"])) == "failed"
    (letter,) = world.dead_letters()
    assert letter.header("dlq.reason") == "invalid_input"
    assert letter.header("dlq.error.type") == "word_marks_unsupported"
    assert world.backend.calls == []


async def test_subtitles_cue_at_the_sentence_marks_and_end_with_the_audio() -> None:
    world = World(audio=loud)
    rec = record(text=TEXT, marks=["sentence"], subtitles=["srt", "vtt"])
    assert await world.pipeline.handle(rec) == "succeeded"
    files = objects(world)
    assert files["r0.vtt"].startswith(b"WEBVTT")
    marks = [m["time"] for m in marks_of(world)]
    duration = wav_info(files["r0.wav"]).duration_ms
    for ext in ("srt", "vtt"):
        subs = pysubs2.SSAFile.from_string(files[f"r0.{ext}"].decode())
        assert [e.start for e in subs.events] == marks
        assert abs(subs.events[-1].end - duration) <= 50
    (event,) = world.events()
    assert event["subtitles"] == {"srt": "s3://memory/r0.srt", "vtt": "s3://memory/r0.vtt"}


def test_a_long_sentence_is_cut_at_clauses_into_cues_that_fit() -> None:
    sentence = (
        "When the narrator reads a sentence this long, with several clauses in it, "
        "the subtitles must still fit in two lines of forty-two characters, "
        "and no cue may stay on screen for more than seven seconds"
    )
    piece = Piece(sentence, Voicing(), 0, 0, len(sentence), 0)
    frames = RATE * 12  # 12 s of speech
    timing = Timing(
        Plan(plain_script(sentence), (piece,)), Joined(loud_audio(frames), (0,), (frames,))
    )
    found = cues(timing)
    assert len(found) > 1
    assert found[0].start_ms == 0
    assert found[-1].end_ms == 12_000
    for cue in found:
        assert len(cue.lines) <= LINES
        assert all(len(line) <= LINE_CHARS for line in cue.lines)
        assert cue.end_ms - cue.start_ms <= MAX_CUE_MS
    assert " ".join(" ".join(c.lines) for c in found) == sentence


def loud_audio(frames: int) -> Audio:
    return loud(Utterance("x" * (frames * 1000 // RATE // MS_PER_CHAR)))
