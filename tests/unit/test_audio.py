"""Unit and property tests of the pure WAV helpers."""

from __future__ import annotations

import contextlib
import io
import struct
import wave

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from processor.audio import (
    STREAMED_SIZE_MIN,
    WavInfo,
    fix_streamed_wav,
    join_wavs,
    pcm_to_wav,
    silence,
    silence_frames,
    wav_info,
    wav_pcm,
    wav_pcm_view,
)

Format = tuple[int, int, int]  # sample rate, channels, sample width
COMMON_RATES = [8000, 11025, 16000, 22050, 24000, 44100, 48000]

formats = st.tuples(
    st.one_of(st.sampled_from(COMMON_RATES), st.integers(1, 384_000)),
    st.integers(1, 8),
    st.integers(1, 4),
)


@st.composite
def clips(draw: st.DrawFn, fmt: Format | None = None) -> tuple[Format, bytes]:
    """A PCM format and whole frames of random PCM in it."""
    rate, channels, width = fmt if fmt is not None else draw(formats)
    frames = draw(st.integers(0, 300))
    size = frames * channels * width
    return (rate, channels, width), draw(st.binary(min_size=size, max_size=size))


def stdlib_wav(pcm: bytes, rate: int, channels: int = 1, width: int = 2) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(pcm)
    return buf.getvalue()


def stdlib_read(data: bytes) -> tuple[Format, int, bytes]:
    with wave.open(io.BytesIO(data), "rb") as wav:
        fmt = (wav.getframerate(), wav.getnchannels(), wav.getsampwidth())
        return fmt, wav.getnframes(), wav.readframes(wav.getnframes())


def chunk(chunk_id: bytes, body: bytes, size: int | None = None, pad: bool = True) -> bytes:
    size = len(body) if size is None else size
    return struct.pack("<4sI", chunk_id, size) + body + b"\x00" * (len(body) % 2 * pad)


def fmt_body(rate: int = 16000, channels: int = 1, bits: int = 16, tag: int = 1) -> bytes:
    block = channels * bits // 8
    return struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)


def riff(*chunks: bytes, size: int | None = None) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return struct.pack("<4sI", b"RIFF", len(body) if size is None else size) + body


# --- pcm_to_wav ------------------------------------------------------------------------------


@given(clips())
def test_round_trip_keeps_format_and_payload(clip: tuple[Format, bytes]) -> None:
    (rate, channels, width), pcm = clip
    info, payload = wav_pcm(pcm_to_wav(pcm, rate, channels, width))
    assert payload == pcm
    assert (info.sample_rate, info.channels, info.sample_width) == (rate, channels, width)
    assert info.frames == len(pcm) // (channels * width)
    assert wav_info(pcm_to_wav(pcm, rate, channels, width)) == info


@given(clips())
def test_a_canonical_wav_is_not_copied_and_its_pcm_is_viewed_in_place(
    clip: tuple[Format, bytes],
) -> None:
    """fix_streamed_wav hands a canonical WAV back as the same object and wav_pcm_view reads
    its PCM without a copy (issue 17: each copy of a body was heap churn on every chunk)."""
    (rate, channels, width), pcm = clip
    wav = pcm_to_wav(pcm, rate, channels, width)
    assert fix_streamed_wav(wav) is wav
    info, view = wav_pcm_view(wav)
    assert (info, bytes(view)) == wav_pcm(wav)
    assert view.obj is wav
    # Any difference from the canonical layout (odd length without its pad byte, trailing
    # chunk, a non-zero pad byte) still comes back rewritten, canonical.
    for other in (wav + b"LIST\x00\x00\x00\x00", wav[:-1] + b"\x01" if len(pcm) % 2 else wav):
        fixed = fix_streamed_wav(other)
        assert fixed == wav
        assert fixed is not other or other is wav


