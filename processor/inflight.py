"""The records being worked on: one task each, its outcome counted and finished in the
offset tracker. The runner decides what to start; this module runs it.

A record ends as the pipeline's outcome, as a dead letter the runner asks for (a record the
Kafka client could not read, one the process died with too often), or unfinished, which
leaves its offset uncommitted so the next owner redoes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from processor.errors import InternalError, InvalidInput, Stage, VoxlineError
from processor.kafka.consumer import Fetched, TopicPartition, Unreadable
from processor.kafka.records import Record
from processor.lanes import PRIORITY
from processor.observability import Metrics
from processor.offsets import OffsetTracker, Verdict
from processor.parking import unwrap

log = structlog.get_logger("voxline.runner")


class Handler(Protocol):
    """What the runner needs from the pipeline (``processor.pipeline.Pipeline``)."""

    async def handle(self, record: Record) -> str: ...

    async def dead_letter(self, record: Record, error: VoxlineError) -> str: ...


class InFlight:
    """Tasks for admitted records, and the outcome counts."""

    def __init__(self, pipeline: Handler, tracker: OffsetTracker, metrics: Metrics) -> None:
        self.pipeline = pipeline
        self.tracker = tracker
        self.metrics = metrics
        self.tasks: dict[asyncio.Task[None], TopicPartition] = {}
        self.counts = {"succeeded": 0, "failed": 0, "skipped": 0}
        #: The record running alone, if any: nothing else starts meanwhile.
        self.solo: asyncio.Task[None] | None = None
        #: Set whenever a task ends.
        self.freed = asyncio.Event()
        #: A record's lane priority (``processor.lanes``), set for its task.
        self.priority: Callable[[Record], int] = lambda _: 0

    def __len__(self) -> int:
        return len(self.tasks)

    def of(self, partitions: set[TopicPartition]) -> list[asyncio.Task[None]]:
        return [t for t, tp in self.tasks.items() if tp in partitions]

    def skip(self, tp: TopicPartition, item: Fetched) -> None:
        """``item`` was finished by an earlier owner: count it, do not redo it."""
        self.metrics.record_in(tp.topic)
        self.tracker.start(tp, item.offset)
        self.tracker.finish(tp, item.offset)
        self.counts["skipped"] += 1
        self.metrics.skipped(tp.topic)
        log.debug("skipped, already done", partition=str(tp), offset=item.offset)

    def start(
        self, tp: TopicPartition, item: Fetched, verdict: Verdict, *, registered: bool = False
    ) -> asyncio.Task[None]:
        """Run ``item``; ``registered``: the runner already started it in the tracker."""
        self.metrics.record_in(tp.topic)
        if not registered:
            self.tracker.start(tp, item.offset)
        if isinstance(item, Unreadable):
            work = self._unreadable(tp, item)
        elif verdict is Verdict.GIVE_UP:
            work = self._give_up(tp, item)
        else:
            work = self._process(tp, item)
        task = asyncio.create_task(work, name=f"{tp.topic}-{tp.partition}@{item.offset}")
        self.tasks[task] = tp
        if verdict is Verdict.SOLO:
            self.solo = task
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.pop(task, None)
        if task is self.solo:
            self.solo = None
        self.freed.set()

    async def _process(self, tp: TopicPartition, fetched: Record) -> None:
        record = unwrap(fetched)  # a parked record runs as the original it stands for
        if record is not fetched:
            self.metrics.released(fetched.topic)
        PRIORITY.set(self.priority(record))  # its calls wait their lane's turn at the gate
        try:
            outcome: str | None = await self.pipeline.handle(record)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the pipeline promises not to; never stall the partition
            log.exception("pipeline raised", partition=str(tp), offset=record.offset)
            message = f"{type(exc).__name__}: {exc}"[:1000]
            error = InternalError(message, stage=Stage.DECODE, error_type="handle_raised")
            outcome = await self._dead_letter(record, error)
        self._finished(tp, fetched.offset, outcome)

    async def _give_up(self, tp: TopicPartition, record: Record) -> None:
        lives = self.tracker.lives(tp, record.offset)
        log.error("giving up on a record the process died with", offset=record.offset, lives=lives)
        self.metrics.given_up(tp.topic)
        error = InternalError(
            f"the processor died {lives} times while this record was in flight",
            stage=Stage.DECODE,
            error_type="crash_loop",
        )
        self._finished(tp, record.offset, await self._dead_letter(unwrap(record), error))

    async def _unreadable(self, tp: TopicPartition, item: Unreadable) -> None:
        log.error("unreadable record", partition=str(tp), offset=item.offset, error=item.error)
        self.metrics.unreadable(tp.topic)
        error = InvalidInput(
            f"the Kafka client could not read this record: {item.error}",
            stage=Stage.DECODE,
            error_type="unreadable_record",
        )
        self._finished(tp, item.offset, await self._dead_letter(item.record, error))

    async def _dead_letter(self, record: Record, error: VoxlineError) -> str | None:
        try:
            return await self.pipeline.dead_letter(record, error)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Left unfinished, so its offset is never committed: the next owner redoes it.
            log.exception("dead letter failed; record left unfinished", offset=record.offset)
            return None

    def _finished(self, tp: TopicPartition, offset: int, outcome: str | None) -> None:
        if outcome is not None:
            self.counts[outcome] = self.counts.get(outcome, 0) + 1
            self.tracker.finish(tp, offset)

    async def drain(self, tasks: list[asyncio.Task[None]], timeout: float) -> None:
        """Wait up to ``timeout`` seconds for ``tasks``; the rest are abandoned (the caller
        cancels them) and redone by the next owner."""
        if not tasks:
            return
        log.info("draining in-flight records", count=len(tasks), timeout_s=round(timeout, 1))
        pending = [t for t in tasks if not t.done()]
        if timeout > 0:
            _, still = await asyncio.wait(tasks, timeout=timeout)
            pending = list(still)
        if pending:
            log.warning(
                "drain deadline passed; abandoning records for redelivery", count=len(pending)
            )

    @staticmethod
    async def cancel(tasks: list[asyncio.Task[Any]]) -> None:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
