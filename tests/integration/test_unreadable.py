"""A record aiokafka cannot decode (a header name that is not UTF-8, as librdkafka producers
can write) on the real broker: dead-lettered from what can be read, nothing else lost."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaProducer

from processor.errors import InvalidInput
from processor.kafka.consumer import kafka_consumer
from processor.runner import Runner
from tests.batches import batch, produce_batch
from tests.integration.harness import committed, with_request_topic
from tests.integration.services import Services
from tests.pipelines import FakePipeline

pytestmark = pytest.mark.integration


async def test_an_unreadable_record_is_dead_lettered_and_no_other_record_is_lost(
    services: Services,
) -> None:
    settings = await with_request_topic(
        services, "unreadable", 2, commit_interval_s=0.1, drain_timeout_s=5
    )
    topic = settings.kafka.request_topic
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await producer.start()
    try:
        for i in range(2):
            await producer.send_and_wait(topic, b"p0-%d" % i, partition=0)
        for i in range(3):
            await producer.send_and_wait(topic, b"p1-%d" % i, partition=1)
        bad = [(b"\xff\xfe", b"v"), (b"ok", None)]
        records = [(b"k2", b"before", []), (b"k3", b"bad", bad), (b"k4", b"after", [])]
        assert await produce_batch(settings.kafka.bootstrap_servers, topic, 0, batch(records)) == 2
        await producer.send_and_wait(topic, b"p0-5", partition=0)
        await producer.send_and_wait(topic, b"p1-3", partition=1)
    finally:
        await producer.stop()

    pipe = FakePipeline()
    runner = Runner(settings, pipe, kafka_consumer(settings, 8), window=8)
    task = asyncio.create_task(runner.run())
    deadline = time.monotonic() + 60
    try:
        while len(pipe.finished) + len(pipe.dead) < 10:
            assert not task.done(), task
            assert time.monotonic() < deadline, (pipe.finished, pipe.dead)
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # a commit tick
    finally:
        runner.stop()
        await asyncio.wait_for(task, 30)

    assert sorted(pipe.finished) == [(0, 0), (0, 1), (0, 2), (0, 4), (0, 5)] + [
        (1, o) for o in range(4)
    ], "every other record handed over exactly once, on both partitions"
    assert [key for key, _ in pipe.dead] == [(0, 3)]
    error = pipe.dead[0][1]
    assert isinstance(error, InvalidInput)
    assert error.error_type == "unreadable_record"
    assert pipe.dead_records[0].key == b"k3"
    assert pipe.dead_records[0].value == b"bad", "the dead letter keeps the original value"

    assert await committed(settings) == {0: 6, 1: 4}
