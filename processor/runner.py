"""The consumer loop: a bounded window of records in flight, commits that never pass an
unfinished record, pause/resume for backpressure, drain on revocation and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from processor.kafka.options import connection_options
from processor.kafka.records import Record, to_record
from processor.observability import Health, Metrics
from processor.offsets import OffsetTracker
from processor.pipeline import Pipeline
from processor.settings import Settings

log = structlog.get_logger("voxline.runner")


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.runner.release(list(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        log.info("partitions assigned", partitions=sorted(str(tp) for tp in assigned))


class Runner:
    """Owns the consumer. ``run`` returns after a clean drain once ``stop`` is called."""

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        *,
        window: int,
        metrics: Metrics | None = None,
        health: Health | None = None,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.metrics = metrics or Metrics()
        self.health = health or Health(time.monotonic())
        #: Records held at once (backend calls are bounded per backend by their gates).
        self.window = window
        self.tracker: OffsetTracker = OffsetTracker()
        self.tasks: dict[asyncio.Task[None], tuple[TopicPartition, int]] = {}
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self.counts = {"succeeded": 0, "failed": 0}
        k = settings.kafka
        self.consumer = AIOKafkaConsumer(
            **connection_options(k),
            group_instance_id=k.group_instance_id,
            group_id=k.group_id,
            client_id=k.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=max(1, self.window),
            # Prefetch per partition: the default 1 MiB times many partitions is most of the
            # processor's memory while it drains a backlog; 256 KiB costs no throughput.
            max_partition_fetch_bytes=256 * 1024,
            # The drain on revocation must end before the group gives up on us.
            rebalance_timeout_ms=int((settings.drain_timeout_s + 30) * 1000),
            max_poll_interval_ms=int((settings.drain_timeout_s + 60) * 1000),
            session_timeout_ms=10_000,
            heartbeat_interval_ms=3_000,
        )

    def stop(self) -> None:
        """Ask the loop to stop fetching, drain and exit (signal-handler safe)."""
        self.health.set_draining()
        self._stopping.set()

    @property
    def in_flight(self) -> int:
        return len(self.tasks)

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        await self.consumer.start()
        try:
            self.consumer.subscribe([self.settings.kafka.request_topic], listener=_Listener(self))
            if ready is not None:
                ready.set()
            await self._loop()
            await self._drain(list(self.tasks))
            await self._commit()
        finally:
            await self._cancel(list(self.tasks))
            with contextlib.suppress(Exception):
                await self.consumer.stop()
            log.info("consumer stopped", **self.counts)

    async def _loop(self) -> None:
        last_commit = time.monotonic()
        while not self._stopping.is_set():
            now = time.monotonic()
            self.health.tick(now)
            self.health.assigned(len(self.consumer.assignment()), now)
            self.metrics.records_in_flight(len(self.tasks))
            self._slot_freed.clear()
            free = self.window - len(self.tasks)
            self._pause(everything=free <= 0)
            if free <= 0:
                # Keep polling so the group sees us alive; paused partitions return nothing.
                await self.consumer.getmany(timeout_ms=0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slot_freed.wait(), timeout=0.2)
            else:
                batch = await self.consumer.getmany(timeout_ms=200, max_records=free)
                for tp, messages in batch.items():
                    for msg in messages:
                        self._dispatch(tp, to_record(msg))
            if time.monotonic() - last_commit >= self.settings.commit_interval_s:
                await self._commit()
                last_commit = time.monotonic()
        self._pause(everything=True)

    def _pause(self, *, everything: bool) -> None:
        """Pause all partitions when the window is full, else those whose uncommitted gap
        reached the cap (it bounds what a crash makes us redo); resume the rest."""
        assigned = self.consumer.assignment()
        cap = self.settings.max_uncommitted
        wanted = (
            set(assigned)
            if everything
            else {tp for tp in assigned if self.tracker.pending_gap(tp) >= cap}
        )
        paused = self.consumer.paused()
        if wanted - paused:
            self.consumer.pause(*(wanted - paused))
        if (paused & assigned) - wanted:
            self.consumer.resume(*((paused & assigned) - wanted))

    def _dispatch(self, tp: TopicPartition, record: Record) -> None:
        self.metrics.record_in(tp.topic)
        self.tracker.start(tp, record.offset)
        task = asyncio.create_task(self._process(tp, record), name=f"{tp}@{record.offset}")
        self.tasks[task] = (tp, record.offset)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.pop(task, None)
        self._slot_freed.set()

    async def _process(self, tp: TopicPartition, record: Record) -> None:
        try:
            outcome = await self.pipeline.handle(record)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Not finished, so its offset is never committed: a restart redoes it.
            log.exception(
                "record left unfinished",
                topic=tp.topic,
                partition=tp.partition,
                offset=record.offset,
            )
            return
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        self.tracker.finish(tp, record.offset)

    async def _commit(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        assigned = self.consumer.assignment()
        wanted = assigned if partitions is None else [tp for tp in partitions if tp in assigned]
        offsets = self.tracker.commit_offsets(wanted)
        if not offsets:
            return
        try:
            await self.consumer.commit(dict(offsets))
        except KafkaError as exc:
            log.warning("commit failed; will retry", error=str(exc), error_type=type(exc).__name__)
            return
        self.tracker.mark_committed(offsets)
        for key, offset in offsets.items():
            tp: TopicPartition = key  # the tracker's keys are the TopicPartitions we gave it
            high = self.consumer.highwater(tp)
            if high is not None:
                self.metrics.lag(tp.topic, tp.partition, max(0, high - offset))
        log.debug("committed", offsets={str(tp): off for tp, off in offsets.items()})

    async def _drain(self, tasks: list[asyncio.Task[None]]) -> None:
        if not tasks:
            return
        log.info(
            "draining in-flight records", count=len(tasks), timeout_s=self.settings.drain_timeout_s
        )
        _, pending = await asyncio.wait(tasks, timeout=self.settings.drain_timeout_s)
        if pending:
            log.warning(
                "drain deadline passed; abandoning records for redelivery", count=len(pending)
            )

    async def _cancel(self, tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def release(self, revoked: list[TopicPartition]) -> None:
        """Partitions are being taken away: finish what we can, commit it, drop the rest so
        the new owner redoes it."""
        gone = set(revoked)
        mine = [t for t, (tp, _) in self.tasks.items() if tp in gone]
        await self._drain(mine)
        await self._commit(revoked)
        await self._cancel([t for t in mine if not t.done()])
        for tp in revoked:
            self.tracker.drop(tp)
            self.metrics.forget_partition(tp.topic, tp.partition)
        log.info("partitions revoked", partitions=sorted(str(tp) for tp in revoked))
