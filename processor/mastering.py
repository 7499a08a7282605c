"""Pure: loudness by ITU-R BS.1770-4 (gated integrated loudness, true peak), and mastering to a
profile by a static gain and a true-peak limiter (never a dynamic normaliser).

K-weighting is the standard's two biquads (high shelf, then high pass), their coefficients
derived for any sample rate as libebur128 does; the filter is applied through the FFT with the
filters' exact frequency response (the signal zero-padded, so the decaying IIR tail does not
wrap). True peak is the peak of the signal four times oversampled (FFT interpolation).

``processor.mastering_step`` applies them to a request's joined audio.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.float64]

_BLOCK_S, _STEP_S = 0.4, 0.1
_ABSOLUTE_GATE = -70.0
#: What digital silence measures as (in dB): below anything 24-bit audio can hold.
FLOOR_DB = -150.0
_RELATIVE_GATE = -10.0


@dataclasses.dataclass(frozen=True, slots=True)
class Profile:
    """A mastering target: integrated loudness (or RMS, for ACX) and a true-peak ceiling."""

    name: str
    integrated_lufs: float | None
    true_peak_dbtp: float
    rms_dbfs: float | None = None


PROFILES = {
    "ebu-r128": Profile("ebu-r128", -23.0, -1.0),
    "podcast": Profile("podcast", -16.0, -1.0),
    # ACX: RMS -23 to -18 dBFS (aim -20), peak at most -3 dBFS (aim below, for the encoder).
    "acx": Profile("acx", None, -3.5, rms_dbfs=-20.0),
}


@dataclasses.dataclass(frozen=True, slots=True)
class Loudness:
    integrated_lufs: float
    true_peak_dbtp: float
    rms_dbfs: float
    noise_floor_dbfs: float


def _biquads(rate: int) -> list[tuple[tuple[float, float, float], tuple[float, float, float]]]:
    """The K-weighting stages' (b, a) at ``rate`` (BS.1770 shelf and high pass)."""
    g, q, fc = 3.999843853973347, 0.7071752369554196, 1681.974450955533
    k = math.tan(math.pi * fc / rate)
    vh = 10 ** (g / 20)
    vb = vh**0.4996667741545416
    a0 = 1 + k / q + k * k
    shelf = (
        ((vh + vb * k / q + k * k) / a0, 2 * (k * k - vh) / a0, (vh - vb * k / q + k * k) / a0),
        (1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0),
    )
    q, fc = 0.5003270373238773, 38.13547087602444
    k = math.tan(math.pi * fc / rate)
    a0 = 1 + k / q + k * k
    high_pass = ((1.0, -2.0, 1.0), (1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0))
    return [shelf, high_pass]


def k_weighted(samples: Samples, rate: int) -> Samples:
    """``samples`` through the K-weighting filter."""
    n = len(samples)
    size = 1 << max(1, math.ceil(math.log2(n + rate)))  # a second of padding for the tail
    spectrum = np.fft.rfft(samples, size)
    z = np.exp(-1j * np.pi * np.arange(len(spectrum)) / (len(spectrum) - 1))
    for b, a in _biquads(rate):
        spectrum *= (b[0] + b[1] * z + b[2] * z * z) / (a[0] + a[1] * z + a[2] * z * z)
    return np.asarray(np.fft.irfft(spectrum, size)[:n], dtype=np.float64)


def integrated_lufs(samples: Samples, rate: int) -> float:
    """Gated integrated loudness (LUFS) of mono ``samples`` (-inf for silence)."""
    weighted = k_weighted(samples, rate)
    block, step = round(_BLOCK_S * rate), round(_STEP_S * rate)
    if len(weighted) < block:
        return -math.inf
    squares = np.concatenate([[0.0], np.cumsum(weighted * weighted)])
    starts = np.arange(0, len(weighted) - block + 1, step)
    power = (squares[starts + block] - squares[starts]) / block
    with np.errstate(divide="ignore"):
        loud = -0.691 + 10 * np.log10(power)
    kept = power[loud > _ABSOLUTE_GATE]
    if not len(kept):
        return -math.inf
    relative = -0.691 + 10 * math.log10(kept.mean()) + _RELATIVE_GATE
    with np.errstate(divide="ignore"):
        kept = power[(loud > _ABSOLUTE_GATE) & (loud > relative)]
    return -0.691 + 10 * math.log10(kept.mean())


