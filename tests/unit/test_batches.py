"""The lenient record-batch reader against aiokafka's own, and on what aiokafka refuses."""

from __future__ import annotations

import struct

import pytest
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from hypothesis import given
from hypothesis import strategies as st

from processor.kafka.batches import read_batches
from tests.batches import batch

names = st.text(min_size=1, max_size=8)
blobs = st.none() | st.binary(max_size=30)
records = st.lists(
    st.tuples(blobs, blobs, st.lists(st.tuples(names, blobs), max_size=3)), min_size=1, max_size=8
)


def aiokafka_batch(
    recs: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]],
    base: int,
    codec: int,
) -> bytes:
    builder = DefaultRecordBatchBuilder(2, codec, 0, -1, -1, -1, 10**7)
    for i, (key, value, headers) in enumerate(recs):
        builder.append(i, 1_700_000_000_000 + 7 * i, key, value, headers)
    data = bytearray(builder.build())
    struct.pack_into(">q", data, 0, base)
    return bytes(data)


@given(records, st.integers(0, 10**9), st.sampled_from([0, 1]))
def test_readable_batches_read_as_aiokafka_reads_them(
    recs: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]],
    base: int,
    codec: int,
) -> None:
    data = aiokafka_batch(recs, base, codec)
    theirs = [
        (r.offset, r.timestamp, r.key, r.value, [(k.encode(), v) for k, v in r.headers])
        for r in DefaultRecordBatch(data)
    ]
    (ours,) = read_batches(data + data[: len(data) // 2])  # a cut-off second batch
    assert [(r.offset, r.timestamp_ms, r.key, r.value, list(r.headers)) for r in ours.records] == (
        theirs
    )
    assert ours.readable
    assert ours.next_offset == base + len(recs)


def test_a_header_name_that_is_not_utf8_marks_the_record_and_its_batch() -> None:
    data = batch(
        [
            (b"k0", b"before", [(b"ok", b"1")]),
            (b"k1", b"bad", [(b"\xff\xfe", b"v"), (b"x", None)]),
            (b"k2", b"after", []),
        ],
        base_offset=40,
        gzipped=True,
    )
    with pytest.raises(UnicodeDecodeError):
        list(DefaultRecordBatch(data))  # what aiokafka does with it
    (got,) = read_batches(data)
    assert not got.readable
    assert [r.readable for r in got.records] == [True, False, True]
    assert got.records[1].bad_names == [b"\xff\xfe"]
    assert (got.records[1].offset, got.records[1].key, got.records[1].value) == (41, b"k1", b"bad")
    assert got.records[1].headers == ((b"\xff\xfe", b"v"), (b"x", None))
    assert got.next_offset == 43


def test_control_batches_and_log_append_time() -> None:
    control = batch([(b"\0\0\0\0", b"", [])], base_offset=5, control=True)
    stamped = batch([(None, b"a", []), (None, b"b", [])], base_offset=6, log_append_time=99)
    first, second = read_batches(control + stamped)
    assert (first.records, first.next_offset) == ((), 6)
    assert [r.timestamp_ms for r in second.records] == [99, 99]


def _claiming_two_records(data: bytes) -> bytes:
    return data[:57] + struct.pack(">i", 2) + data[61:]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (struct.pack(">qiib", 0, 60, 0, 1) + bytes(55), "format v1"),
        (_claiming_two_records(batch([(None, b"x", [])])), "ends inside"),
    ],
    ids=["legacy format", "damaged record"],
)
def test_batches_it_cannot_read_are_refused(data: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        read_batches(data)
