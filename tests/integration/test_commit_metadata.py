"""Commit metadata on the real broker: what one consumer commits with an offset, a new
consumer of the group reads back whole; a runner's successor redoes only what was in flight."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from processor.kafka.consumer import Committed, KafkaConsumer, TopicPartition, kafka_consumer
from processor.offsets import METADATA_LIMIT, CommitMeta, decode_meta, encode_meta
from processor.runner import Runner
from processor.settings import Settings
from tests.integration.harness import produce, until, with_request_topic
from tests.integration.services import Services
from tests.pipelines import FakePipeline

pytestmark = pytest.mark.integration


class _Quiet:
    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        pass


async def _joined(settings: Settings) -> tuple[KafkaConsumer, list[int]]:
    """A consumer of the group holding its partitions, and the offsets it read meanwhile."""
    consumer = kafka_consumer(settings, 8)
    await consumer.start()
    consumer.subscribe([settings.kafka.request_topic], _Quiet())
    deadline, read = time.monotonic() + 30, []
    while not consumer.assignment():
        assert time.monotonic() < deadline, "never assigned"
        got = await consumer.getmany(timeout_ms=200, max_records=1)
        read += [r.offset for records in got.values() for r in records]
    return consumer, read


async def test_metadata_committed_by_one_consumer_is_read_back_by_the_next(
    services: Services,
) -> None:
    settings = await with_request_topic(services, "meta", 1)
    await produce(settings, [(None, b"%d" % i) for i in range(5)])
    tp = TopicPartition(settings.kafka.request_topic, 0)
    # As large as Voxline ever writes: every other offset of a long gap finished.
    meta = CommitMeta(frozenset(range(3, 2000, 2)), dict.fromkeys(range(4, 2000, 2), 1), 2100)
    text = encode_meta(2, meta)
    assert len(text) > METADATA_LIMIT - 200

    first, _ = await _joined(settings)
    try:
        await first.commit({tp: Committed(2, text)})
        assert await first.committed(tp) == Committed(2, text)
    finally:
        await first.stop()

    second, read = await _joined(settings)
    try:
        assert await second.committed(tp) == Committed(2, text)
        if not read:
            got = await second.getmany(timeout_ms=5000)
            read = [r.offset for r in got.get(tp, [])]
    finally:
        await second.stop()
    assert read[:1] == [2], "reading resumes at the commit"


async def _read(settings: Settings, tp: TopicPartition) -> Committed:
    consumer = kafka_consumer(settings, 8)
    await consumer.start()
    try:
        found = await consumer.committed(tp)
    finally:
        await consumer.stop()
    assert found is not None
    return found


async def test_after_a_crash_the_next_runner_redoes_only_what_was_in_flight(
    services: Services,
) -> None:
    settings = await with_request_topic(
        services, "crashmeta", 1, commit_interval_s=0.1, drain_timeout_s=5
    )
    await produce(settings, [(None, b"%d" % i) for i in range(12)])
    tp = TopicPartition(settings.kafka.request_topic, 0)

    first = FakePipeline()
    first.hold(0, 3, 7)  # in flight at the crash; the other ten finish
    runner = Runner(settings, first, kafka_consumer(settings, 16), window=16)
    task = asyncio.create_task(runner.run())
    try:
        await until(lambda: len(first.finished) == 10, "the first runner's work")
        await until(lambda: runner.tracker.commit_points([tp]) == {}, "its last commit to land", 30)
    finally:
        task.cancel()  # as kill -9 would: no drain, no last commit
        with contextlib.suppress(asyncio.CancelledError):
            await task
    landed = await _read(settings, tp)
    assert landed.offset == 3
    assert decode_meta(3, landed.metadata).done == {4, 5, 6, 8, 9, 10, 11}

    second = FakePipeline()
    successor = Runner(settings, second, kafka_consumer(settings, 16), window=16)
    task = asyncio.create_task(successor.run())
    try:
        await until(lambda: len(second.finished) == 2, "the redone records")
        await until(lambda: successor.counts["skipped"] == 7, "the skipped ones")
    finally:
        successor.stop()
        await asyncio.wait_for(task, 30)
    assert sorted(second.started) == [(0, 3), (0, 7)]
    assert (await _read(settings, tp)).offset == 12
