"""The quality gate's signal checks: every failure mode of the fakes is caught by its check,
and good audio passes (the fakes' tone and speech-like audio, and real espeak-ng output in
English, Chinese and Japanese)."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from processor import quality_signal
from processor.audio import pcm_to_wav
from processor.quality import Thresholds, decode, failures, measure, spoken_length
from tests.fakes.bad_audio import float_wav, speechlike, spoil
from tests.fakes.common import tone, wav_bytes
from tests.fakes.texts import ESPEAK_VOICE, chunks
from tests.unit.programs import required

T = Thresholds()
RATE = 24_000
TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, "
    "it was the age of foolishness, it was the epoch of belief."
)
#: The check each failure mode must trip (others may trip too).
CAUGHT_BY = {
    "silence": "silence",
    "cut": "duration",
    "loop": "repetition",
    "babble": "duration",
    "clipped": "clipping",
    "nan": "nonfinite",
}


def checks(wav: bytes, text: str = TEXT, language: str = "en", speed: float = 1.0) -> list[str]:
    return failures(measure(wav, text, T, speed=speed), language, T)


@pytest.mark.parametrize("mode", sorted(CAUGHT_BY))
@pytest.mark.parametrize("good", ["tone", "speechlike"])
def test_each_failure_mode_is_caught_by_its_check(mode: str, good: str) -> None:
    ms = len(TEXT) * 60  # the fakes' default pace
    pcm = tone(ms, RATE, 440) if good == "tone" else speechlike(ms, RATE, seed=3)
    assert CAUGHT_BY[mode] in checks(spoil(pcm, RATE, mode))


@pytest.mark.parametrize("seed", range(5))
def test_the_fakes_good_audio_passes(seed: int) -> None:
    ms = len(TEXT) * 60
    assert checks(wav_bytes(tone(ms, RATE, 440), RATE)) == []
    assert checks(spoil(speechlike(ms, RATE, seed), RATE, "good")) == []


def test_speed_is_divided_out_of_the_pace() -> None:
    fast = wav_bytes(speechlike(len(TEXT) * 30, RATE, 1), RATE)
    assert "duration" in checks(fast)
    assert checks(fast, speed=2.0) == []


def test_measures_name_the_values_the_checks_read() -> None:
    m = measure(spoil(speechlike(4000, RATE), RATE, "clipped"), TEXT, T)
    assert m["clipping_ratio"] > 0.1
    assert m["peak"] > 0.99
    assert 3.9 < m["duration_s"] < 4.1
    assert m["characters"] == spoken_length(TEXT)


@pytest.mark.parametrize(("rate", "ms"), [(8000, 12_600), (24_000, 31_000), (22_050, 2_500)])
@pytest.mark.parametrize("mode", ["good", "loop", "silence", "clipped"])
def test_measures_in_blocks_are_the_whole_chunks_values(
    rate: int, ms: int, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk decoded and measured a block at a time (bounded temporaries, issue 17) gives
    exactly the values of the whole chunk at once, whatever the block size: the same samples
    as a float WAV are measured whole, in one block."""
    pcm = speechlike(ms, rate, seed=5)
    wav = spoil(pcm[: len(pcm) - 14], rate, mode)  # a partial last frame, dropped either way
    whole = measure(float_wav(decode(wav)[0], rate), TEXT, T)
    assert whole["duration_s"] > 1
    for block in (1, 2_000, 32_768, 10**9):
        monkeypatch.setattr(quality_signal, "BLOCK_SAMPLES", block)
        assert measure(wav, TEXT, T) == whole
        assert measure(float_wav(decode(wav)[0], rate), TEXT, T) == whole


def test_peak_and_clipping_count_both_signs_as_the_magnitude_did() -> None:
    x = np.array([0.2, -0.9995, 0.5, 0.999, -0.3, -1.0, 0.9989, -0.9989])
    m = measure(float_wav(x, 8000), "hi", T)
    assert m["peak"] == round(float(np.abs(x).max()), 5) == 1.0
    assert m["clipping_ratio"] == round(np.count_nonzero(np.abs(x) >= 0.999) / len(x), 5)
    assert m["clipping_ratio"] == 3 / 8
    assert measure(float_wav(-np.abs(x), 8000), "hi", T)["peak"] == 1.0


