"""Kafka record batches (format v2) written by hand, for tests: unlike every Python client,
this writer takes header names as bytes, so it can write the records librdkafka producers
can write and aiokafka cannot read (a header name that is not UTF-8)."""

from __future__ import annotations

import asyncio
import gzip
import struct
from collections.abc import Sequence
from typing import Any

from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import for_code
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.util import calc_crc32c

Header = tuple[bytes, bytes | None]
RawRecord = tuple[bytes | None, bytes | None, Sequence[Header]]


def _varint(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        byte = z & 0x7F
        z >>= 7
        if z:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _blob(data: bytes | None) -> bytes:
    return _varint(-1) if data is None else _varint(len(data)) + data


def batch(
    records: Sequence[RawRecord],
    *,
    base_offset: int = 0,
    timestamp_ms: int = 1_700_000_000_000,
    gzipped: bool = False,
    control: bool = False,
    log_append_time: int | None = None,
) -> bytes:
    """One batch; record i gets offset ``base_offset + i`` and ``timestamp_ms + i``."""
    body = bytearray()
    for i, (key, value, headers) in enumerate(records):
        rec = b"\0" + _varint(i) + _varint(i) + _blob(key) + _blob(value)
        rec += _varint(len(headers)) + b"".join(_blob(k) + _blob(v) for k, v in headers)
        body += _varint(len(rec)) + rec
    attrs = (1 if gzipped else 0) | (0x20 if control else 0) | (0x08 if log_append_time else 0)
    payload = gzip.compress(bytes(body)) if gzipped else bytes(body)
    last = len(records) - 1
    max_ts = log_append_time or timestamp_ms + last
    after_crc = struct.pack(
        ">hiqqqhii", attrs, last, timestamp_ms, max_ts, -1, -1, -1, len(records)
    )
    after_crc += payload
    head = struct.pack(">ibI", 0, 2, calc_crc32c(after_crc))
    return struct.pack(">qi", base_offset, len(head) + len(after_crc)) + head + after_crc


async def produce_batch(bootstrap_servers: str, topic: str, partition: int, data: bytes) -> int:
    """Write ``data`` (one batch) to the partition's leader as it is; returns its base offset.
    A raw ProduceRequest: the producer API re-encodes header names, this does not."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers)
    await client.bootstrap()
    try:
        tp = TopicPartition(topic, partition)
        for _ in range(50):
            await client.force_metadata_update()
            leader = client.cluster.leader_for_partition(tp)
            if leader is not None and leader >= 0:
                break
            await asyncio.sleep(0.2)
        request = ProduceRequest(None, -1, 30_000, [(topic, [(partition, data)])])
        response: Any = await client.send(leader, request)
        ((_, parts),) = response.topics
        _, error_code, offset, *_ = parts[0]
        if error_code:
            raise for_code(error_code)()
        return int(offset)
    finally:
        await client.close()
