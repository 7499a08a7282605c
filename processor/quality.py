"""Pure: signal checks on one chunk's decoded audio (the quality gate).

Neural TTS fails quietly: a 200 with a valid WAV that is mostly silence, stops halfway, loops
a phrase or babbles on. :func:`measure` decodes a chunk and measures it; :func:`failures`
names the checks its measures break under :class:`Thresholds`. Nothing here does I/O.

Checks (each a measured value and a bound in ``Thresholds``):

    nonfinite       NaN or infinite samples (a float WAV) -> fraction, must be 0
    all_zero        peak below ``silent_peak`` -> nothing was said
    duration        seconds per character of text (speed divided out) within the language's
                    bounds; short texts get ``duration_slack_s`` either side
    silence         leading / trailing seconds and the ratio of silent 20 ms frames
    clipping        fraction of samples at full scale
    dc_offset       mean sample value
    repetition      the best normalised autocorrelation of the frame features (band
                    energies) at a lag of at least ``repeat_min_lag_s``, over audio at least
                    twice that lag: the same stretch of audio looping
"""

from __future__ import annotations

import dataclasses
import functools
import re
import struct
from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt

from processor import quality_signal as signal
from processor.asr import AsrSettings, settings_from
from processor.audio import wav_pcm_view

Samples = npt.NDArray[np.float64]

#: Seconds per character (at speed 1) a language's speech stays within, by language prefix.
DEFAULT_PACE: Mapping[str, tuple[float, float]] = {
    "en": (0.05, 0.12),
    "zh": (0.20, 0.65),
    "ja": (0.10, 0.80),
    #: Any other language in an alphabet (and ``auto`` when the text has no CJK characters).
    "*": (0.045, 0.14),
}

_PAUSES = re.compile(r"[.!?;:。！？；：…]+")
_KANA = re.compile("[\u3040-\u30ff]")
_HAN = re.compile("[\u4e00-\u9fff]")
_WORDY = frozenset("$%&@+=#€£¥")
_FLOAT_FORMAT = 3
_EXTENSIBLE = 0xFFFE
_FMT = struct.Struct("<HHIIHH")


@dataclasses.dataclass(frozen=True, slots=True)
class Thresholds:
    """Bounds of the quality gate (``[quality]`` in the config)."""

    enabled: bool = True
    #: Syntheses of a chunk that fails the gate, the first included, before ``quality``.
    attempts: int = 3
    pace: Mapping[str, tuple[float, float]] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_PACE)
    )
    duration_slack_s: float = 0.5
    #: More slack for each pause the text marks (a sentence or clause end): a voice's pauses
    #: do not shrink with the text's length, nor always with its speed.
    pause_slack_s: float = 0.3
    silence_dbfs: float = -45.0
    max_leading_s: float = 2.0
    max_trailing_s: float = 2.0
    max_silence_ratio: float = 0.6
    max_clipping_ratio: float = 0.01
    max_dc_offset: float = 0.05
    silent_peak: float = 1e-3
    repeat_min_lag_s: float = 1.0
    max_repetition: float = 0.95
    #: The ASR round trip (``[quality.asr]``, ``processor.asr``); None: no transcription.
    asr: AsrSettings | None = None


def decode(wav: bytes) -> tuple[Samples, int]:
    """Mono samples in [-1, 1] (float WAVs as they are, NaN included) and the sample rate;
    ``ValueError`` for a file that is no WAV."""
    floats = _float_wav(wav)
    if floats is not None:
        return floats
    info, pcm = wav_pcm_view(wav)  # a view: the PCM is read where it lies, not copied
    raw = _ints(pcm, info.sample_width)
    if info.channels == 1:  # a mean over one channel is a copy that costs most of decode
        return raw, info.sample_rate
    return raw.reshape(-1, info.channels).mean(axis=1), info.sample_rate


