"""Pure: a chunk's signal measures (level, silence, repetition) gathered a block at a time.

``processor.quality`` hands :func:`gather` the chunk's samples as blocks of whole 20 ms
frames (8-, 16- and 24-bit mono PCM decoded a block at a time; anything else as one block),
and reads the sums, extremes, per-frame power and per-frame band energies it keeps. The
temporaries (a block's float samples, windowed frames, spectrum, power) stay a block's size
however long the chunk is (issue 17: peak memory). Every value is the one the whole chunk at
once gives: per-frame values are computed row by row either way, and the sum for the mean is
exact for such PCM (each sample a multiple of 2^-23 or coarser), so its order does not matter.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.float64]

FRAME_S = 0.02
#: Samples decoded, windowed and transformed at once (whole frames): 192 KiB of float64, the
#: spectrum about as much at any rate, all below the 264 KiB mmap threshold ``processor.heap``
#: fixes, so these temporaries are reused from the heap instead of mapped afresh each time.
BLOCK_SAMPLES = 24_576
#: Mean squared band log-energy (bels) below which audio is steady: speech is near 1.
_STEADY = 0.1


def frame_size(rate: int) -> int:
    """Samples in one 20 ms frame."""
    return max(1, int(rate * FRAME_S))


@dataclasses.dataclass(slots=True)
class Signal:
    """What a chunk's blocks add up to (``frames``: whole 20 ms frames, a partial last one
    dropped; ``bands`` is empty when the chunk is too short for the repetition check)."""

    count: int
    rate: int
    min_lag_s: float
    nonfinite: int = 0
    total: float = 0.0
    high: float = -float("inf")
    low: float = float("inf")
    clipped: int = 0
    squares: Samples = dataclasses.field(default_factory=lambda: np.empty(0))
    sums: Samples = dataclasses.field(default_factory=lambda: np.empty(0))
    bands: Samples = dataclasses.field(default_factory=lambda: np.empty((0, 0)))

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    @property
    def peak(self) -> float:
        return max(self.high, -self.low) if self.count else 0.0  # |x| without its copy


def gather(blocks: Iterable[Samples], count: int, rate: int, min_lag_s: float) -> Signal:
    """The sums, extremes and per-frame values of ``count`` samples given in ``blocks`` (each
    a whole number of frames but the last)."""
    size = frame_size(rate)
    frames = count // size
    sig = Signal(count, rate, min_lag_s, squares=np.empty(frames), sums=np.empty(frames))
    window, edges = _bands(size)
    if _repeats_possible(count, rate, min_lag_s):
        sig.bands = np.empty((frames, len(edges) - 1))
    row = 0
    for block in blocks:
        finite = np.isfinite(block)
        bad = len(block) - int(np.count_nonzero(finite))
        clean = np.where(finite, block, 0.0) if bad else block
        sig.nonfinite += bad
        sig.total += float(clean.sum())
        if len(clean):
            sig.high = max(sig.high, float(clean.max()))
            sig.low = min(sig.low, float(clean.min()))
        sig.clipped += int(np.count_nonzero(clean >= 0.999))
        sig.clipped += int(np.count_nonzero(clean <= -0.999))
        rows = min(len(clean) // size, frames - row)
        if not rows:
            continue
        framed = clean[: rows * size].reshape(rows, size)
        np.einsum("ij,ij->i", framed, framed, out=sig.squares[row : row + rows])
        framed.sum(axis=1, out=sig.sums[row : row + rows])
        if len(sig.bands):
            _band_power(framed, window, edges, sig.bands[row : row + rows])
        row += rows
    return sig


def silence(sig: Signal, silence_dbfs: float) -> dict[str, float]:
    """Silent 20 ms frames: RMS (of the samples less their mean) below ``silence_dbfs``."""
    count = len(sig.squares)
    if not count:
        return {"leading_silence_s": 0.0, "trailing_silence_s": 0.0, "silence_ratio": 1.0}
    size, mean = frame_size(sig.rate), sig.mean
    # mean((x - m)^2) = mean(x^2) - 2 m mean(x) + m^2, without a mean-removed copy
    power = sig.squares / size
    power += mean * (mean - 2 * sig.sums / size)
    silent = power < 10 ** (silence_dbfs / 10)
    voiced = np.flatnonzero(~silent)
    if not len(voiced):
        lead = trail = count * FRAME_S
    else:
        lead, trail = voiced[0] * FRAME_S, (count - 1 - voiced[-1]) * FRAME_S
    return {
        "leading_silence_s": round(float(lead), 3),
        "trailing_silence_s": round(float(trail), 3),
        "silence_ratio": round(float(silent.mean()), 4),
    }


def repetition(sig: Signal) -> float:
    """The highest normalised correlation of the frame features (log band energies, each
    band's mean removed) with themselves shifted by a lag of ``min_lag_s`` up to half the
    length: near 1 when a stretch of audio repeats."""
    if not len(sig.bands):
        return 0.0
    feats = sig.bands
    feats += 1e-10
    np.log10(feats, out=feats)
    feats -= feats.mean(axis=0)
    if float((feats * feats).mean()) < _STEADY:
        return 0.0  # a steady sound (a tone, a hum): alike throughout, but no phrase looping
    count = len(feats)
    lags = np.arange(int(sig.min_lag_s / FRAME_S), count // 2 + 1)
    if not len(lags):
        return 0.0
    # For each lag, sum(a * b) / sqrt(sum(a * a) * sum(b * b)) with a = feats[:-lag] and
    # b = feats[lag:]: the products by the FFT (autocorrelation), the energies by cumsum.
    spectrum = np.fft.rfft(feats, n=2 * count, axis=0)
    products = np.fft.irfft((spectrum * spectrum.conj()).real, n=2 * count, axis=0).sum(axis=1)
    energy = np.concatenate([[0.0], np.cumsum((feats * feats).sum(axis=1))])
    denom = np.sqrt((energy[count - lags] - energy[0]) * (energy[count] - energy[lags]))
    ok = denom > 0
    if not ok.any():
        return 0.0
    return max(0.0, float((products[lags][ok] / denom[ok]).max()))


def _repeats_possible(count: int, rate: int, min_lag_s: float) -> bool:
    """Audio at least twice the shortest lag (and a rate): else no repetition is measured."""
    return bool(rate) and count >= 2 * int(min_lag_s / FRAME_S) * rate * FRAME_S


def _band_power(
    framed: Samples, window: Samples, edges: npt.NDArray[np.int_], out: Samples
) -> None:
    """Energy in each band of each frame, ``BLOCK_SAMPLES`` of frames at a time, into ``out``."""
    rows = max(1, BLOCK_SAMPLES // framed.shape[1])
    for start in range(0, len(framed), rows):
        spectrum = np.fft.rfft(framed[start : start + rows] * window, axis=1)
        power = spectrum.real**2  # then in place: the same operations, fewer arrays
        power += spectrum.imag**2
        np.add.reduceat(power[:, : edges[-1]], edges[:-1], axis=1, out=out[start : start + rows])


@functools.cache
def _bands(size: int) -> tuple[Samples, npt.NDArray[np.int_]]:
    """The Hann window of a frame of ``size`` samples and the edges of its eight log-spaced
    bands (one per frame size: a sample rate)."""
    edges = np.unique(np.geomspace(1, size // 2 + 1, 9).astype(int))
    window = np.hanning(size)
    for shared in (window, edges):
        shared.setflags(write=False)  # cached: shared by every call
    return window, edges