@given(clips())
def test_stdlib_wave_opens_every_wav_we_write(clip: tuple[Format, bytes]) -> None:
    (rate, channels, width), pcm = clip
    fmt, frames, payload = stdlib_read(pcm_to_wav(pcm, rate, channels, width))
    assert fmt == (rate, channels, width)
    assert frames == len(pcm) // (channels * width)
    assert payload == pcm


@given(clips())
def test_header_matches_the_stdlib_writer_and_sizes_are_consistent(
    clip: tuple[Format, bytes],
) -> None:
    (rate, channels, width), pcm = clip
    ours = pcm_to_wav(pcm, rate, channels, width)
    riff_size, data_size = (
        struct.unpack_from("<I", ours, 4)[0],
        struct.unpack_from("<I", ours, 40)[0],
    )
    assert riff_size == len(ours) - 8
    assert data_size == len(pcm)
    assert len(ours) % 2 == 0  # an odd payload gets its RIFF pad byte
    if len(pcm) % 2 == 0:  # the stdlib writer leaves out the pad byte, otherwise identical
        assert ours == stdlib_wav(pcm, rate, channels, width)


def test_known_header_bytes() -> None:
    wav = pcm_to_wav(b"\x01\x00\x02\x00", 16000)
    assert wav == (
        b"RIFF\x28\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00"
        b"\x80\x3e\x00\x00\x00\x7d\x00\x00\x02\x00\x10\x00data\x04\x00\x00\x00"
        b"\x01\x00\x02\x00"
    )


@pytest.mark.parametrize(
    ("size", "channels", "width"),
    [(1, 1, 2), (3, 1, 2), (5, 2, 2), (2, 1, 3), (7, 2, 4)],
)
def test_partial_trailing_frame_is_an_error(size: int, channels: int, width: int) -> None:
    with pytest.raises(ValueError, match="whole number of"):
        pcm_to_wav(b"\x00" * size, 16000, channels, width)


@pytest.mark.parametrize(
    ("rate", "channels", "width"),
    [(0, 1, 2), (-8000, 1, 2), (16000, 0, 2), (16000, 1, 0), (16000, 1, 5), (2**31, 2, 2)],
)
def test_bad_formats_are_rejected(rate: int, channels: int, width: int) -> None:
    with pytest.raises(ValueError, match=r"sample width|channel count|unsupported format"):
        pcm_to_wav(b"", rate, channels, width)
    with pytest.raises(ValueError, match=r"sample width|channel count|unsupported format"):
        silence(rate, channels, width, 10)


def test_empty_pcm_is_a_valid_empty_wav() -> None:
    assert wav_info(pcm_to_wav(b"", 22050)) == WavInfo(22050, 1, 2, 0, 0)
    assert stdlib_read(pcm_to_wav(b"", 22050)) == ((22050, 1, 2), 0, b"")


# --- wav_info ---------------------------------------------------------------------------------


def test_wav_info_of_one_second_at_16k() -> None:
    info = wav_info(pcm_to_wav(b"\x00\x00" * 16000, 16000))
    assert info == WavInfo(16000, 1, 2, 16000, 1000)
    assert info.frame_size == 2


@pytest.mark.parametrize(
    ("frames", "rate", "ms"),
    [(3, 8000, 0), (4, 8000, 1), (12, 8000, 2), (22050, 22050, 1000), (1, 1, 1000), (1, 3, 333)],
)
def test_duration_is_rounded_half_up(frames: int, rate: int, ms: int) -> None:
    assert wav_info(pcm_to_wav(b"\x00\x00" * frames, rate)).duration_ms == ms


@given(clips())
def test_reads_what_the_stdlib_writer_writes(clip: tuple[Format, bytes]) -> None:
    (rate, channels, width), pcm = clip
    info, payload = wav_pcm(stdlib_wav(pcm, rate, channels, width))
    assert (info.sample_rate, info.channels, info.sample_width) == (rate, channels, width)
    assert payload == pcm