def _ints(pcm: memoryview, width: int) -> Samples:
    """Integer PCM of ``width`` bytes as floats in [-1, 1], scaled in place by a power of two
    (exact: the same values as a division, one array less)."""
    if width == 1:
        raw = np.frombuffer(pcm, np.uint8).astype(np.float64)
        raw -= 128.0
        raw *= 1 / 128
    elif width == 2:
        raw = np.frombuffer(pcm, "<i2").astype(np.float64)
        raw *= 1 / 32768
    elif width == 4:
        raw = np.frombuffer(pcm, "<i4").astype(np.float64)
        raw *= 1 / 2147483648
    else:  # 24-bit: sign-extend three bytes
        b = np.frombuffer(pcm, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        raw = np.where(v >= 1 << 23, v - (1 << 24), v).astype(np.float64)
        raw *= 1 / 8388608
    return raw


def _blocks(wav: bytes) -> tuple[Iterable[Samples], int, int]:
    """A chunk's samples as blocks of whole frames, how many and the rate: 8-, 16- and 24-bit
    mono PCM decoded a block at a time (exact sums: ``processor.quality_signal``), anything
    else (float, 32-bit, several channels) decoded whole, one block."""
    floats = _float_wav(wav)
    if floats is None:
        info, pcm = wav_pcm_view(wav)
        width = info.sample_width
        if info.channels == 1 and width <= 3:
            rows = max(1, signal.BLOCK_SAMPLES // signal.frame_size(info.sample_rate))
            step = rows * signal.frame_size(info.sample_rate) * width
            parts = (_ints(pcm[i : i + step], width) for i in range(0, len(pcm), step))
            return parts, info.frames, info.sample_rate
    samples, rate = decode(wav) if floats is None else floats  # a float WAV decoded once
    return (samples,), len(samples), rate


def _float_wav(wav: bytes) -> tuple[Samples, int] | None:
    """An IEEE-float WAV (format 3, which ``processor.audio`` does not take), else None."""
    if wav[:4] != b"RIFF" or wav[8:12] != b"WAVE":
        return None
    pos, rate, channels, width, is_float = 12, 0, 1, 4, False
    while pos + 8 <= len(wav):
        name, size = wav[pos : pos + 4], int.from_bytes(wav[pos + 4 : pos + 8], "little")
        # A view: an integer WAV's data chunk (every chunk the gate sees) is never copied here.
        body = memoryview(wav)[pos + 8 : pos + 8 + size]
        if name == b"fmt " and len(body) >= _FMT.size:
            tag, channels, rate, _, _, bits = _FMT.unpack_from(body)
            if tag == _EXTENSIBLE and len(body) >= 26:  # the subformat GUID starts with the tag
                tag = int.from_bytes(body[24:26], "little")
            is_float, width = tag == _FLOAT_FORMAT, bits // 8
        elif name == b"data":
            if not is_float or width not in (4, 8) or channels < 1:
                return None
            body = body[: len(body) // (width * channels) * width * channels]
            dtype = "<f4" if width == 4 else "<f8"
            raw = np.frombuffer(body, dtype).astype(np.float64)
            return raw.reshape(-1, channels).mean(axis=1), rate
        pos += 8 + size + (size & 1)
    return None


@functools.lru_cache(maxsize=1024)  # a chunk's text is counted by measure and by failures
def spoken_length(text: str) -> int:
    """Characters as a voice takes time over them: a digit or a symbol such as ``$`` or
    ``%`` is read as a word (counted as three), whitespace and punctuation take none."""
    total = 0
    for char in text:
        if char.isdigit() or char in _WORDY:
            total += 3
        elif char.isalnum():
            total += 1
    return total


def script_language(text: str) -> str:
    """``ja`` for text with kana, ``zh`` for text mostly of CJK ideographs, else ``*``."""
    if _KANA.search(text):
        return "ja"
    han = len(_HAN.findall(text))
    return "zh" if han * 2 > spoken_length(text) else "*"


def pace_bounds(thresholds: Thresholds, language: str, text: str) -> tuple[float, float]:
    """Seconds per character bounds for ``language`` (by its primary subtag; ``auto`` and
    languages without bounds of their own by the script of ``text``)."""
    base = language.lower().split("-")[0].split("_")[0]
    if base not in thresholds.pace:
        base = script_language(text)
    return thresholds.pace.get(base, thresholds.pace.get("*", DEFAULT_PACE["*"]))


def measure(
    wav: bytes, text: str, thresholds: Thresholds, *, speed: float = 1.0
) -> dict[str, float]:
    """Every measured value of one chunk (``ValueError`` for a file that is no WAV)."""
    blocks, n, rate = _blocks(wav)
    duration = n / rate if rate else 0.0
    sig = signal.gather(blocks, n, rate, thresholds.repeat_min_lag_s)
    out: dict[str, float] = {
        "duration_s": round(duration, 3),
        "nonfinite_ratio": sig.nonfinite / n if n else 0.0,
    }
    chars = spoken_length(text)
    out["seconds_per_char"] = round(duration * max(speed, 1e-3) / max(chars, 1), 4)
    out["characters"] = float(chars)
    out["pauses"] = float(len(_PAUSES.findall(text)))
    out["peak"] = round(sig.peak, 5)
    out["clipping_ratio"] = round(sig.clipped / n if n else 0, 5)
    out["dc_offset"] = round(sig.mean, 5)
    out.update(signal.silence(sig, thresholds.silence_dbfs))
    out["repetition"] = round(signal.repetition(sig), 4)
    out["speed"] = speed
    return out


def failures(
    measures: Mapping[str, float], language: str, thresholds: Thresholds, text: str = ""
) -> list[str]:
    """The checks ``measures`` (of a chunk of ``text``) fail, by name (empty: it passes)."""
    t = thresholds
    failed: list[str] = []
    if measures["nonfinite_ratio"] > 0:
        failed.append("nonfinite")
    if measures["peak"] < t.silent_peak:
        failed.append("all_zero")
    low, high = pace_bounds(t, language, text)
    chars, speed = measures["characters"], max(measures["speed"], 1e-3)
    duration = measures["duration_s"]
    slack = t.duration_slack_s + t.pause_slack_s * measures.get("pauses", 0.0)
    if not (chars * low / speed - slack <= duration <= chars * high / speed + slack):
        failed.append("duration")
    if (
        measures["leading_silence_s"] > t.max_leading_s
        or measures["trailing_silence_s"] > t.max_trailing_s
        or measures["silence_ratio"] > t.max_silence_ratio
    ):
        failed.append("silence")
    if measures["clipping_ratio"] > t.max_clipping_ratio:
        failed.append("clipping")
    if abs(measures["dc_offset"]) > t.max_dc_offset:
        failed.append("dc_offset")
    if measures["repetition"] > t.max_repetition:
        failed.append("repetition")
    return failed


def thresholds_from(
    table: object, where: str = "[quality]", environ: Mapping[str, str] | None = None
) -> Thresholds:
    """``Thresholds`` from a config table (``[quality]`` in ``VOXLINE_CONFIG``): the gate is
    on (with or without the table) unless ``enabled = false``; ``[quality.pace]`` maps a language
    to ``[low, high]`` seconds per character, merged over the defaults; ``[quality.asr]`` sets
    up the ASR round trip (``processor.asr``). ``ValueError`` names the key that is wrong."""
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be a table")
    fields = {f.name: f for f in dataclasses.fields(Thresholds)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown keys {', '.join(unknown)}")
    values: dict[str, object] = {}
    for key, value in table.items():
        if key == "pace":
            values[key] = {**DEFAULT_PACE, **_pace(value, f"{where}.pace")}
        elif key == "asr":
            values[key] = settings_from(value, f"{where}.asr", environ or {})
        elif key == "enabled":
            if not isinstance(value, bool):
                raise ValueError(f"{where}.enabled must be true or false")
            values[key] = value
        elif key == "attempts":
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{where}.attempts must be a whole number of at least 1")
            values[key] = value
        elif isinstance(value, int | float) and not isinstance(value, bool):
            values[key] = float(value)
        else:
            raise ValueError(f"{where}.{key} must be a number")
    return Thresholds(**values)  # type: ignore[arg-type]


def _pace(table: object, where: str) -> dict[str, tuple[float, float]]:
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be a table of language = [low, high]")
    out: dict[str, tuple[float, float]] = {}
    for language, bounds in table.items():
        ok = isinstance(bounds, list) and len(bounds) == 2
        ok = ok and all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds)
        if not ok or not 0 <= bounds[0] < bounds[1]:
            raise ValueError(f"{where}.{language} must be [low, high] seconds per character")
        out[str(language)] = (float(bounds[0]), float(bounds[1]))
    return out
