"""The pipeline's WAV turned into the requested format, with ffmpeg in a subprocess.

``wav`` passes through untouched unless a different rate is asked for, and ``pcm`` (raw signed
16-bit little-endian) is cut out of the WAV without ffmpeg unless it needs resampling or a
different sample width. ``mp3``, ``flac`` and ``opus`` (in Ogg) always go through ffmpeg: the
WAV on its stdin, no temporary files, the process killed if the caller is cancelled.

What the returned :class:`Audio` says is measured from the output, not copied from the input:
the encoded bytes are decoded back to WAV by a second ffmpeg run and measured with ``wav_info``
(more robust than ffprobe, which estimates the length of a streamed MP3 from its bitrate and
reports none for a FLAC without sample count). Raw PCM has no header: its length is measured,
its rate is the one ffmpeg was told to produce.

On Linux ffmpeg writes into an anonymous in-memory file (``memfd_create``) rather than a pipe:
the output is then seekable, so ffmpeg finishes the MP3 with its LAME/Info header (frame count
and encoder padding, so decoders play exactly the input's length) and the FLAC with its sample
count and MD5. Elsewhere it writes to a pipe, and an MP3 decodes up to two frames longer.

Output is bit-exact (no encoder version tags, a fixed Ogg serial number), so the same input
always gives the same bytes and the same sha256.

Errors: no ffmpeg, or one built without the encoder, is ``Systemic`` (every request would fail
alike); ffmpeg rejecting our own WAV is ``Permanent``; ffmpeg killed by a signal (out of memory,
say) is ``Transient``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import struct
from collections.abc import Sequence

from processor.audio import WavInfo, fix_streamed_wav, wav_info, wav_pcm
from processor.backends.base import Audio
from processor.errors import InvalidInput, Permanent, Stage, Systemic, Transient, VoxlineError

FORMATS = ("wav", "pcm", "mp3", "flac", "opus")
#: The only rates an Opus encoder takes; anything else is resampled to 48 kHz.
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
#: The rates MPEG-1/2/2.5 layer III can carry; others go up to the next one (or 48 kHz).
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
#: Bitrate per channel, in kbit/s: ample for speech.
MP3_KBPS = 64
OPUS_KBPS = 48
INSTALL_HINT = "install it with infra/packages.sh (Debian: apt-get install ffmpeg)"
MAX_MESSAGE = 500

_QUIET = ("-hide_banner", "-loglevel", "error", "-nostats")
_PCM_CODECS = {1: "pcm_u8", 2: "pcm_s16le", 3: "pcm_s24le", 4: "pcm_s32le"}
_DEMUXERS = {"mp3": "mp3", "flac": "flac", "opus": "ogg"}
#: ffmpeg's words for "this build lacks what was asked for", as opposed to "bad input".
_MISSING_SUPPORT = (
    "Unknown encoder",
    "Encoder not found",
    "Unknown decoder",
    "Unknown input format",
    "is not a suitable output format",
)
_OPUS_HEAD = struct.Struct("<8sBBHI")


def output_rate(fmt: str, native: int, requested: int | None) -> int:
    """The rate ``fmt`` is delivered at: the requested one (else the native one) where the
    format can carry it, else the nearest it can (Opus: 48 kHz; MP3: the next rate up)."""
    rate = requested or native
    if fmt == "opus":
        return rate if rate in OPUS_RATES else 48000
    if fmt == "mp3":
        return next((r for r in MP3_RATES if r >= rate), MP3_RATES[-1])
    if fmt == "flac" and rate >= 65535 and rate % 10:
        return round(rate, -1)  # above 65535 Hz, FLAC headers count in steps of 10 Hz
    return rate


def ffmpeg_available(ffmpeg: str = "ffmpeg") -> bool:
    """Whether ``ffmpeg`` (a name on PATH or a path) can be run."""
    return shutil.which(ffmpeg) is not None


async def transcode(
    wav: bytes, fmt: str, *, sample_rate: int | None = None, ffmpeg: str = "ffmpeg"
) -> Audio:
    """``wav`` (a PCM WAV) as ``fmt`` at ``sample_rate`` (default: the WAV's own), measured."""
    return await _transcode(wav, fmt, sample_rate, ffmpeg, seekable=_can_use_memfd())


async def _transcode(
    wav: bytes, fmt: str, sample_rate: int | None, ffmpeg: str, *, seekable: bool
) -> Audio:
    if fmt not in FORMATS:
        raise InvalidInput(
            f"unknown audio format {fmt!r}; expected one of {', '.join(FORMATS)}",
            stage=Stage.SYNTHESIZE,
        )
    if sample_rate is not None and sample_rate < 1:
        raise InvalidInput(
            f"sample rate must be positive, not {sample_rate}", stage=Stage.SYNTHESIZE
        )
    info = _input_info(wav)
    rate = output_rate(fmt, info.sample_rate, sample_rate)
    same_rate = rate == info.sample_rate
    if fmt == "wav" and same_rate:
        return _wav_audio(wav)
    if fmt == "pcm" and same_rate and info.sample_width == 2:
        return _pcm_audio(wav_pcm(wav)[1], rate, info.channels)
    if info.frames == 0 and fmt in _DEMUXERS:
        raise Permanent(
            f"no audio to encode as {fmt}: the WAV holds no frames",
            stage=Stage.SYNTHESIZE,
            error_type="empty_audio",
        )
    args = encoder_args(fmt, rate, info.sample_width, info.channels)
    if fmt == "wav":
        return _wav_audio(fix_streamed_wav(await _run([ffmpeg, *args, "pipe:1"], wav, "encode")))
    if fmt == "pcm":
        return _pcm_audio(await _run([ffmpeg, *args, "pipe:1"], wav, "encode"), rate, info.channels)
    data, decoded = await _encode_and_decode(ffmpeg, args, wav, _DEMUXERS[fmt], seekable)
    measured = _decoded_info(decoded)
    rate = measured.sample_rate
    if fmt == "opus":  # Opus always decodes at 48 kHz; the rate it was encoded at is in its header
        rate = opus_input_rate(data) or rate
    return Audio(data, fmt, rate, measured.channels, measured.duration_ms)


def encoder_args(fmt: str, rate: int, sample_width: int, channels: int) -> list[str]:
    """ffmpeg arguments, up to the output, turning a WAV on stdin into ``fmt`` at ``rate``."""
    head = [*_QUIET, "-f", "wav", "-i", "pipe:0", "-map_metadata", "-1", "-ar", str(rate)]
    exact = ["-fflags", "+bitexact", "-flags:a", "+bitexact"]
    codec: list[str]
    if fmt == "wav":
        codec = ["-c:a", _PCM_CODECS[sample_width], "-f", "wav"]
    elif fmt == "pcm":
        codec = ["-c:a", "pcm_s16le", "-f", "s16le"]
    elif fmt == "mp3":
        codec = ["-c:a", "libmp3lame", "-b:a", f"{MP3_KBPS * channels}k", "-f", "mp3"]
    elif fmt == "flac":
        codec = ["-c:a", "flac", "-f", "flac"]
    elif fmt == "opus":
        codec = ["-c:a", "libopus", "-b:a", f"{OPUS_KBPS * channels}k", "-f", "ogg"]
    else:
        raise ValueError(f"unknown audio format {fmt!r}")
    return [*head, *exact, *codec]


def opus_input_rate(data: bytes) -> int | None:
    """The input sample rate an Ogg Opus stream's OpusHead records, or ``None``."""
    at = data.find(b"OpusHead", 0, 4096)  # in the first Ogg page
    if at < 0 or len(data) < at + _OPUS_HEAD.size:
        return None
    _, _, _, _, rate = _OPUS_HEAD.unpack_from(data, at)
    return rate or None


def _input_info(wav: bytes) -> WavInfo:
    try:
        return wav_info(wav)
    except ValueError as exc:
        raise Permanent(
            f"cannot transcode: {exc}", stage=Stage.SYNTHESIZE, error_type="malformed_audio"
        ) from exc


def _wav_audio(wav: bytes) -> Audio:
    info = wav_info(wav)
    return Audio(wav, "wav", info.sample_rate, info.channels, info.duration_ms)


def _pcm_audio(pcm: bytes, rate: int, channels: int) -> Audio:
    frame_size = 2 * channels
    if len(pcm) % frame_size:
        raise Permanent(
            f"ffmpeg wrote {len(pcm)} bytes of PCM, not whole {frame_size}-byte frames",
            stage=Stage.SYNTHESIZE,
            error_type="malformed_audio",
        )
    frames = len(pcm) // frame_size
    return Audio(pcm, "pcm", rate, channels, (frames * 1000 + rate // 2) // rate)


def _decoded_info(decoded: bytes) -> WavInfo:
    try:
        return wav_info(decoded)
    except ValueError as exc:
        raise Permanent(
            f"ffmpeg decoded its own output to malformed WAV: {exc}",
            stage=Stage.SYNTHESIZE,
            error_type="malformed_audio",
        ) from exc


async def _encode_and_decode(
    ffmpeg: str, args: list[str], wav: bytes, demuxer: str, seekable: bool
) -> tuple[bytes, bytes]:
    """The encoded bytes, and the same decoded back to WAV by ffmpeg."""
    decode = [ffmpeg, *_QUIET, "-f", demuxer, "-i"]
    to_wav = ["-vn", "-f", "wav", "-c:a", "pcm_s16le", "pipe:1"]
    if not seekable:
        data = await _run([ffmpeg, *args, "pipe:1"], wav, "encode")
        return data, await _run([*decode, "pipe:0", *to_wav], data, "decode its output")
    fd = os.memfd_create("voxline-transcode")
    try:
        # /dev/stdout reopens the memfd through the file protocol, which ffmpeg may seek.
        await _run([ffmpeg, *args, "-y", "/dev/stdout"], wav, "encode", stdout=fd)
        data = _read_all(fd)
        return data, await _run([*decode, "/dev/stdin", *to_wav], fd, "decode its output")
    finally:
        os.close(fd)


def _can_use_memfd() -> bool:
    return hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    parts: list[bytes] = []
    offset = 0
    while offset < size:
        part = os.pread(fd, size - offset, offset)
        if not part:
            break
        parts.append(part)
        offset += len(part)
    return b"".join(parts)


async def _run(
    argv: Sequence[str], stdin: bytes | int, what: str, stdout: int | None = None
) -> bytes:
    """Run ffmpeg with ``stdin`` (bytes, or a file descriptor); its stdout unless redirected.

    The process is killed and reaped if the caller is cancelled.
    """
    feed, source = (stdin, asyncio.subprocess.PIPE) if isinstance(stdin, bytes) else (None, stdin)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=source,
            stdout=asyncio.subprocess.PIPE if stdout is None else stdout,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:  # missing or not executable: down for every request alike
        raise Systemic(
            f"cannot run {argv[0]!r}: {exc.strerror or exc}; {INSTALL_HINT}",
            stage=Stage.SYNTHESIZE,
            error_type="ffmpeg_missing",
        ) from exc
    try:
        out, err = await process.communicate(feed)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    if process.returncode:
        raise _failure(process.returncode, err, what)
    return out or b""


def _failure(returncode: int, stderr: bytes, what: str) -> VoxlineError:
    message = _short(stderr)
    if returncode < 0:
        return Transient(
            f"ffmpeg was killed by signal {-returncode} trying to {what}: {message}",
            stage=Stage.SYNTHESIZE,
            error_type="ffmpeg_killed",
        )
    if any(marker in message for marker in _MISSING_SUPPORT):
        return Systemic(
            f"this ffmpeg cannot {what}: {message}; {INSTALL_HINT}",
            stage=Stage.SYNTHESIZE,
            error_type="ffmpeg_unsupported",
        )
    return Permanent(
        f"ffmpeg failed to {what} (exit {returncode}): {message}",
        stage=Stage.SYNTHESIZE,
        error_type="ffmpeg_failed",
    )


def _short(stderr: bytes) -> str:
    """ffmpeg's stderr on one line, its end kept when long (the error comes last)."""
    text = " ".join(stderr.decode("utf-8", "replace").split()) or "no error output"
    return text if len(text) <= MAX_MESSAGE else "..." + text[-(MAX_MESSAGE - 3) :]
