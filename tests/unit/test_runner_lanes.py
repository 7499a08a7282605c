"""Priority lanes in the consumer loop (processor.runner with processor.admission): while a
backlog holds every slot of a backend's share, urgent records that arrive take the slots as
they free, ahead of the backlog, and the backlog keeps its minimum share. On the in-memory
consumer, with a pipeline that holds each record until the test releases it."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Callable

import pytest

from processor.admission import Admission
from processor.config import single_backend
from processor.errors import VoxlineError
from processor.kafka.consumer import TopicPartition
from processor.kafka.memory import MemoryConsumer, MemoryLog
from processor.kafka.records import Record
from processor.lanes import Lane
from processor.runner import Runner
from processor.settings import KafkaSettings, Settings
from tests.unit.test_runner import until

pytestmark = pytest.mark.timeout(30)

LOW, URGENT = "tts.requests", "tts.requests.urgent"
#: The backend's share of records; the backlog keeps a quarter of it (one slot).
SHARE, LOW_SHARE = 4, 0.25
BODY = b'{"request_id": "r", "text": "hello"}'


class Held:
    """Each record runs until released; ``running`` by topic, ``started`` in order."""

    def __init__(self) -> None:
        self.started: list[tuple[str, int]] = []
        self.running: set[tuple[str, int]] = set()
        self.most_low_running = 0
        self._gates: dict[tuple[str, int], asyncio.Event] = {}

    async def handle(self, record: Record) -> str:
        key = (record.topic, record.offset)
        self.started.append(key)
        self.running.add(key)
        gate = self._gates.setdefault(key, asyncio.Event())
        try:
            await gate.wait()
        finally:
            self.running.discard(key)
        return "succeeded"

    async def dead_letter(self, record: Record, error: VoxlineError) -> str:
        raise AssertionError(f"{record.topic}/{record.offset} dead-lettered: {error}")

    def release(self, key: tuple[str, int]) -> None:
        self._gates.setdefault(key, asyncio.Event()).set()

    def topics(self) -> list[str]:
        return [topic for topic, _ in self.started]

    def low_running(self) -> int:
        return sum(topic == LOW for topic, _ in self.running)


def started(pipeline: Held, n: int) -> Callable[[], bool]:
    return lambda: len(pipeline.started) >= n


def urgent_waiting(runner: Runner) -> int:
    return runner.admission.waiting.get("espeak", Counter())[10]


def append(log: MemoryLog, topic: str, n: int) -> None:
    """``n`` records on ``topic`` (a second topic in the same in-memory log)."""
    tp = TopicPartition(topic, 0)
    records = log.records.setdefault(tp, [])
    for _ in range(n):
        records.append(Record(topic, 0, len(records), None, BODY, 1_700_000_000_000))
    log.appended.set()


async def test_urgent_records_take_freed_slots_first_and_the_backlog_keeps_its_share() -> None:
    lanes = (Lane(URGENT, 10, 0.0), Lane(LOW, 0, LOW_SHARE))
    backends = dataclasses.replace(single_backend(), lanes=lanes)
    settings = Settings(
        kafka=KafkaSettings(request_topic=LOW), backends=backends, commit_interval_s=0.02
    )
    log = MemoryLog(LOW)
    append(log, LOW, 12)
    log.records[TopicPartition(URGENT, 0)] = []  # assigned from the start, empty
    pipeline = Held()
    admission = Admission({"espeak": SHARE}, "espeak")
    runner = Runner(settings, pipeline, MemoryConsumer(log), window=16, admission=admission)
    task = asyncio.create_task(runner.run())
    try:
        # The backlog alone: it takes the whole share.
        await until(lambda: len(pipeline.started) == SHARE, "the backlog filling the share")
        await asyncio.sleep(0.05)  # one more pass of the loop: nothing else may start
        assert pipeline.topics() == [LOW] * SHARE
        append(log, URGENT, 6)
        await until(lambda: urgent_waiting(runner) > 0, "the urgent records read")
        # Each freed slot goes to an urgent record, but the one the backlog keeps.
        for n, key in enumerate(list(pipeline.running)):
            pipeline.release(key)
            await until(started(pipeline, SHARE + n + 1), "a slot refilled")
        assert pipeline.topics()[SHARE:] == [URGENT, URGENT, URGENT, LOW]
        # Urgent records take the other slots while any wait; the backlog keeps its one.
        while pipeline.topics().count(URGENT) < 6:
            assert pipeline.low_running() == 1
            key = next(k for k in pipeline.running if k[0] == URGENT)
            count = len(pipeline.started)
            pipeline.release(key)
            await until(started(pipeline, count + 1), "the next record started")
        assert pipeline.low_running() == 1
        first_low_after = pipeline.topics().index(LOW, SHARE)
        assert pipeline.topics()[SHARE:first_low_after] == [URGENT] * 3
    finally:
        for key in [*pipeline.running]:
            pipeline.release(key)
        runner.stop()
        for topic, offset in [(LOW, o) for o in range(12)] + [(URGENT, o) for o in range(6)]:
            pipeline.release((topic, offset))
        await asyncio.wait_for(task, 10)
