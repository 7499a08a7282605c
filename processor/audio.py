"""Pure WAV framing: wrap PCM, read WAV headers, join clips with silence between them.

Only integer PCM is handled, the one format every backend can emit. Headers are parsed with
``struct`` rather than the stdlib ``wave`` module because streaming writers (``espeak-ng
--stdout``, ffmpeg to a pipe) cannot seek back to fill in sizes and leave placeholders such
as 0x7FFFF000 or 0xFFFFFFFF, which ``wave`` takes at face value. Every WAV produced here is a
canonical 44-byte-header file that ``wave`` opens.

Malformed input always raises ``ValueError``; callers decide whether that is transient (a
truncated response) or permanent.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

_RIFF = struct.Struct("<4sI4s")
_CHUNK = struct.Struct("<4sI")
_FMT = struct.Struct("<HHIIHH")
_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")

_FORMAT_PCM = 0x0001
_FORMAT_EXTENSIBLE = 0xFFFE
#: Tail shared by all KSDATAFORMAT_SUBTYPE GUIDs; the first two bytes are the format tag.
_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"

#: A data size this large (2 GiB minus 64 KiB) that overruns the input is a placeholder left by
#: a streaming writer, not a truncated clip: no real response of ours is anywhere near it.
STREAMED_SIZE_MIN = 0x7FFF_0000
_U32_MAX = 0xFFFF_FFFF


@dataclass(frozen=True, slots=True)
class WavInfo:
    """What a WAV holds: its PCM format and length."""

    sample_rate: int
    channels: int
    #: Bytes per sample (1 = unsigned 8-bit, 2 = signed 16-bit, ...).
    sample_width: int
    frames: int
    #: Length in milliseconds, rounded half up.
    duration_ms: int

    @property
    def frame_size(self) -> int:
        """Bytes per frame: one sample for each channel."""
        return self.channels * self.sample_width


@dataclass(frozen=True, slots=True)
class _Format:
    sample_rate: int
    channels: int
    sample_width: int


def pcm_to_wav(pcm: bytes, sample_rate: int, channels: int = 1, sample_width: int = 2) -> bytes:
    """Wrap raw little-endian PCM in a canonical WAV header.

    Raises ``ValueError`` for a partial trailing frame (a truncated stream) or a bad format.
    """
    header = _canonical_header(len(pcm), sample_rate, channels, sample_width)
    return header + pcm + b"\x00" * (len(pcm) % 2)


def _canonical_header(size: int, sample_rate: int, channels: int, sample_width: int) -> bytes:
    """The 44-byte header :func:`pcm_to_wav` writes for ``size`` bytes of PCM."""
    frame_size = _check_format(sample_rate, channels, sample_width)
    if size % frame_size:
        raise ValueError(f"PCM length {size} is not a whole number of {frame_size}-byte frames")
    pad = size % 2  # RIFF chunks are word-aligned
    if 36 + size + pad > _U32_MAX:
        raise ValueError(f"PCM of {size} bytes does not fit in a WAV file")
    return _HEADER.pack(
        b"RIFF", 36 + size + pad, b"WAVE",
        b"fmt ", 16, _FORMAT_PCM, channels, sample_rate, sample_rate * frame_size,
        frame_size, sample_width * 8,
        b"data", size,
    )  # fmt: skip


def wav_info(data: bytes) -> WavInfo:
    """The format and length of a PCM WAV; ``ValueError`` if it is not one or is truncated."""
    fmt, _, size = _locate_pcm(data)
    return _info(fmt, size)


def wav_pcm(data: bytes) -> tuple[WavInfo, bytes]:
    """The format and the PCM payload of a WAV; ``ValueError`` as for :func:`wav_info`."""
    fmt, start, size = _locate_pcm(data)
    return _info(fmt, size), data[start : start + size]


def wav_pcm_view(data: bytes) -> tuple[WavInfo, memoryview]:
    """As :func:`wav_pcm`, the payload a view into ``data`` (no copy of the audio)."""
    fmt, start, size = _locate_pcm(data)
    return _info(fmt, size), memoryview(data)[start : start + size]


def fix_streamed_wav(data: bytes) -> bytes:
    """Rewrite a WAV with placeholder sizes (streamed to a pipe) as a canonical one.

    Any other valid WAV comes back canonical too; chunks other than fmt and data are dropped.
    A WAV that is canonical already comes back as it is (the same object: no copy).
    """
    fmt, start, size = _locate_pcm(data)
    header = _canonical_header(size, fmt.sample_rate, fmt.channels, fmt.sample_width)
    sized = start == len(header) and len(data) == start + size + size % 2
    if sized and (not size % 2 or data[-1] == 0) and data.startswith(header):
        return data
    return header + data[start : start + size] + b"\x00" * (size % 2)


def join_wavs(parts: Sequence[bytes], silence_ms: int = 200) -> bytes:
    """One WAV of ``parts`` in order, with ``silence_ms`` of silence between neighbours.

    All parts must share sample rate, channels and sample width (``ValueError`` otherwise).
    """
    if not parts:
        raise ValueError("nothing to join")
    decoded = [wav_pcm(part) for part in parts]
    first = decoded[0][0]
    for index, (info, _) in enumerate(decoded[1:], 1):
        if _format_of(info) != _format_of(first):
            raise ValueError(f"part {index} is {_describe(info)}, part 0 is {_describe(first)}")
    gap = silence(first.sample_rate, first.channels, first.sample_width, silence_ms)
    pcm = gap.join(pcm for _, pcm in decoded)
    return pcm_to_wav(pcm, first.sample_rate, first.channels, first.sample_width)


def silence(sample_rate: int, channels: int, sample_width: int, ms: int) -> bytes:
    """``ms`` milliseconds of silent PCM (rounded to the nearest frame)."""
    _check_format(sample_rate, channels, sample_width)
    # 8-bit WAV is unsigned: its zero level is 0x80, and 0x00 would be a full-scale click.
    zero = b"\x80" if sample_width == 1 else b"\x00" * sample_width
    return zero * (silence_frames(sample_rate, ms) * channels)


def silence_frames(sample_rate: int, ms: int) -> int:
    """Frames in ``ms`` milliseconds at ``sample_rate``, rounded half up."""
    if ms < 0:
        raise ValueError(f"negative duration {ms} ms")
    return (sample_rate * ms + 500) // 1000


def _check_format(sample_rate: int, channels: int, sample_width: int) -> int:
    """The frame size of a valid PCM format; ``ValueError`` for one a WAV cannot hold."""
    if not 1 <= sample_width <= 4:
        raise ValueError(f"sample width must be 1 to 4 bytes, not {sample_width}")
    if not 1 <= channels <= 0xFFFF:
        raise ValueError(f"channel count must be 1 to 65535, not {channels}")
    frame_size = channels * sample_width
    if sample_rate < 1 or sample_rate * frame_size > _U32_MAX or frame_size > 0xFFFF:
        raise ValueError(f"unsupported format: {sample_rate} Hz, {channels} x {sample_width} B")
    return frame_size


def _locate_pcm(data: bytes) -> tuple[_Format, int, int]:
    """The format and the (start, size) of the PCM payload; the RIFF size is not trusted."""
    if len(data) < _RIFF.size:
        raise ValueError(f"not a WAV: {len(data)} bytes is shorter than a RIFF header")
    riff, _, wave = _RIFF.unpack_from(data)
    if riff != b"RIFF" or wave != b"WAVE":
        raise ValueError("not a WAV: no RIFF/WAVE header")
    fmt: _Format | None = None
    pos = _RIFF.size
    while pos + _CHUNK.size <= len(data):
        chunk_id, size = _CHUNK.unpack_from(data, pos)
        body = pos + _CHUNK.size
        if chunk_id == b"data":
            if fmt is None:
                raise ValueError("invalid WAV: data chunk before fmt chunk")
            return fmt, body, _data_size(data, body, size, fmt)
        if body + size > len(data):
            raise ValueError(f"truncated WAV: {chunk_id!r} chunk runs past the end")
        if chunk_id == b"fmt ":
            fmt = _parse_fmt(data[body : body + size])
        pos = body + size + size % 2
    raise ValueError(f"invalid WAV: no {'data' if fmt else 'fmt'} chunk")


def _data_size(data: bytes, start: int, size: int, fmt: _Format) -> int:
    """The real payload size: the data to the end for a streamed header; whole frames only."""
    available = len(data) - start
    if size > available:
        if size < STREAMED_SIZE_MIN:
            raise ValueError(f"truncated WAV: data chunk of {size} bytes has only {available}")
        size = available
    frame_size = fmt.channels * fmt.sample_width
    if size % frame_size:
        raise ValueError(f"truncated WAV: {size} data bytes end inside a {frame_size}-byte frame")
    return size


def _parse_fmt(body: bytes) -> _Format:
    """The PCM format in a fmt chunk body; ``ValueError`` for anything but integer PCM."""
    if len(body) < _FMT.size:
        raise ValueError(f"invalid WAV: fmt chunk of {len(body)} bytes")
    tag, channels, sample_rate, _, _, bits = _FMT.unpack_from(body)
    # byte rate and block align are derived values; like ``wave`` we trust channels and bits.
    if tag == _FORMAT_EXTENSIBLE and len(body) >= 40 and body[26:40] == _GUID_TAIL:
        tag = int.from_bytes(body[24:26], "little")
    if tag != _FORMAT_PCM:
        raise ValueError(f"not PCM: WAV format tag 0x{tag:04x}")
    if bits % 8 or not 8 <= bits <= 32:
        raise ValueError(f"unsupported WAV: {bits} bits per sample")
    try:
        _check_format(sample_rate, channels, bits // 8)
    except ValueError as exc:
        raise ValueError(f"unsupported WAV: {exc}") from None
    return _Format(sample_rate, channels, bits // 8)


def _info(fmt: _Format, size: int) -> WavInfo:
    frames = size // (fmt.channels * fmt.sample_width)
    duration_ms = (frames * 1000 + fmt.sample_rate // 2) // fmt.sample_rate
    return WavInfo(fmt.sample_rate, fmt.channels, fmt.sample_width, frames, duration_ms)


def _format_of(info: WavInfo) -> tuple[int, int, int]:
    return info.sample_rate, info.channels, info.sample_width


def _describe(info: WavInfo) -> str:
    return f"{info.sample_rate} Hz, {info.channels} channel(s), {info.sample_width * 8}-bit"
