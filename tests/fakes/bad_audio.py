"""The ways neural TTS fails quietly, made from good audio: the fakes' quality failure modes.

Every mode takes the good 16-bit mono PCM a fake would have answered for a text (and its
rate) and returns the WAV it answers instead:

    silence     mostly silence: the first tenth of the speech, then silence to full length
    cut         cut off at half
    loop        the first 1.2 s (a phrase) looped to the full length
    babble      twice as long as the text warrants (the speech, then as much babble again)
    clipped     driven 12x into full scale
    nan         an IEEE-float WAV full of NaN
    good        the audio unchanged

:func:`speechlike` makes audio with a voice's rhythm (syllables of changing pitch and gaps):
the steady tone of the fakes cannot show a loop, since all of it is alike.
"""

from __future__ import annotations

import struct

import numpy as np

from processor.testing import speechlike
from tests.fakes.common import wav_bytes

MODES = ("silence", "cut", "loop", "babble", "clipped", "nan", "good")
__all__ = ["MODES", "float_wav", "speechlike", "spoil"]


def _pcm(samples: np.ndarray) -> bytes:
    return bytes(np.clip(np.round(samples * 32767), -32768, 32767).astype("<i2").tobytes())


def _samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, "<i2").astype(np.float64) / 32768.0


def float_wav(samples: np.ndarray, rate: int) -> bytes:
    """An IEEE-float (format 3) mono WAV of ``samples``."""
    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    return (
        b"RIFF"
        + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data))
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )


def spoil(pcm: bytes, rate: int, mode: str, seed: int = 0) -> bytes:
    """The WAV a fake in failure ``mode`` answers instead of ``pcm`` (``ValueError`` for a
    mode it does not know)."""
    x = _samples(pcm)
    n = len(x)
    if mode == "good":
        out = x
    elif mode == "silence":
        out = np.concatenate([x[: n // 10], np.zeros(n - n // 10)])
    elif mode == "cut":
        out = x[: n // 2]
    elif mode == "loop":
        phrase = _samples(speechlike(1200, rate, seed))
        out = np.tile(phrase, n // len(phrase) + 1)[:n]
    elif mode == "babble":
        out = np.concatenate([x, _samples(speechlike(1000 * n / rate, rate, seed + 1))])
    elif mode == "clipped":
        out = np.clip(x * 12, -1.0, 32767 / 32768)
    elif mode == "nan":
        return float_wav(np.full(n, np.nan), rate)
    else:
        raise ValueError(f"no failure mode {mode!r}: one of {', '.join(MODES)}")
    return wav_bytes(_pcm(out), rate)