def true_peak(samples: Samples) -> float:
    """The peak (linear) of ``samples`` four times oversampled, in one-second pieces: each
    piece is interpolated with 256 samples of context either side, and only its middle is
    read (the FFT treats a piece as periodic: its wrapped edges ring)."""
    peak = float(np.abs(samples).max()) if len(samples) else 0.0
    piece, pad = 48_000, 256
    for start in range(0, len(samples), piece):
        lo = max(0, start - pad)
        part = samples[lo : start + piece + pad]
        up = np.fft.irfft(np.fft.rfft(part), 4 * len(part)) * 4
        middle = up[4 * (start - lo) : 4 * (start - lo + min(piece, len(samples) - start))]
        peak = max(peak, float(np.abs(middle).max()))
    return peak


def _db(value: float) -> float:
    return 20 * math.log10(value) if value > 0 else -math.inf


def measure(samples: Samples, rate: int) -> Loudness:
    """Integrated loudness, true peak, RMS and noise floor (the RMS of the quietest 10 % of
    50 ms windows, as ACX's checkers take it) of mono ``samples``."""
    frame = max(1, round(0.05 * rate))
    count = len(samples) // frame
    windows = np.sqrt((samples[: count * frame].reshape(count, frame) ** 2).mean(axis=1))
    quiet = np.sort(windows)[: max(1, count // 10)] if count else np.zeros(1)
    rms = float(np.sqrt((samples * samples).mean())) if len(samples) else 0.0
    return Loudness(
        integrated_lufs=_floored(integrated_lufs(samples, rate)),
        true_peak_dbtp=_floored(_db(true_peak(samples))),
        rms_dbfs=_floored(_db(rms)),
        noise_floor_dbfs=_floored(_db(float(quiet.mean()))),
    )


def _floored(value: float) -> float:
    """``value`` rounded, and digital silence (-inf, which JSON cannot carry) as ``FLOOR_DB``."""
    return round(max(value, FLOOR_DB), 2)


def master(samples: Samples, rate: int, profile: Profile) -> Samples:
    """A static gain to the profile's target, then a true-peak limiter at its ceiling: the
    gain dips only around the peaks that would pass it (5 ms before, 50 ms after)."""
    ceiling = 10 ** (profile.true_peak_dbtp / 20)
    out = samples
    for _ in range(4):  # limiting lowers the loudness a little: gain again, limit again
        gain_db = _to_target(out, rate, profile)
        if not math.isfinite(gain_db) or abs(gain_db) < 0.05:
            break
        out = out * 10 ** (gain_db / 20)
        for margin in (0.97, 0.93, 0.88, 0.8):  # inter-sample peaks rise above the samples'
            if true_peak(out) <= ceiling:
                break
            out = limit(out, rate, ceiling * margin)
    return np.asarray(out, dtype=np.float64)


def _to_target(samples: Samples, rate: int, profile: Profile) -> float:
    """The gain (dB) that brings ``samples`` to the profile's loudness or RMS."""
    if profile.integrated_lufs is not None:
        return profile.integrated_lufs - integrated_lufs(samples, rate)
    rms = float(np.sqrt((samples * samples).mean())) if len(samples) else 0.0
    return (profile.rms_dbfs or -20.0) - _db(rms)


def limit(samples: Samples, rate: int, ceiling: float) -> Samples:
    """Samples whose magnitude passes ``ceiling`` brought to it; the gain, taken per
    millisecond, falls 5 ms ahead of a peak and recovers over 50 ms."""
    ms = max(1, round(rate / 1000))
    count = -(-len(samples) // ms)
    padded = np.zeros(count * ms)
    padded[: len(samples)] = np.abs(samples)
    needed = np.minimum(1.0, ceiling / np.maximum(padded.reshape(count, ms).max(axis=1), 1e-12))
    before, after = 5, 50
    wide = np.concatenate([np.ones(after), needed, np.ones(before)])
    windows = np.lib.stride_tricks.sliding_window_view(wide, before + after + 1)
    gain = windows.min(axis=1)
    curve = np.interp(np.arange(len(samples)), np.arange(count) * ms + ms / 2, gain)
    return np.asarray(samples * curve, dtype=np.float64)


#: ACX's room tone before the speech, in seconds (marks and subtitles move by it).
ROOM_HEAD_S = 0.75


def room_tone(
    samples: Samples,
    rate: int,
    *,
    head_s: float = ROOM_HEAD_S,
    tail_s: float = 2.0,
    level_dbfs: float = -72.0,
) -> Samples:
    """ACX's room tone: quiet noise under the whole file (no digital silence) and ``head_s``
    before and ``tail_s`` after the speech, at ``level_dbfs`` RMS (seeded: the same input
    gives the same file)."""
    head, tail = round(head_s * rate), round(tail_s * rate)
    out = np.concatenate([np.zeros(head), samples, np.zeros(tail)])
    noise = np.random.default_rng(0).standard_normal(len(out)) * 10 ** (level_dbfs / 20)
    return np.asarray(out + noise, dtype=np.float64)
