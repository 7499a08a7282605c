"""The seam (``processor/backends/base.py``): what an adapter is handed, and the rules every
adapter shares."""

from __future__ import annotations

import pytest

from processor.backends.base import (
    Utterance,
    finite,
    integer,
    number,
    reference_audio,
    utterance_of,
)
from processor.errors import InvalidInput, Stage
from processor.request import Reference, Request, Voice
from tests.unit.backend_helpers import cloning, loaded, wav

REQUEST = Request(
    request_id="r-1",
    text="One. Two.",
    voice=Voice(preset="narrator"),
    language="en",
    format="mp3",
    sample_rate=16000,
    seed=7,
    params={"speed": 1.5},
    metadata={"book": "7"},
)


def test_an_utterance_is_what_the_request_says_to_speak() -> None:
    said = utterance_of(REQUEST)

    assert said == Utterance(
        text="One. Two.",
        voice=Voice(preset="narrator"),
        language="en",
        seed=7,
        params=REQUEST.params,
    )
    assert said.reference is None


def test_a_chunk_and_a_loaded_reference_replace_the_text_and_fill_the_audio() -> None:
    audio = loaded("s3://refs/a.wav", wav(1000))

    said = utterance_of(REQUEST, "Two.", reference=audio)

    assert (said.text, said.reference, said.seed) == ("Two.", audio, 7)


def test_defaults_speak_plainly() -> None:
    said = Utterance("Hi.")

    assert (said.voice, said.language, said.seed, dict(said.params)) == (Voice(), "auto", None, {})


def test_the_reference_audio_is_handed_over_when_loaded() -> None:
    said = cloning("s3://refs/a.wav", wav(1000))

    assert reference_audio(said).uri == "s3://refs/a.wav"


@pytest.mark.parametrize(
    ("said", "named"),
    [
        (cloning("s3://refs/a.wav", None), "s3://refs/a.wav"),
        (Utterance("Hi.", Voice(reference=None)), "voice.reference"),
    ],
)
def test_a_reference_nobody_loaded_is_invalid_input(said: Utterance, named: str) -> None:
    with pytest.raises(InvalidInput, match="no reference loader is configured") as caught:
        reference_audio(said)

    assert named in caught.value.message
    assert caught.value.stage is Stage.SYNTHESIZE


def test_voice_reference_stays_the_requests() -> None:
    said = utterance_of(Request("r", "Hi.", voice=Voice(reference=Reference("s3://b/k", "t"))))

    assert said.voice.reference == Reference("s3://b/k", "t")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 1.0), (0.5, 0.5), (True, None), ("1", None), (float("nan"), None), (10**400, None)],
)
def test_finite(value: object, expected: float | None) -> None:
    assert finite(value) == expected


def test_number_names_the_field() -> None:
    assert number(2, "params.speed") == 2.0
    with pytest.raises(InvalidInput, match=r"params\.speed must be a finite number"):
        number(float("inf"), "params.speed")


@pytest.mark.parametrize(("value", "expected"), [(3, 3), (900.0, 900)])
def test_integer_takes_whole_numbers(value: object, expected: int) -> None:
    assert integer(value, "params.top_k") == expected


@pytest.mark.parametrize("value", [2.5, False, "3", None, float("inf")])
def test_integer_refuses_the_rest(value: object) -> None:
    with pytest.raises(InvalidInput, match=r"params\.top_k must be an integer"):
        integer(value, "params.top_k")
