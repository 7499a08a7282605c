"""Transcoding: the pure rate and argument rules, every format through the real ffmpeg (required
in CI), and the error paths through stand-in binaries."""

from __future__ import annotations

import asyncio
import math
import os
import struct
import sys
from pathlib import Path

import pytest

from processor.audio import pcm_to_wav, wav_info
from processor.backends.base import CONTENT_TYPES
from processor.errors import InvalidInput, Permanent, Stage, Systemic, Transient
from processor.transcode import (
    FORMATS,
    encoder_args,
    ffmpeg_available,
    opus_input_rate,
    output_rate,
    transcode,
)
from processor.transcode import _transcode as transcode_with
from tests.unit.programs import required

pytestmark = pytest.mark.timeout(60)

#: Encoder delay and padding a decoder does not trim exactly (Opus pre-skip, MP3 frames).
TOLERANCE_MS = 60


@pytest.fixture(scope="module")
def ffmpeg() -> str:
    """The real ffmpeg (required in CI)."""
    return required("ffmpeg")


def tone(seconds: float = 1.5, rate: int = 22050, channels: int = 1, width: int = 2) -> bytes:
    """A 440 Hz sine as a PCM WAV (the right channel a fifth up when stereo)."""
    frames = round(seconds * rate)
    samples = []
    for i in range(frames):
        for channel in range(channels):
            value = 0.4 * math.sin(2 * math.pi * 440 * (1.5**channel) * i / rate)
            samples.append(value)
    if width == 1:
        pcm = bytes(128 + round(127 * value) for value in samples)
    else:
        pcm = struct.pack(f"<{len(samples)}h", *(round(32767 * value) for value in samples))
    return pcm_to_wav(pcm, rate, channels, width)


def check_container(fmt: str, data: bytes) -> None:
    if fmt == "wav":
        assert data[:4] == b"RIFF"
        assert data[8:12] == b"WAVE"
    elif fmt == "mp3":
        assert data[:3] == b"ID3" or (data[0] == 0xFF and data[1] & 0xE0 == 0xE0)
    elif fmt == "flac":
        assert data[:4] == b"fLaC"
    elif fmt == "opus":
        assert data[:4] == b"OggS"
        assert b"OpusHead" in data[:4096]


# --- pure rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "native", "requested", "expected"),
    [
        ("wav", 22050, None, 22050),
        ("wav", 22050, 16000, 16000),
        ("pcm", 24000, 96000, 96000),
        ("flac", 22050, None, 22050),
        ("flac", 22050, 96000, 96000),
        ("flac", 22050, 96001, 96000),  # FLAC counts in 10 Hz steps above 65535 Hz
        ("flac", 22050, 65535, 65540),
        ("flac", 22050, 44101, 44101),
        ("mp3", 22050, None, 22050),
        ("mp3", 22050, 44100, 44100),
        ("mp3", 22050, 20000, 22050),  # the next rate MP3 can carry
        ("mp3", 22050, 96000, 48000),
        ("mp3", 7000, None, 8000),
        ("opus", 22050, None, 48000),  # Opus takes 8/12/16/24/48 kHz only
        ("opus", 24000, None, 24000),
        ("opus", 22050, 16000, 16000),
        ("opus", 22050, 44100, 48000),
    ],
)
def test_output_rate(fmt: str, native: int, requested: int | None, expected: int) -> None:
    assert output_rate(fmt, native, requested) == expected


@pytest.mark.parametrize("fmt", FORMATS)
def test_encoder_args_read_stdin_quietly_and_bit_exactly(fmt: str) -> None:
    args = encoder_args(fmt, 16000, 2, 1)
    assert args[:3] == ["-hide_banner", "-loglevel", "error"]
    assert args[args.index("-i") + 1] == "pipe:0"
    assert args[args.index("-ar") + 1] == "16000"
    assert "+bitexact" in args


def test_encoder_args_reject_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="ogg"):
        encoder_args("ogg", 16000, 2, 1)


