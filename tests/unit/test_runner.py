"""The consumer loop on the in-memory consumer: commits under out-of-order completion,
backpressure, revocation, drain, crash recovery from commit metadata, bounded commits and
records the client cannot read. No Kafka, no S3: a scripted pipeline stands in."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import pytest

from processor.errors import InternalError, InvalidInput, Reason
from processor.kafka.consumer import ConsumerError
from processor.kafka.memory import MemoryConsumer, MemoryLog
from processor.observability import Metrics
from processor.offsets import decode_meta
from processor.runner import Runner
from processor.settings import KafkaSettings, Settings
from tests.pipelines import FakePipeline

pytestmark = pytest.mark.timeout(60)


def make_settings(**overrides: float) -> Settings:
    base: dict[str, float] = {"commit_interval_s": 0.02, "drain_timeout_s": 1.0}
    return Settings(kafka=KafkaSettings(request_topic="requests"), **{**base, **overrides})  # type: ignore[arg-type]


async def until(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def running(
    log: MemoryLog,
    pipeline: FakePipeline,
    *,
    window: int = 8,
    settings: Settings | None = None,
    consumer: MemoryConsumer | None = None,
    metrics: Metrics | None = None,
) -> AsyncIterator[tuple[Runner, MemoryConsumer]]:
    """A runner over ``log``; stopped cleanly at the end unless the test crashed it."""
    consumer = consumer or MemoryConsumer(log)
    runner = Runner(settings or make_settings(), pipeline, consumer, window=window, metrics=metrics)
    task = asyncio.create_task(runner.run())
    try:
        yield runner, consumer
    finally:
        if not task.done():
            runner.stop()
            await asyncio.wait_for(task, 10)


async def crashing(
    log: MemoryLog, pipeline: FakePipeline, reached: Callable[[], bool], window: int = 8
) -> None:
    """One life that dies abruptly (as kill -9 would: no drain, no last commit) once
    ``reached``; what the broker holds is the last commit that landed before."""
    runner = Runner(make_settings(), pipeline, MemoryConsumer(log), window=window)
    task = asyncio.create_task(runner.run())
    try:
        await until(reached, "the point of the crash")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def committed(log: MemoryLog, partition: int = 0) -> tuple[int | None, str]:
    found = log.committed.get(log.tp(partition))
    return (None, "") if found is None else (found.offset, found.metadata)


def fill(log: MemoryLog, partition: int, n: int) -> None:
    for _ in range(n):
        log.append(partition)


def counter(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


# -- commits under out-of-order completion --------------------------------------------------


async def test_commits_never_pass_an_unfinished_record() -> None:
    log = MemoryLog()
    fill(log, 0, 6)
    pipe = FakePipeline()
    pipe.hold(0, 1, 3)
    async with running(log, pipe):
        await until(lambda: {(0, 0), (0, 2), (0, 4), (0, 5)} <= set(pipe.finished), "finishes")
        await until(lambda: decode_meta(1, committed(log)[1]).done == {2, 4, 5}, "done in meta")
        assert committed(log)[0] == 1
        pipe.release(0, 3)
        await until(lambda: 3 in decode_meta(1, committed(log)[1]).done, "3 done in metadata")
        assert committed(log)[0] == 1, "3 finished, but 1 is still in flight"
        pipe.release(0, 1)
        await until(lambda: committed(log)[0] == 6, "the commit to pass everything")
    # No commit ever passed offset 1 before it finished.
    first_past = next(i for i, c in enumerate(log.commits) if c[log.tp(0)].offset > 1)
    assert all(c[log.tp(0)].offset <= 1 for c in log.commits[:first_past])
    assert pipe.finished.index((0, 1)) >= 0
    assert first_past > 0


# -- backpressure ---------------------------------------------------------------------------


async def test_a_full_window_pauses_every_partition_and_polling_goes_on() -> None:
    log = MemoryLog(partitions=2)
    fill(log, 0, 5)
    fill(log, 1, 5)
    pipe = FakePipeline()
    for p in (0, 1):
        pipe.hold(p, *range(5))
    async with running(log, pipe, window=3) as (runner, consumer):
        await until(lambda: len(pipe.started) == 3, "the window to fill")
        await until(lambda: consumer.paused() == {log.tp(0), log.tp(1)}, "both paused")
        polls = consumer.polls
        await asyncio.sleep(0.3)
        assert consumer.polls > polls, "the loop must keep polling while full"
        assert len(pipe.started) == 3
        assert runner.in_flight == 3
        first = pipe.started[0]
        pipe.release(*first)
        await until(lambda: len(pipe.started) == 4, "a freed slot to be refilled")
        for key in list(pipe.gates):
            pipe.release(*key)
        await until(lambda: len(pipe.finished) == 10, "everything")


async def test_the_uncommitted_cap_pauses_that_partition_only() -> None:
    log = MemoryLog(partitions=2)
    fill(log, 0, 6)
    pipe = FakePipeline()
    pipe.hold(0, 0)
    settings = make_settings(max_uncommitted=3)
    async with running(log, pipe, window=20, settings=settings) as (_, consumer):
        await until(lambda: log.tp(0) in consumer.paused(), "partition 0 paused")
        assert log.tp(1) not in consumer.paused()
        fill(log, 1, 4)
        await until(lambda: sum(1 for p, _ in pipe.finished if p == 1) == 4, "partition 1 moves")
        log.append(0)  # offset 6: not read while partition 0 is paused
        await asyncio.sleep(0.2)
        assert (0, 6) not in pipe.started
        assert log.tp(0) in consumer.paused()
        pipe.release(0, 0)
        await until(lambda: (0, 6) in pipe.finished, "partition 0 resumed")
        await until(lambda: committed(log, 0)[0] == 7, "partition 0 committed")


# -- revocation and shutdown -----------------------------------------------------------------


async def test_revocation_drains_commits_the_revoked_partitions_and_drops_the_rest() -> None:
    log = MemoryLog(partitions=2)
    fill(log, 0, 3)
    fill(log, 1, 2)
    pipe = FakePipeline()
    pipe.hold(0, 0, 1)  # 0 finishes during the drain, 1 never does
    async with running(log, pipe) as (runner, consumer):
        await until(lambda: len(pipe.started) == 5, "everything started")
        await until(lambda: committed(log, 1)[0] == 2, "partition 1 committed")

        async def release_zero_soon() -> None:
            await asyncio.sleep(0.1)
            pipe.release(0, 0)

        helper = asyncio.create_task(release_zero_soon())
        started = time.monotonic()
        await consumer.assign([1])  # partition 0 goes to another member
        took = time.monotonic() - started
        await helper
        assert (0, 0) in pipe.finished, "the drain let the revoked partition's work finish"
        assert (0, 1) in pipe.cancelled, "what did not finish in time is dropped"
        assert 0.9 <= took < 3, took  # waited for the drain deadline (1 s) for offset 1
        offset, meta = committed(log, 0)
        assert offset == 1, "committed up to the unfinished record, not past it"
        assert decode_meta(1, meta).done == {2}
        assert decode_meta(1, meta).clean, "a drain is not a crash: no life lost"
        assert runner.tracker.partitions() == [log.tp(1)] or log.tp(0) not in (
            runner.tracker.partitions()
        )


async def test_stop_drains_in_flight_work_and_commits_it() -> None:
    log = MemoryLog()
    fill(log, 0, 4)
    pipe = FakePipeline()
    pipe.hold(0, 0, 2)
    async with running(log, pipe) as (runner, consumer):
        await until(lambda: len(pipe.started) == 4, "everything started")

        async def release_soon() -> None:
            await asyncio.sleep(0.2)
            pipe.release(0, 0, 2)

        helper = asyncio.create_task(release_soon())
        runner.stop()
        await until(lambda: consumer.stopped, "the runner to end")
        await helper
    assert sorted(pipe.finished) == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert committed(log)[0] == 4
    assert runner.counts["succeeded"] == 4


async def test_the_drain_deadline_abandons_stuck_records_without_committing_them() -> None:
    log = MemoryLog()
    fill(log, 0, 4)
    pipe = FakePipeline()
    pipe.hold(0, 1)  # never released
    async with running(log, pipe) as (runner, consumer):
        await until(lambda: len(pipe.finished) == 3, "the others")
        started = time.monotonic()
        runner.stop()
        await until(lambda: consumer.stopped, "the runner to end", timeout=5)
        took = time.monotonic() - started
    assert took <= 1.0 + 0.3, took  # within the drain timeout
    assert (0, 1) in pipe.cancelled
    offset, meta = committed(log)
    assert offset == 1
    assert decode_meta(1, meta).done == {2, 3}
    assert decode_meta(1, meta).clean


# -- a crash redoes only what was in flight (commit metadata) -------------------------------


async def test_after_a_crash_only_records_in_flight_are_redone() -> None:
    log = MemoryLog()
    fill(log, 0, 8)
    first = FakePipeline()
    first.hold(0, 2, 5)
    finished_rest = {(0, o) for o in (0, 1, 3, 4, 6, 7)}

    def rest_done_and_committed() -> bool:
        offset, meta = committed(log)
        return (
            finished_rest <= set(first.finished)
            and offset == 2
            and len(decode_meta(2, meta).done) == 4
        )

    await crashing(log, first, rest_done_and_committed)
    metrics = Metrics()
    second = FakePipeline()
    async with running(log, second, metrics=metrics) as (runner, _):
        await until(lambda: committed(log)[0] == 8, "the second life to finish")
    assert sorted(second.started) == [(0, 2), (0, 5)], "only what was in flight is redone"
    assert runner.counts["skipped"] == 4
    assert counter(metrics, "voxline_records_skipped_total", topic="requests") == 4


async def test_a_record_that_keeps_killing_the_process_is_given_up_after_five_lives() -> None:
    log = MemoryLog()
    fill(log, 0, 4)  # 1: slow in the first three lives (innocent); 2: kills every process
    lives: list[FakePipeline] = []
    for life in range(5):
        pipe = FakePipeline()
        pipe.hold(0, 2)
        if life < 3:
            pipe.hold(0, 1)
        lives.append(pipe)
        await crashing(log, pipe, lambda pipe=pipe: (0, 2) in pipe.started)  # type: ignore[misc]
    last = FakePipeline()
    metrics = Metrics()
    async with running(log, last, metrics=metrics):
        await until(lambda: committed(log)[0] == 4, "the sixth life to finish")
    assert all((0, 2) in pipe.started for pipe in lives)
    assert (0, 2) not in last.started, "given up on, not run a sixth time"
    assert [key for key, _ in last.dead] == [(0, 2)]
    error = last.dead[0][1]
    assert isinstance(error, InternalError)
    assert error.reason is Reason.INTERNAL_ERROR
    assert error.error_type == "crash_loop"
    # From its fourth life on the suspect ran alone, so the innocent slow record that shared
    # its first three crashes was not blamed: it finished when run alone, never dead-lettered.
    assert all(lives[i].alongside[(0, 2)] == set() for i in (3, 4))
    assert lives[2].alongside[(0, 2)] != set(), "not alone before"
    assert (0, 1) in lives[3].finished
    assert lives[3].alongside[(0, 1)] == set()
    assert counter(metrics, "voxline_records_given_up_total", topic="requests") == 1


async def test_a_clean_stop_costs_no_life() -> None:
    log = MemoryLog()
    fill(log, 0, 2)
    for _ in range(6):
        pipe = FakePipeline()
        pipe.hold(0, 0)
        async with running(log, pipe, settings=make_settings(drain_timeout_s=0.3)):
            await until(lambda pipe=pipe: (0, 0) in pipe.started, "the slow record started")  # type: ignore[misc]
    assert committed(log)[0] == 0
    assert decode_meta(0, committed(log)[1]).lives == {}
    last = FakePipeline()
    async with running(log, last):
        await until(lambda: committed(log)[0] == 2, "the end")
    assert last.dead == []
    assert (0, 0) in last.finished


# -- the broker can hang; the loop must not ---------------------------------------------------


async def test_a_hanging_commit_does_not_block_the_loop() -> None:
    log = MemoryLog()
    fill(log, 0, 2)
    pipe = FakePipeline()
    metrics = Metrics()
    async with running(log, pipe, metrics=metrics) as (_runner, consumer):
        await until(lambda: committed(log)[0] == 2, "a first commit")
        consumer.hang("commit")
        fill(log, 0, 30)  # past the frontier: write-ahead commits hang too, and time out
        await until(lambda: len(pipe.finished) == 32, "work goes on while commits hang")
        labels = {"call": "commit", "error_type": "timeout"}
        await until(
            lambda: counter(metrics, "voxline_consumer_errors_total", **labels) >= 3,
            "commits to time out and be retried tick after tick",
        )
        assert committed(log)[0] == 2, "nothing lands while the broker is away"
        consumer.release()
        await until(lambda: committed(log)[0] == 32, "the retried commit")


async def test_stop_during_a_broker_outage_ends_within_the_drain_timeout() -> None:
    log = MemoryLog()
    fill(log, 0, 3)
    pipe = FakePipeline()
    pipe.hold(0, 2)
    async with running(log, pipe) as (runner, consumer):
        await until(lambda: committed(log)[0] == 2, "what could be committed, committed")
        consumer.hang("commit", "committed", "stop")
        started = time.monotonic()
        runner.stop()
        await until(lambda: (0, 2) in pipe.cancelled, "the runner to give up", timeout=5)
        await until(lambda: not runner.work.tasks, "the runner to end", timeout=5)
    took = time.monotonic() - started
    assert took <= 1.0 + 0.3, took
    assert committed(log)[0] == 2
    assert not consumer.stopped, "stop hung and was abandoned"


# -- records the client cannot read; polls that fail ----------------------------------------


async def test_an_unreadable_record_is_dead_lettered_and_the_partition_moves_on() -> None:
    log = MemoryLog(partitions=2)
    log.append(0)
    log.append_unreadable(0, "header name is not UTF-8: b'\\xff'")
    log.append(0)
    fill(log, 1, 2)
    pipe = FakePipeline()
    metrics = Metrics()
    async with running(log, pipe, metrics=metrics):
        await until(lambda: committed(log, 0)[0] == 3, "partition 0 past the bad record")
        await until(lambda: committed(log, 1)[0] == 2, "partition 1")
    assert [key for key, _ in pipe.dead] == [(0, 1)]
    error = pipe.dead[0][1]
    assert isinstance(error, InvalidInput)
    assert error.error_type == "unreadable_record"
    assert (0, 1) not in pipe.started
    assert counter(metrics, "voxline_records_unreadable_total", topic="requests") == 1


async def test_a_failing_poll_is_retried() -> None:
    log = MemoryLog()
    fill(log, 0, 2)
    pipe = FakePipeline()
    consumer = MemoryConsumer(log)
    consumer.fail_getmany(ConsumerError("broker went away"))
    consumer.fail_getmany(ConsumerError("still away"))
    async with running(log, pipe, consumer=consumer):
        await until(lambda: committed(log)[0] == 2, "work after the failed polls")
    assert len(pipe.finished) == 2


async def test_a_pipeline_that_raises_still_gives_the_record_an_outcome() -> None:
    log = MemoryLog()
    fill(log, 0, 2)
    pipe = FakePipeline()
    pipe.raises.add((0, 0))
    async with running(log, pipe):
        await until(lambda: committed(log)[0] == 2, "past the record")
    assert [key for key, _ in pipe.dead] == [(0, 0)]
    assert pipe.dead[0][1].error_type == "handle_raised"
