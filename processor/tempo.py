"""``<prosody rate>`` on backends whose server takes no speed: the segment's audio itself is
made faster or slower with ffmpeg's ``atempo`` filter (pitch kept). Backends with a speed
parameter (espeak-ng, OpenAI-compatible, Qwen3-TTS) get ``params.speed`` instead
(``processor.segments.utterance_for``)."""

from __future__ import annotations

import asyncio
import math

from processor.audio import fix_streamed_wav, wav_info
from processor.backends.base import Audio
from processor.errors import Stage, Transient
from processor.segments import Plan

#: Backend kinds whose servers ignore ``speed``: their segments' tempo is changed here.
TEMPO_KINDS = frozenset({"cosyvoice", "fish"})


def atempo_filter(rate: float) -> str:
    """``atempo`` steps within 0.5-2.0 (older ffmpeg's range) whose product is ``rate``."""
    steps = max(1, math.ceil(abs(math.log(rate, 2))))
    factor = rate ** (1 / steps)
    return ",".join([f"atempo={factor:.6f}"] * steps)


async def change_tempo(audio: Audio, rate: float, ffmpeg: str = "ffmpeg") -> Audio:
    """``audio`` (a WAV) played ``rate`` times as fast, measured; ``Transient`` if ffmpeg fails."""
    args = [ffmpeg, "-hide_banner", "-loglevel", "error", "-f", "wav", "-i", "pipe:0", "-filter:a",
            atempo_filter(rate), "-c:a", "pcm_s16le", "-f", "wav", "pipe:1"]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(audio.data)
    try:
        if process.returncode:
            raise ValueError(err.decode("utf-8", "replace")[-200:])
        wav = fix_streamed_wav(out)
        info = wav_info(wav)
    except ValueError as exc:
        raise Transient(
            f"tempo change failed: {exc}", stage=Stage.SYNTHESIZE, error_type="tempo_failed"
        ) from None
    return Audio(wav, "wav", info.sample_rate, info.channels, info.duration_ms)


async def tempo_parts(parts: list[Audio], plan: Plan, kind: str) -> list[Audio]:
    """Each piece's audio at its ``<prosody rate>`` where the backend could not do it."""
    if kind not in TEMPO_KINDS:
        return parts
    return [
        part if piece.voicing.rate == 1.0 else await change_tempo(part, piece.voicing.rate)
        for part, piece in zip(parts, plan.pieces, strict=True)
    ]