def test_other_chunks_are_skipped_including_odd_sized_ones() -> None:
    pcm = b"\x01\x02\x03\x04"
    data = riff(
        chunk(b"JUNK", b"\xff" * 3),  # odd: followed by a pad byte
        chunk(b"fmt ", fmt_body() + b"\x00\x00"),  # 18-byte fmt with cbSize
        chunk(b"LIST", b"INFOISFT\x05\x00\x00\x00abcd\x00"),
        chunk(b"data", pcm),
        chunk(b"id3 ", b"trailing metadata"),
    )
    assert wav_pcm(data) == (WavInfo(16000, 1, 2, 2, 0), pcm)


def test_wave_format_extensible_pcm_is_accepted() -> None:
    guid = struct.pack("<H", 1) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    ext = struct.pack("<HHI", 22, 24, 0x4) + guid  # cbSize, valid bits, channel mask
    data = riff(
        chunk(b"fmt ", fmt_body(48000, 1, 24, tag=0xFFFE) + ext), chunk(b"data", b"\x00" * 6)
    )
    assert wav_info(data) == WavInfo(48000, 1, 3, 2, 0)
    assert stdlib_read(fix_streamed_wav(data)) == ((48000, 1, 3), 2, b"\x00" * 6)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter than a RIFF header"),
        (b"RIFF\x00\x00\x00\x00WAV", "shorter than a RIFF header"),
        (b"RIFX\x24\x00\x00\x00WAVE", "no RIFF/WAVE header"),
        (b"RIFF\x24\x00\x00\x00AVI ", "no RIFF/WAVE header"),
        (b"ID3\x04" + b"\x00" * 40, "no RIFF/WAVE header"),
        (riff(), "no fmt chunk"),
        (riff(chunk(b"fmt ", fmt_body())), "no data chunk"),
        (riff(chunk(b"data", b"\x00\x00"), chunk(b"fmt ", fmt_body())), "data chunk before fmt"),
        (riff(chunk(b"fmt ", fmt_body()[:14])), "fmt chunk of 14 bytes"),
        (riff(chunk(b"fmt ", fmt_body(), size=40)), "runs past the end"),
        (riff(chunk(b"fmt ", fmt_body(tag=3, bits=32)), chunk(b"data", b"")), "format tag 0x0003"),
        (riff(chunk(b"fmt ", fmt_body(tag=0xFFFE)), chunk(b"data", b"")), "format tag 0xfffe"),
        (riff(chunk(b"fmt ", fmt_body(bits=12)), chunk(b"data", b"")), "12 bits"),
        (riff(chunk(b"fmt ", fmt_body(bits=0)), chunk(b"data", b"")), "0 bits"),
        (riff(chunk(b"fmt ", fmt_body(bits=64)), chunk(b"data", b"")), "64 bits"),
        (riff(chunk(b"fmt ", fmt_body(channels=0)), chunk(b"data", b"")), "channel count"),
        (riff(chunk(b"fmt ", fmt_body(rate=0)), chunk(b"data", b"")), "unsupported format"),
        (riff(chunk(b"fmt ", fmt_body()), chunk(b"data", b"\x00" * 3)), "inside a 2-byte frame"),
    ],
)
def test_invalid_wavs_raise_a_clear_value_error(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        wav_info(data)


def test_truncated_data_chunk_is_an_error() -> None:
    wav = pcm_to_wav(b"\x00\x01" * 100, 16000)
    with pytest.raises(ValueError, match="data chunk of 200 bytes has only 150"):
        wav_info(wav[:-50])


@given(clips(), st.data())
def test_every_cut_short_wav_is_rejected(clip: tuple[Format, bytes], data: st.DataObject) -> None:
    (rate, channels, width), pcm = clip
    assume(len(pcm) % 2 == 0)  # otherwise cutting only the pad byte leaves a valid file
    wav = pcm_to_wav(pcm, rate, channels, width)
    cuts = [*range(min(len(wav), 48)), len(wav) - 1, data.draw(st.integers(0, len(wav) - 1))]
    for cut in cuts:
        with pytest.raises(ValueError, match="WAV"):
            wav_info(wav[:cut])


@given(st.binary(max_size=200))
@example(b"RIFF\xff\xff\xff\xffWAVE")
@example(b"RIFF\x00\x00\x00\x00WAVEfmt \xff\xff\xff\xff")
def test_random_bytes_raise_value_error_or_nothing(data: bytes) -> None:
    for candidate in (data, b"RIFF\x00\x00\x00\x00WAVE" + data):
        with contextlib.suppress(ValueError):
            wav_pcm(candidate)


@given(clips(), st.data())
def test_corrupted_wavs_raise_value_error_or_parse(
    clip: tuple[Format, bytes], data: st.DataObject
) -> None:
    (rate, channels, width), pcm = clip
    wav = bytearray(pcm_to_wav(pcm, rate, channels, width))
    for _ in range(data.draw(st.integers(1, 4))):
        wav[data.draw(st.integers(0, min(len(wav), 48) - 1))] = data.draw(st.integers(0, 255))
    try:
        info, payload = wav_pcm(bytes(wav))
    except ValueError:
        return
    assert len(payload) == info.frames * info.frame_size


# --- streamed headers -------------------------------------------------------------------------


def streamed(pcm: bytes, riff_size: int, data_size: int, rate: int = 22050) -> bytes:
    """A WAV as a writer that cannot seek back leaves it: placeholder sizes."""
    return riff(
        chunk(b"fmt ", fmt_body(rate)),
        chunk(b"data", pcm, size=data_size, pad=False),
        size=riff_size,
    )


PLACEHOLDERS = [
    pytest.param(0xFFFFFFFF, 0xFFFFFFFF, id="ffmpeg-pipe"),
    pytest.param(0x7FFFF024, 0x7FFFF000, id="espeak-ng-stdout"),
    pytest.param(0x7FFFFFFF, 0x7FFFFFFF, id="espeak-stdout"),
    pytest.param(0, STREAMED_SIZE_MIN, id="smallest-placeholder"),
]


@pytest.mark.parametrize(("riff_size", "data_size"), PLACEHOLDERS)
def test_streamed_header_runs_data_to_the_end(riff_size: int, data_size: int) -> None:
    pcm = bytes(range(256)) * 4
    assert wav_pcm(streamed(pcm, riff_size, data_size)) == (WavInfo(22050, 1, 2, 512, 23), pcm)


@pytest.mark.parametrize(("riff_size", "data_size"), PLACEHOLDERS)
def test_fix_streamed_wav_writes_real_sizes(riff_size: int, data_size: int) -> None:
    pcm = b"\x10\x00\xf0\xff" * 300
    fixed = fix_streamed_wav(streamed(pcm, riff_size, data_size))
    assert struct.unpack_from("<I", fixed, 4)[0] == len(fixed) - 8
    assert struct.unpack_from("<I", fixed, 40)[0] == len(pcm)
    assert stdlib_read(fixed) == ((22050, 1, 2), 600, pcm)


def test_size_just_below_the_placeholder_range_is_truncation() -> None:
    with pytest.raises(ValueError, match="truncated"):
        wav_info(streamed(b"\x00\x00", 0xFFFFFFFF, STREAMED_SIZE_MIN - 2))


def test_streamed_data_ending_mid_frame_is_truncation() -> None:
    with pytest.raises(ValueError, match="inside a 2-byte frame"):
        wav_info(streamed(b"\x00" * 7, 0xFFFFFFFF, 0xFFFFFFFF))


@given(clips())
def test_fix_streamed_wav_is_identity_on_our_own_wavs(clip: tuple[Format, bytes]) -> None:
    (rate, channels, width), pcm = clip
    wav = pcm_to_wav(pcm, rate, channels, width)
    assert fix_streamed_wav(wav) == wav


# --- silence and join_wavs --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "ms", "frames"),
    [
        (16000, 200, 3200),
        (22050, 200, 4410),
        (22050, 1, 22),
        (44100, 1, 44),
        (1, 499, 0),
        (1, 500, 1),
    ],
)
def test_silence_frames_round_half_up(rate: int, ms: int, frames: int) -> None:
    assert silence_frames(rate, ms) == frames
    assert len(silence(rate, 2, 2, ms)) == frames * 4


