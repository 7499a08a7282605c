"""SSML in: the hardened parser, the rendering into segments and silences, and the pipeline
speaking it through a recording backend (exact silences, sub aliases, hostile documents)."""

from __future__ import annotations

import math
import time
import tracemalloc

import numpy as np
import pytest

from processor.audio import pcm_to_wav, wav_pcm
from processor.backends.base import Audio, Utterance
from processor.errors import InvalidInput
from processor.segments import Plan, pieces
from processor.ssml import MAX_DEPTH, parse_ssml
from processor.ssml_say import say_as
from processor.tempo import atempo_filter, tempo_parts
from processor.testing import speechlike
from tests.unit.test_pipeline import World, record

RATE = 16_000


#: The pace of ``loud``: a voice's (it passes the quality gate's duration check).
MS_PER_CHAR = 80


def loud(call: Utterance) -> Audio:
    """Speech-like audio without a zero sample, ``MS_PER_CHAR`` a character, so a run of zero
    samples is a joiner's silence."""
    frames = RATE * MS_PER_CHAR * len(call.text) // 1000
    pcm = np.frombuffer(speechlike(frames * 1000 / RATE, RATE), "<i2")
    data = np.where(pcm == 0, 1, pcm).astype("<i2").tobytes()
    return Audio(pcm_to_wav(data, RATE), "wav", RATE, 1, MS_PER_CHAR * len(call.text))


def zero_runs(wav: bytes) -> list[tuple[int, int]]:
    """(first frame, frames) of each run of digital silence in a 16-bit mono WAV."""
    _, pcm = wav_pcm(wav)
    samples = [pcm[i : i + 2] for i in range(0, len(pcm), 2)]
    runs, start = [], None
    for i, sample in enumerate([*samples, b"\x01\x00"]):
        if sample == b"\x00\x00" and start is None:
            start = i
        elif sample != b"\x00\x00" and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


BOMB = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10 if i else "&lol;" * 10}">' for i in range(9))
    + "]><speak>&lol8;</speak>"
)
EXTERNAL = '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><speak>&e;</speak>'
DEEP = "<speak>" + "<p>" * 10_000 + "x" + "</p>" * 10_000 + "</speak>"
HUGE = "<speak>" + "a " * 2_500_000 + "</speak>"


