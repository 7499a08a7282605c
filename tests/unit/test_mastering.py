"""Loudness (BS.1770) and mastering profiles, checked against an independent implementation:
ffmpeg's ``ebur128`` filter measures integrated loudness and true peak of the same audio."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

from processor.audio import pcm_to_wav
from processor.mastering import PROFILES, master, measure, room_tone
from processor.quality import decode
from tests.fakes.texts import ESPEAK_VOICE, chunks
from tests.unit.programs import required


def tools() -> None:
    for tool in ("ffmpeg", "espeak-ng"):
        required(tool)


def wav16(samples: np.ndarray, rate: int) -> bytes:
    pcm = np.clip(np.round(samples * 32767), -32768, 32767).astype("<i2").tobytes()
    return pcm_to_wav(pcm, rate)


def run(argv: list[str], data: bytes) -> bytes:
    """A tool's standard output for ``data`` on its standard input."""
    return subprocess.run(argv, input=data, capture_output=True, check=True).stdout


def ebur128(wav: bytes) -> tuple[float, float]:
    """ffmpeg's integrated loudness (LUFS) and true peak (dBFS) of ``wav``."""
    run = subprocess.run(
        [
            "ffmpeg",
            "-hide_banner",
            "-nostats",
            "-i",
            "-",
            "-af",
            "ebur128=peak=true",
            "-f",
            "null",
            "-",
        ],
        input=wav,
        capture_output=True,
        check=True,
    )
    err = run.stderr.decode()
    loudness = float(re.findall(r"I:\s+(-?[\d.]+) LUFS", err)[-1])
    peak = float(re.findall(r"Peak:\s+(-?[\d.]+) dBFS", err)[-1])
    return loudness, peak


def speech(language: str) -> tuple[np.ndarray, int]:
    text = " ".join(chunks(language, 4, seed=2))
    voice = ESPEAK_VOICE[language]
    run = subprocess.run(
        ["espeak-ng", "--stdout", "-v", voice], input=text.encode(), capture_output=True, check=True
    )
    return decode(run.stdout)


@pytest.mark.parametrize("language", ["en", "zh"])
@pytest.mark.parametrize("profile", ["none", *PROFILES])
def test_loudness_agrees_with_ffmpeg_and_the_profile_holds(language: str, profile: str) -> None:
    tools()
    x, rate = speech(language)
    if profile != "none":
        x = master(x, rate, PROFILES[profile])
    if profile == "acx":
        x = room_tone(x, rate)
    wav = wav16(x, rate)
    ours = measure(decode(wav)[0], rate)
    theirs, peak = ebur128(wav)
    assert abs(ours.integrated_lufs - theirs) <= 0.5
    assert abs(ours.true_peak_dbtp - peak) <= 0.5
    if profile == "ebu-r128":
        assert abs(theirs + 23) <= 0.5
        assert peak <= -1.0
    elif profile == "podcast":
        assert abs(theirs + 16) <= 1.0
        assert peak <= -1.0
    elif profile == "acx":
        assert -23 <= ours.rms_dbfs <= -18
        assert peak <= -3.0
        assert ours.noise_floor_dbfs <= -60
        assert ours.noise_floor_dbfs > -150, "room tone, not digital silence"


@pytest.mark.parametrize(
    ("profile", "fmt"), [("acx", "wav"), ("podcast", "mp3"), ("ebu-r128", "wav")]
)
async def test_a_mastered_file_is_measured_after_encoding(profile: str, fmt: str) -> None:
    from processor.backends.base import Audio
    from processor.mastering_step import mastered

    tools()
    x, rate = speech("en")
    wav = wav16(x, rate)
    audio, loudness = await mastered(Audio(wav, "wav", rate, 1, 0), profile, fmt, None)
    decoded = run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", "-", "-f", "wav", "-"], audio.data
    )
    theirs, peak = ebur128(decoded)
    assert abs(loudness["integrated_lufs"] - theirs) <= 0.5
    if profile == "acx":
        assert (audio.format, audio.sample_rate) == ("mp3", 44_100)
        entries = "stream=bit_rate,sample_rate,channels"
        probe = run(
            ["ffprobe", "-v", "error", "-show_entries", entries, "-of", "json", "-"], audio.data
        )
        assert b'"bit_rate": "192000"' in probe
        assert -23 <= loudness["rms_dbfs"] <= -18
        assert peak <= -3.0
        assert loudness["noise_floor_dbfs"] <= -60
    else:
        target = -23 if profile == "ebu-r128" else -16
        assert abs(theirs - target) <= 1.0
        assert peak <= -1.0
        assert audio.format == fmt


async def test_the_pipeline_masters_by_the_request_or_the_backends_default() -> None:
    from processor.config import ConfigError, parse
    from tests.unit.test_quality_gate import World, record

    tools()
    world = World(["good"], enabled=False)
    assert await world.pipeline.handle(record(mastering="acx")) == "succeeded"
    (event,) = world.events()
    assert (event["audio"]["format"], event["audio"]["sample_rate"]) == ("mp3", 44_100)
    assert -23 <= event["loudness"]["rms_dbfs"] <= -18
    assert set(event["loudness"]) == {
        "integrated_lufs",
        "true_peak_dbtp",
        "rms_dbfs",
        "noise_floor_dbfs",
    }
    podcast = World(["good"], enabled=False)
    assert await podcast.pipeline.handle(record(mastering="podcast")) == "succeeded"
    loudness = podcast.events()[0]["loudness"]
    assert loudness["noise_floor_dbfs"] == -150.0, "digital silence, said in valid JSON"
    plain = World(["good"], enabled=False)
    assert await plain.pipeline.handle(record()) == "succeeded"
    assert "loudness" not in plain.events()[0]

    table = {"backends": {"e": {"kind": "espeak", "mastering": "podcast"}}}
    assert parse(table, {}).backends["e"].mastering == "podcast"
    with pytest.raises(ConfigError, match="mastering must be"):
        parse({"backends": {"e": {"kind": "espeak", "mastering": "loud"}}}, {})