def test_silence_is_the_zero_level() -> None:
    assert silence(8000, 1, 2, 1) == b"\x00" * 16
    assert silence(8000, 2, 3, 1) == b"\x00" * 48
    assert silence(8000, 1, 1, 1) == b"\x80" * 8  # 8-bit WAV is unsigned
    assert silence(8000, 1, 2, 0) == b""


def test_negative_silence_is_rejected() -> None:
    with pytest.raises(ValueError, match="negative"):
        silence(8000, 1, 2, -1)
    with pytest.raises(ValueError, match="negative"):
        join_wavs([pcm_to_wav(b"", 8000)] * 2, silence_ms=-1)


@given(st.sampled_from(COMMON_RATES), st.integers(0, 10_000))
def test_silence_duration_round_trips_at_common_rates(rate: int, ms: int) -> None:
    assert wav_info(pcm_to_wav(silence(rate, 1, 2, ms), rate)).duration_ms == ms


@given(formats.flatmap(lambda f: st.lists(clips(f), min_size=1, max_size=5)), st.integers(0, 500))
def test_join_length_is_parts_plus_gaps(parts: list[tuple[Format, bytes]], gap_ms: int) -> None:
    (rate, channels, width), _ = parts[0]
    wavs = [pcm_to_wav(pcm, rate, channels, width) for _, pcm in parts]
    info, pcm = wav_pcm(join_wavs(wavs, silence_ms=gap_ms))
    gap = silence_frames(rate, gap_ms)
    assert info.frames == sum(wav_info(w).frames for w in wavs) + gap * (len(wavs) - 1)
    assert (info.sample_rate, info.channels, info.sample_width) == (rate, channels, width)
    assert pcm == silence(rate, channels, width, gap_ms).join(p for _, p in parts)
    assert stdlib_read(join_wavs(wavs, silence_ms=gap_ms))[1] == info.frames