def test_opus_input_rate_reads_the_opus_head() -> None:
    page = b"OggS" + bytes(24) + b"OpusHead" + bytes([1, 1]) + struct.pack("<HI", 312, 16000)
    assert opus_input_rate(page + bytes(3)) == 16000
    assert opus_input_rate(b"OggS" + bytes(100)) is None
    assert opus_input_rate(b"OpusHead\x01") is None  # truncated


# --- without ffmpeg ------------------------------------------------------------------------


async def test_wav_at_its_own_rate_passes_through_without_ffmpeg(tmp_path: Path) -> None:
    wav = tone()
    audio = await transcode(wav, "wav", ffmpeg=str(tmp_path / "no-ffmpeg"))
    assert audio.data is wav
    assert (audio.format, audio.sample_rate, audio.channels, audio.duration_ms) == (
        "wav",
        22050,
        1,
        1500,
    )


async def test_pcm_at_its_own_rate_is_cut_out_without_ffmpeg(tmp_path: Path) -> None:
    audio = await transcode(tone(), "pcm", sample_rate=22050, ffmpeg=str(tmp_path / "no-ffmpeg"))
    assert len(audio.data) == 33075 * 2
    assert (audio.sample_rate, audio.channels, audio.duration_ms) == (22050, 1, 1500)


async def test_missing_ffmpeg_is_systemic_and_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(Systemic, match=r"infra/packages\.sh") as caught:
        await transcode(tone(), "mp3", ffmpeg=str(tmp_path / "no-ffmpeg"))
    assert caught.value.stage is Stage.SYNTHESIZE
    assert caught.value.error_type == "ffmpeg_missing"
    assert not ffmpeg_available(str(tmp_path / "no-ffmpeg"))


async def test_unknown_format_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="'ogg'"):
        await transcode(tone(), "ogg")


async def test_malformed_wav_is_permanent() -> None:
    with pytest.raises(Permanent, match="not a WAV"):
        await transcode(b"ID3 not a wav at all", "mp3")


async def test_empty_wav_cannot_be_encoded() -> None:
    with pytest.raises(Permanent, match="no frames"):
        await transcode(pcm_to_wav(b"", 22050), "opus")


# --- stand-in binaries ---------------------------------------------------------------------


def stand_in(tmp_path: Path, body: str) -> str:
    script = tmp_path / "ffmpeg"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


async def test_ffmpeg_rejecting_our_wav_is_permanent_with_its_stderr(tmp_path: Path) -> None:
    binary = stand_in(
        tmp_path, 'echo "pipe:0: Invalid data found when processing input" >&2\nexit 1'
    )
    with pytest.raises(Permanent, match="Invalid data found when processing input") as caught:
        await transcode(tone(), "flac", ffmpeg=binary)
    assert caught.value.error_type == "ffmpeg_failed"
    assert ffmpeg_available(binary)


async def test_long_stderr_is_cut_to_its_end(tmp_path: Path) -> None:
    binary = stand_in(tmp_path, "i=0; while [ $i -lt 200 ]; do echo noise >&2; i=$((i+1)); done\n"
                      "echo 'the real error' >&2; exit 1")  # fmt: skip
    with pytest.raises(Permanent) as caught:
        await transcode(tone(), "mp3", ffmpeg=binary)
    assert caught.value.message.endswith("the real error")
    assert len(caught.value.message) < 600


async def test_ffmpeg_without_the_encoder_is_systemic(tmp_path: Path) -> None:
    binary = stand_in(tmp_path, "echo \"Unknown encoder 'libmp3lame'\" >&2\nexit 1")
    with pytest.raises(Systemic, match="Unknown encoder") as caught:
        await transcode(tone(), "mp3", ffmpeg=binary)
    assert caught.value.error_type == "ffmpeg_unsupported"


async def test_ffmpeg_killed_by_a_signal_is_transient(tmp_path: Path) -> None:
    binary = stand_in(tmp_path, "kill -KILL $$")
    with pytest.raises(Transient, match="signal 9"):
        await transcode(tone(), "opus", ffmpeg=binary)


