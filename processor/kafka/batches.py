"""Kafka record batches (message format v2) read leniently, from the bytes a fetch returns.

aiokafka decodes every header name as UTF-8 while it iterates a batch, so one record whose
header name is not UTF-8 makes the whole batch unreadable through it (records after the bad
one too, even when skipped). The consumer adapter falls back to this reader for such a batch:
header names stay bytes here, so every record can be handed over, and the ones aiokafka
would refuse are marked. Pure: bytes in, values out; no client, no I/O.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable

from aiokafka import codec

# baseOffset, batchLength, partitionLeaderEpoch, magic, crc, attributes, lastOffsetDelta,
# firstTimestamp, maxTimestamp, producerId, producerEpoch, baseSequence, recordCount
_HEADER = struct.Struct(">qiibIhiqqqhii")
_PREFIX = 12  # baseOffset and batchLength: what is needed to find the batch's end
_CODECS: dict[int, Callable[[bytes], bytes]] = {
    1: codec.gzip_decode,
    2: codec.snappy_decode,
    3: codec.lz4_decode,
    4: codec.zstd_decode,
}
_LOG_APPEND_TIME = 0x08
_CONTROL = 0x20


@dataclasses.dataclass(frozen=True, slots=True)
class RawRecord:
    """One record as the broker stored it; header names are bytes."""

    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[bytes, bytes | None], ...]

    @property
    def bad_names(self) -> list[bytes]:
        """Header names that are not UTF-8 (aiokafka cannot hand such a record over)."""
        return [name for name, _ in self.headers if not _utf8(name)]

    @property
    def readable(self) -> bool:
        return not self.bad_names


@dataclasses.dataclass(frozen=True, slots=True)
class RawBatch:
    """A complete batch: where the next one starts, and its records (none for control)."""

    next_offset: int
    records: tuple[RawRecord, ...]

    @property
    def readable(self) -> bool:
        return all(r.readable for r in self.records)


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def read_batches(data: bytes) -> list[RawBatch]:
    """The complete batches in ``data`` (a fetch may end in a cut-off one: left out).

    Raises ``ValueError`` on a batch that is not format v2 or does not parse.
    """
    out: list[RawBatch] = []
    pos = 0
    while pos + _PREFIX <= len(data):
        _, length = struct.unpack_from(">qi", data, pos)
        end = pos + _PREFIX + length
        if end > len(data) or length < _HEADER.size - _PREFIX:
            break
        out.append(_batch(data[pos:end]))
        pos = end
    return out


def _batch(data: bytes) -> RawBatch:
    base, _, _, magic, _, attrs, last_delta, first_ts, max_ts, _, _, _, count = _HEADER.unpack_from(
        data
    )
    if magic != 2:
        raise ValueError(f"record batch at offset {base} has format v{magic}, not v2")
    if attrs & _CONTROL:
        return RawBatch(base + last_delta + 1, ())
    body = data[_HEADER.size :]
    decompress = _CODECS.get(attrs & 0x07)
    if attrs & 0x07 and decompress is None:
        raise ValueError(f"record batch at offset {base}: unknown codec {attrs & 0x07}")
    if decompress is not None:
        body = decompress(body)
    log_append = max_ts if attrs & _LOG_APPEND_TIME else None
    records = _Reader(body).records(count, base, first_ts, log_append)
    return RawBatch(base + last_delta + 1, tuple(records))


class _Reader:
    """Varints and length-prefixed bytes, read forwards."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def varint(self) -> int:
        shift = raw = 0
        while True:
            if self.pos >= len(self.data):
                raise ValueError("record batch ends inside a varint")
            byte = self.data[self.pos]
            self.pos += 1
            raw |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return (raw >> 1) ^ -(raw & 1)

    def blob(self) -> bytes | None:
        size = self.varint()
        if size < 0:
            return None
        if self.pos + size > len(self.data):
            raise ValueError("record batch ends inside a record")
        self.pos += size
        return self.data[self.pos - size : self.pos]

    def records(
        self, count: int, base: int, first_ts: int, log_append: int | None
    ) -> list[RawRecord]:
        out = []
        for _ in range(count):
            self.varint()  # length
            self.pos += 1  # attributes (unused)
            ts_delta = self.varint()
            offset = base + self.varint()
            key, value = self.blob(), self.blob()
            headers = []
            for _ in range(self.varint()):
                name = self.blob()
                if name is None:
                    raise ValueError(f"record at offset {offset} has a null header name")
                headers.append((name, self.blob()))
            ts = log_append if log_append is not None else first_ts + ts_delta
            out.append(RawRecord(offset, ts, key, value, tuple(headers)))
        return out