def test_join_puts_silence_only_between_parts() -> None:
    a, b = b"\x01\x00" * 3, b"\x02\x00" * 2
    joined = join_wavs([pcm_to_wav(a, 1000), pcm_to_wav(b, 1000)], silence_ms=4)
    assert wav_pcm(joined)[1] == a + b"\x00\x00" * 4 + b
    assert wav_pcm(join_wavs([pcm_to_wav(a, 1000)]))[1] == a
    assert wav_pcm(join_wavs([pcm_to_wav(a, 1000)] * 2, silence_ms=0))[1] == a + a


def test_join_accepts_streamed_parts() -> None:
    part = streamed(b"\x05\x00" * 10, 0xFFFFFFFF, 0xFFFFFFFF, rate=1000)
    assert wav_info(join_wavs([part, part], silence_ms=5)).frames == 25


@pytest.mark.parametrize(
    "other",
    [(16000, 1, 2), (22050, 2, 2), (22050, 1, 1)],
    ids=["rate", "channels", "width"],
)
def test_join_rejects_mixed_formats(other: Format) -> None:
    first = pcm_to_wav(b"\x00\x00", 22050)
    second = pcm_to_wav(b"\x00" * 4, *other)
    with pytest.raises(ValueError, match="part 1 is"):
        join_wavs([first, first, second][1:])
    with pytest.raises(ValueError, match="part 2 is"):
        join_wavs([first, first, second])


def test_join_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="nothing to join"):
        join_wavs([])


def test_join_propagates_an_invalid_part() -> None:
    with pytest.raises(ValueError, match="not a WAV"):
        join_wavs([pcm_to_wav(b"", 8000), b"garbage"])