def test_dc_offset_and_all_zero_are_caught() -> None:
    x = np.frombuffer(speechlike(5000, RATE), "<i2").astype(np.float64) / 32768 + 0.2
    assert "dc_offset" in checks(float_wav(x, RATE))
    assert "all_zero" in checks(wav_bytes(b"\x00\x00" * RATE * 5, RATE))


def test_decode_reads_8_16_24_and_32_bit_and_float_and_stereo() -> None:
    assert np.allclose(decode(float_wav(np.array([0.5, -0.25]), 8000))[0], [0.5, -0.25])
    stereo = np.array([1000, 3000], "<i2").tobytes()
    assert decode(pcm_to_wav(stereo, 8000, channels=2))[0] == pytest.approx([2000 / 32768])
    for width in (1, 3, 4):
        wav = pcm_to_wav(b"\x80" * width * 4 if width == 1 else b"\x00" * width * 4, 8000, 1, width)
        samples, rate = decode(wav)
        assert rate == 8000
        assert np.allclose(samples, 0.0)
    with pytest.raises(ValueError, match="not a WAV"):
        decode(b"not a wav")


def test_spoken_length_reads_digits_and_symbols_as_words() -> None:
    assert spoken_length("Hi, you!") == 5
    assert spoken_length("$3") == 6
    assert spoken_length("今天天气很好。") == 6


def espeak(text: str, voice: str, speed: float) -> bytes:
    run = subprocess.run(
        ["espeak-ng", "--stdout", "-v", voice, "-s", str(round(175 * speed))],
        input=text.encode(),
        capture_output=True,
        check=True,
    )
    return run.stdout


@pytest.mark.parametrize("language", ["en", "zh", "ja"])
def test_no_false_positive_on_espeak_output(language: str) -> None:
    required("espeak-ng")
    count = int(os.environ.get("VOXLINE_QUALITY_ESPEAK_CHUNKS", "60"))
    speeds = (1.0, 0.8, 1.3)
    flagged = []
    for i, text in enumerate(chunks(language, count, seed=7)):
        speed = speeds[i % len(speeds)]
        wav = espeak(text, ESPEAK_VOICE[language], speed)
        m = measure(wav, text, T, speed=speed)
        if failures(m, language, T):
            flagged.append((text, speed, m))
    assert flagged == []


def test_the_gate_is_on_by_default_and_the_table_tunes_or_disables_it() -> None:
    from processor.config import ConfigError, parse, single_backend

    base = {"backends": {"e": {"kind": "espeak"}}}
    assert parse(base, {}).quality == Thresholds()
    assert Thresholds().enabled
    assert single_backend().quality.enabled
    assert parse({**base, "quality": {"enabled": False}}, {}).quality.enabled is False
    table = {"attempts": 2, "max_repetition": 0.9, "pace": {"de": [0.05, 0.2]}}
    quality = parse({**base, "quality": table}, {}).quality
    assert (quality.enabled, quality.attempts, quality.max_repetition) == (True, 2, 0.9)
    assert quality.pace["de"] == (0.05, 0.2)
    assert quality.pace["zh"] == T.pace["zh"]
    with pytest.raises(ConfigError, match=r"\[quality\]: unknown keys max_silense"):
        parse({**base, "quality": {"max_silense": 1}}, {})
    with pytest.raises(ConfigError, match=r"pace.en must be \[low, high\]"):
        parse({**base, "quality": {"pace": {"en": [0.2, 0.1]}}}, {})


def test_voxline_quality_false_turns_the_gate_off_without_a_config_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from processor.ops.options import settings_from_options
    from processor.ops.run import run

    monkeypatch.delenv("VOXLINE_CONFIG", raising=False)
    monkeypatch.delenv("VOXLINE_QUALITY", raising=False)
    with run.make_context("run", []) as ctx:
        assert settings_from_options(ctx.params).backends.quality.enabled
    monkeypatch.setenv("VOXLINE_QUALITY", "false")
    with run.make_context("run", []) as ctx:
        assert not settings_from_options(ctx.params).backends.quality.enabled