async def test_cancellation_kills_ffmpeg(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    binary = stand_in(
        tmp_path, f"echo $$ > {pidfile}\nexec {sys.executable} -c 'import time; time.sleep(30)'"
    )
    task = asyncio.create_task(transcode(tone(), "mp3", ffmpeg=binary))
    for _ in range(1000):  # the stand-in is running once it has written its pid
        if pidfile.exists() and pidfile.read_text().endswith("\n"):
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("the stand-in ffmpeg never started")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left running
        os.kill(int(pidfile.read_text()), 0)


# --- the real ffmpeg -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
async def test_every_format_at_the_native_rate(ffmpeg: str, fmt: str) -> None:
    audio = await transcode(tone(1.5, 22050), fmt, ffmpeg=ffmpeg)
    assert audio.format == fmt
    assert fmt in CONTENT_TYPES
    assert audio.sample_rate == output_rate(fmt, 22050, None)
    assert audio.channels == 1
    assert abs(audio.duration_ms - 1500) <= TOLERANCE_MS
    check_container(fmt, audio.data)
    if fmt == "pcm":
        assert len(audio.data) == 33075 * 2
    if fmt == "wav":
        assert wav_info(audio.data).frames == 33075


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("rate", [16000, 44100])
async def test_every_format_resampled(ffmpeg: str, fmt: str, rate: int) -> None:
    audio = await transcode(tone(1.5, 22050), fmt, sample_rate=rate, ffmpeg=ffmpeg)
    expected_rate = 48000 if (fmt, rate) == ("opus", 44100) else rate
    assert audio.sample_rate == expected_rate
    assert abs(audio.duration_ms - 1500) <= TOLERANCE_MS
    check_container(fmt, audio.data)
    if fmt == "pcm":
        assert abs(len(audio.data) // 2 - round(1.5 * rate)) <= 1
    if fmt == "wav":
        assert wav_info(audio.data).sample_rate == rate
    if fmt == "opus":
        assert opus_input_rate(audio.data) == expected_rate


@pytest.mark.parametrize("fmt", ["mp3", "flac", "opus", "pcm"])
async def test_stereo_stays_stereo(ffmpeg: str, fmt: str) -> None:
    audio = await transcode(tone(1.0, 24000, channels=2), fmt, ffmpeg=ffmpeg)
    assert audio.channels == 2
    assert audio.sample_rate == 24000
    assert abs(audio.duration_ms - 1000) <= TOLERANCE_MS
    if fmt == "pcm":
        assert len(audio.data) == 24000 * 2 * 2


async def test_pcm_is_always_16_bit(ffmpeg: str) -> None:
    audio = await transcode(tone(1.0, 8000, width=1), "pcm", ffmpeg=ffmpeg)
    assert len(audio.data) == 8000 * 2
    assert (audio.sample_rate, audio.duration_ms) == (8000, 1000)


@pytest.mark.parametrize("fmt", ["mp3", "flac", "opus"])
async def test_output_is_reproducible(ffmpeg: str, fmt: str) -> None:
    first = await transcode(tone(), fmt, ffmpeg=ffmpeg)
    second = await transcode(tone(), fmt, ffmpeg=ffmpeg)
    assert first.data == second.data


@pytest.mark.parametrize("fmt", ["mp3", "flac", "opus"])
async def test_duration_is_measured_from_the_output(ffmpeg: str, fmt: str) -> None:
    # Through a pipe (no memfd) ffmpeg cannot go back to write the MP3's padding into its
    # header, so the MP3 decodes longer: the reported length is what decoding gives.
    audio = await transcode_with(tone(), fmt, None, ffmpeg, seekable=False)
    if fmt == "mp3":
        assert 1500 < audio.duration_ms <= 1500 + 2 * 1152 * 1000 // 22050
    else:
        assert abs(audio.duration_ms - 1500) <= TOLERANCE_MS
    check_container(fmt, audio.data)


def test_ffmpeg_available(ffmpeg: str) -> None:
    assert ffmpeg_available()
    assert ffmpeg_available(ffmpeg)