@pytest.mark.parametrize(
    "document", [BOMB, EXTERNAL, DEEP, HUGE], ids=["laughs", "xxe", "deep", "5MB"]
)
def test_hostile_ssml_is_refused_fast_and_flat(document: str) -> None:
    tracemalloc.start()
    started = time.process_time()
    with pytest.raises(InvalidInput) as caught:
        parse_ssml(document)
    took = time.process_time() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert caught.value.error_type == "ssml"
    assert took < 0.1
    # Nothing grows past a copy of the document (an expanded bomb would be ~1 GB).
    assert peak < 2 * len(document.encode()) + 1_000_000


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ("<speak>\n<p>Hi <audio src='x'/></p></speak>", "<audio> at line 2: element not supported"),
        ("<speak>\n\n<p>unclosed</speak>", "mismatched tag (line 3"),
        ("<p>no speak</p>", "<p> at line 1: the root element must be <speak>"),
        ('<speak><break time="soon"/>x</speak>', "<break> at line 1: time 'soon'"),
        ('<speak><prosody pitch="high">x</prosody></speak>', "attribute 'pitch' not supported"),
        ('<speak><say-as interpret-as="ordinal">x</say-as></speak>', "<say-as> at line 1"),
        ("<speak><sub alias='a'><s>x</s></sub></speak>", "<s> at line 1: not allowed inside <sub>"),
        (
            "<speak>" + "<p>" * (MAX_DEPTH + 1) + "x" + "</p>" * (MAX_DEPTH + 1) + "</speak>",
            "deeper",
        ),
    ],
)
def test_unsupported_or_malformed_ssml_names_the_element_and_line(document: str, says: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_ssml(document)
    assert says in caught.value.message


def test_rendering_into_segments_gaps_and_marks() -> None:
    script = parse_ssml(
        "<speak><p><s>Hello <sub alias='World Wide Web Consortium'>W3C</sub>.</s>"
        "<break time='1.5s'/><s>Two</s></p><mark name='m'/>"
        "<lang xml:lang='zh'>你好</lang><voice name='en+f3'><prosody rate='200%'>Fast"
        "</prosody></voice> <emphasis>yes</emphasis></speak>"
    )
    texts = [s.text for s in script.segments]
    assert texts == ["Hello World Wide Web Consortium.", "Two", "你好", "Fast", "yes"]
    assert script.gaps == (0, 1500, 200, 0, 0)
    assert [(m.name, at) for m, at in script.marks] == [("m", 2)]
    assert script.segments[2].voicing.language == "zh"
    assert script.segments[3].voicing.preset == "en+f3"
    assert script.segments[3].voicing.rate == 2.0
    assert any("emphasis" in note for note in script.notes)


def test_phonemes_go_to_a_backend_that_takes_them_and_fall_back_elsewhere() -> None:
    document = "<speak><phoneme alphabet='x-espeak' ph=\"t@m'A:toU\">tomato</phoneme></speak>"
    assert parse_ssml(document, phonemes=True).segments[0].text == "[[t@m'A:toU]]"
    fallback = parse_ssml(document, phonemes=False)
    assert fallback.segments[0].text == "tomato"
    assert fallback.notes


@pytest.mark.parametrize(
    ("kind", "body", "language", "spoken"),
    [
        ("characters", "ABC", "en", "A B C"),
        ("spell-out", "A1", "zh", "A 一"),
        ("cardinal", "1,234", "en", "1234"),
        ("ordinal", "21", "en", "21st"),
        ("ordinal", "12", "en", "12th"),
        ("ordinal", "3", "zh", "第3"),
        ("digits", "1203", "en", "1 2 0 3"),
        ("digits", "1203", "zh", "一二零三"),
        ("telephone", "555-1234", "en", "5 5 5, 1 2 3 4"),
        ("date", "2024-01-05", "en", "January 5, 2024"),
        ("date", "2024-01-05", "zh", "2024年1月5日"),
    ],
)
def test_say_as(kind: str, body: str, language: str, spoken: str) -> None:
    assert say_as(kind, body, language) == spoken


async def test_a_break_is_exact_digital_silence_at_its_place() -> None:
    world = World(audio=loud)
    ssml = '<speak>One two.<break time="1500ms"/>Three.</speak>'
    assert await world.pipeline.handle(record(text=ssml, text_type="ssml")) == "succeeded"
    assert [c.text for c in world.backend.calls] == ["One two.", "Three."]
    wav = world.store.objects["r0.wav"][0]
    ((start, frames),) = zero_runs(wav)
    assert start == RATE * MS_PER_CHAR * len("One two.") // 1000, "after the first segment"
    assert abs(frames - RATE * 1.5) <= 1


async def test_sub_alias_changes_what_the_backend_receives() -> None:
    world = World(audio=loud)
    ssml = "<speak>The <sub alias='World Wide Web Consortium'>W3C</sub> met.</speak>"
    assert await world.pipeline.handle(record(text=ssml, text_type="ssml")) == "succeeded"
    assert [c.text for c in world.backend.calls] == ["The World Wide Web Consortium met."]


async def test_hostile_ssml_is_dead_lettered_as_invalid_input_before_any_call() -> None:
    world = World()
    started = time.process_time()
    assert await world.pipeline.handle(record(text=BOMB, text_type="ssml")) == "failed"
    assert time.process_time() - started < 0.1, "CPU time, so a busy machine cannot fail it"
    (letter,) = world.dead_letters()
    assert letter.header("dlq.reason") == "invalid_input"
    assert "DOCTYPE" in (letter.header("dlq.error.message") or "")
    assert world.backend.calls == []


@pytest.mark.parametrize("rate", [0.3, 0.75, 2.0, 3.5])
def test_the_atempo_chain_multiplies_to_the_rate_in_steps_ffmpeg_takes(rate: float) -> None:
    factors = [float(step.removeprefix("atempo=")) for step in atempo_filter(rate).split(",")]
    assert all(0.5 <= f <= 2.0 for f in factors)
    assert math.prod(factors) == pytest.approx(rate, rel=1e-4)


async def test_prosody_rate_changes_the_tempo_where_the_server_takes_no_speed() -> None:
    script = parse_ssml("<speak>Slow <prosody rate='200%'>fast part</prosody></speak>")
    plan = Plan(script, tuple(pieces(script, 1000, sentences=False)))
    second = loud(Utterance("x" * (1000 // MS_PER_CHAR)))  # about 1 s
    parts = await tempo_parts([second, second], plan, "cosyvoice")
    assert parts[0] is second, "rate 1: untouched"
    assert abs(parts[1].duration_ms - second.duration_ms / 2) <= 30
    assert await tempo_parts([second, second], plan, "espeak") == [second, second]
