"""The mastering step after the join: a request's audio to its profile (``processor.mastering``),
encoded as the profile requires, and measured again after encoding (the event's ``loudness``).

ACX is delivered as 44.1 kHz mono MP3 at 192 kbit/s CBR whatever the request's format; the
other profiles in the requested format and rate (``processor.transcode``).
"""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np

from processor.audio import pcm_to_wav, wav_info
from processor.backends.base import Audio
from processor.errors import Stage, Transient
from processor.mastering import PROFILES, ROOM_HEAD_S, master, measure, room_tone
from processor.quality import decode
from processor.transcode import transcode

ACX_RATE, ACX_KBPS = 44_100, 192
PROFILE_NAMES = ("none", *PROFILES)


def lead_s(profile_name: str) -> float:
    """Seconds the profile puts before the speech (ACX's room tone), which timing moves by."""
    return ROOM_HEAD_S if profile_name == "acx" else 0.0


MP3 = ("-f", "mp3")


async def mastered(
    wav: Audio, profile_name: str, fmt: str, sample_rate: int | None
) -> tuple[Audio, dict[str, float]]:
    """``wav`` mastered to the profile and encoded; the loudness of the encoded file."""
    profile = PROFILES[profile_name]
    samples, rate = await asyncio.to_thread(decode, wav.data)
    out = await asyncio.to_thread(master, samples, rate, profile)
    if profile_name == "acx":
        out = room_tone(out, rate)
    pcm = np.clip(np.round(out * 32767), -32768, 32767).astype("<i2").tobytes()
    pcm_wav = pcm_to_wav(pcm, rate)
    if profile_name == "acx":
        data = await _ffmpeg(
            pcm_wav,
            ["-ar", str(ACX_RATE), "-ac", "1", "-c:a", "libmp3lame", "-b:a", f"{ACX_KBPS}k", *MP3],
        )
        audio = Audio(data, "mp3", ACX_RATE, 1, round(len(out) / rate * 1000))
    elif fmt == "wav" and sample_rate in (None, rate):
        info = wav_info(pcm_wav)
        audio = Audio(pcm_wav, "wav", rate, 1, info.duration_ms)
    else:
        audio = await transcode(pcm_wav, fmt, sample_rate=sample_rate)
    return audio, await loudness_of(audio)


async def loudness_of(audio: Audio) -> dict[str, float]:
    """The event's ``loudness`` of an encoded file: decoded by ffmpeg, then measured."""
    decoded = await _ffmpeg(audio.data, ["-ac", "1", "-c:a", "pcm_f32le", "-f", "wav"])
    samples, rate = await asyncio.to_thread(decode, decoded)
    return dataclasses.asdict(await asyncio.to_thread(measure, samples, rate))


async def _ffmpeg(data: bytes, output: list[str]) -> bytes:
    process = await asyncio.create_subprocess_exec(
        *["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostats", "-i", "pipe:0"],
        *output,
        "pipe:1",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(data)
    if process.returncode != 0:
        raise Transient(
            f"ffmpeg (mastering) exited {process.returncode}: {err.decode(errors='replace')[:300]}",
            stage=Stage.SYNTHESIZE,
            error_type="mastering_failed",
        )
    return out
