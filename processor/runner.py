"""The consumer loop: a bounded window of records in flight, commits that never pass an
unfinished record, pause/resume for backpressure, drain on revocation and shutdown.

Commits carry metadata (``processor.offsets``): the next owner of a partition skips what was
already finished, and a record that keeps dying with the process is run alone, then given up
on (dead-lettered). Every call to the broker is bounded in time, so an outage can neither
wedge the loop nor keep a shutdown from ending within the drain timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import structlog

from processor.admission import UNROUTED, Admission, is_due, key_of, lane_of
from processor.inflight import Handler, InFlight
from processor.kafka.consumer import (
    Committed,
    Consumer,
    ConsumerError,
    Fetched,
    TopicPartition,
    Unreadable,
)
from processor.lanes import Lanes
from processor.observability import Health, Metrics
from processor.offsets import OffsetTracker, Verdict
from processor.parking import retry_topic
from processor.settings import Settings

log = structlog.get_logger("voxline.runner")

#: Offsets a write-ahead commit claims past the last record about to start, so that the next
#: few records start without another commit. Kept small: a crash costs a life to every
#: unfinished offset below the claim, started or not, and a wide claim let a run of kills
#: dead-letter records that never ran (a window of 32 did, in the fault suite's kill -9 storms).
RESERVE_AHEAD = 4

_T = TypeVar("_T")
#: A record fetched and not started: its partition, the record, the backend (share) it waits
#: for, and its verdict once registered in the tracker (None before).
Held = tuple[TopicPartition, Fetched, str, Verdict | None]
#: The longest one commit (or metadata read, or close) may take.
COMMIT_TIMEOUT_S = 5.0
#: Commits go out at least this often while work finishes (in the background): what a
#: crash redoes beyond the records in flight is what finished since the last one landed.
COMMIT_EVERY_S = 0.1


class Runner:
    """Owns the consumer. ``run`` returns after a clean drain once ``stop`` is called."""

    def __init__(
        self,
        settings: Settings,
        pipeline: Handler,
        consumer: Consumer,
        *,
        window: int,
        metrics: Metrics | None = None,
        health: Health | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.consumer = consumer
        self.metrics = metrics or Metrics()
        self.health = health or Health(time.monotonic())
        #: Records held at once (backend calls are bounded per backend by their gates).
        self.window = window
        self.tracker = OffsetTracker()
        self.work = InFlight(pipeline, self.tracker, self.metrics)
        #: Each backend's share of the window (none by default: one shared window).
        self.admission = admission or Admission({}, "")
        self.lanes = Lanes(settings.backends.lanes, settings.kafka.request_topic)
        self.work.priority = lambda record: self.lanes.priority(record.topic)
        self.admission.lanes = self.lanes if self.lanes.ranked else None
        #: Seconds one broker call may hold the loop.
        self.bound = min(
            COMMIT_TIMEOUT_S, 4 * settings.commit_interval_s, settings.drain_timeout_s / 4
        )
        #: Fetched, not started yet (with the backend each will call): behind a record that
        #: must run alone, not inherited, or its backend's share is full.
        self._held: deque[Held] = deque()
        self._revoking: set[TopicPartition] = set()
        self._stopping = asyncio.Event()
        self._stop_at = 0.0
        #: One commit at a time, its points computed under the lock: they land in order.
        self._commit_lock = asyncio.Lock()
        self._committer: asyncio.Task[bool] | None = None
        #: Told this member's share of the group's partitions after each assignment.
        self.on_share: Callable[[float], None] = lambda share: None

    def stop(self) -> None:
        """Ask the loop to stop fetching, drain and exit (signal-handler safe)."""
        self.health.set_draining()
        if not self._stopping.is_set():
            self._stop_at = time.monotonic()
        self._stopping.set()

    @property
    def in_flight(self) -> int:
        return len(self.work)

    @property
    def counts(self) -> dict[str, int]:
        """Outcomes so far: succeeded, failed, skipped (finished before, not redone)."""
        return self.work.counts

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        await self.consumer.start()
        try:
            k = self.settings.kafka
            topics = [*self.lanes.topics, retry_topic(k.request_topic, k.retry_topic)]
            self.consumer.subscribe(topics, self)
            if ready is not None:
                ready.set()
            await self._loop()
            await self._shutdown()
        finally:
            await self.work.cancel(
                [*self.work.tasks, *([self._committer] if self._committer else [])]
            )
            try:
                await asyncio.wait_for(self.consumer.stop(), self.bound)
            except Exception as exc:
                log.warning("consumer did not close cleanly", error=repr(exc))
            log.info("consumer stopped", **self.counts)

    async def _loop(self) -> None:
        last_commit = time.monotonic()
        every = min(COMMIT_EVERY_S, self.settings.commit_interval_s)
        failures = 0
        while not self._stopping.is_set():
            now = time.monotonic()
            self.health.tick(now)
            self.health.assigned(len(self.consumer.assignment()), now)
            self.metrics.records_in_flight(len(self.work))
            self.work.freed.clear()
            free = self.window - len(self.work) - self._startable()
            self._pause(everything=free <= 0)
            try:
                # Full: keep polling so the group sees us alive; paused partitions return nothing.
                # Higher lanes are read while full: their records go first when a slot frees.
                batch = await self.consumer.getmany(
                    timeout_ms=200 if free > 0 else 0,
                    max_records=max(1, free, self.window // 2 if self.lanes.ranked else 1),
                )
                failures = 0
            except ConsumerError as exc:
                failures += 1
                self._failed("poll", exc)
                await self._sleep(min(5.0, 0.1 * 2**failures))
                continue
            for tp, items in batch.items():
                self._held.extend((tp, it, self.admission.route(it), None) for it in items)
            started = await self._admit()
            if not started and (self._held or len(self.work) >= self.window):
                await self._sleep(0.2, self.work.freed)
            if time.monotonic() - last_commit >= every:
                if self._committer is None or self._committer.done():
                    self._committer = asyncio.create_task(self._commit(), name="commit")
                last_commit = time.monotonic()
        self._pause(everything=True)

    async def _sleep(self, seconds: float, until: asyncio.Event | None = None) -> None:
        """Wait ``seconds``, less if ``until`` (default: stop) is set."""
        event = until or self._stopping
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=seconds)

    def _startable(self) -> int:
        """Held records due whose backend has room in its share (the others wait)."""
        now_ms, room = time.time() * 1000, self.admission.has_room
        return sum(1 for _, item, b, _ in self._held if room(b) and is_due(item, now_ms))

    def _pause(self, *, everything: bool) -> None:
        """Pause all partitions when the window is full, else those whose uncommitted gap
        (records held for a busy backend included) reached the cap: it bounds what a crash
        makes us redo, and it is the only pause one backend's trouble causes the partitions
        that feed the others. Resume the rest."""
        assigned = self.consumer.assignment()
        cap = self.settings.max_uncommitted
        held = Counter(tp for tp, _, _, verdict in self._held if verdict is None)
        wanted = {tp for tp in assigned if self.tracker.pending_gap(tp) + held[tp] >= cap}
        if everything and not self.lanes.ranked:
            wanted = set(assigned)
        elif everything:  # every lane keeps a few records at hand (a lower lane's minimum)
            queued = Counter(tp for tp, *_ in self._held)
            wanted |= {tp for tp in assigned if queued[tp] >= max(1, self.window // 4)}
        paused = self.consumer.paused()
        if wanted - paused:
            self.consumer.pause(*(wanted - paused))
        if (paused & assigned) - wanted:
            self.consumer.resume(*((paused & assigned) - wanted))

    # -- admission: what to do with each record read ---------------------------------------

    async def _admit(self) -> int:
        """Start held records in order, each once its backend has room in its share (a record
        waits behind an earlier one of its key): skip those finished before, run alone one
        that was in flight when processes died, give up on one that died with them too often.
        Every record passed is registered in the tracker in offset order, started or left
        waiting, so no commit passes one that waits. Returns how many records moved on."""
        if self.lanes.ranked:  # higher lanes first; a partition's records keep their order
            self._held = deque(sorted(self._held, key=lambda e: -lane_of(self.lanes, e[1])))
            self.admission.count_waiting((e[2], e[1]) for e in self._held)
        assigned = self.consumer.assignment() - self._revoking
        if any(not self.tracker.is_inherited(tp) for tp in assigned):
            await self._inherit(assigned)
        ready: list[tuple[TopicPartition, Fetched, Verdict, str]] = []
        kept: deque[Held] = deque()
        waiting: set[tuple[TopicPartition, bytes | None]] = set()
        work, tracker, admission, skipped = self.work, self.tracker, self.admission, 0
        now_ms = time.time() * 1000
        while self._held and work.solo is None and len(work) + len(ready) < self.window:
            entry = self._held.popleft()
            tp, item, backend, verdict = entry
            if tp not in assigned:  # revoked: the new owner reads it
                continue
            if not tracker.is_inherited(tp):
                kept.append(entry)
                continue
            if verdict is None:
                verdict = tracker.verdict(tp, item.offset)
                if isinstance(item, Unreadable) and verdict is not Verdict.SKIP:
                    verdict = Verdict.RUN  # dead-lettered either way
                if verdict is Verdict.SKIP:
                    work.skip(tp, item)
                    skipped += 1
                    continue
            if verdict is Verdict.SOLO and (work.tasks or ready):
                kept.append(entry)
                break
            if entry[3] is None:
                tracker.start(tp, item.offset)
            key = (tp, key_of(item))
            share = backend if verdict is not Verdict.GIVE_UP else UNROUTED
            if key in waiting or not admission.has_room(share, item) or not is_due(item, now_ms):
                kept.append((tp, item, backend, verdict))
                waiting.add(key)
                continue
            ready.append((tp, item, verdict, share))
            admission.take(share, admission.prio(item))
            if verdict is Verdict.SOLO:
                break
        kept.extend(self._held)
        self._held = kept
        if not ready:
            return skipped
        if await self._write_ahead([(tp, item, verdict) for tp, item, verdict, _ in ready]):
            for tp, item, verdict, share in ready:
                task = work.start(tp, item, verdict, registered=True)
                task.add_done_callback(admission.giver(share, admission.prio(item)))
            return skipped + len(ready)
        for tp, item, verdict, share in reversed(ready):
            admission.give(share, admission.prio(item))
            self._held.appendleft((tp, item, share, verdict))
        return skipped

    async def _inherit(self, assigned: set[TopicPartition]) -> None:
        """Read what the broker holds for newly assigned partitions, metadata included."""
        todo = sorted(tp for tp in assigned if not self.tracker.is_inherited(tp))
        reads = asyncio.gather(*(self.consumer.committed(tp) for tp in todo))
        ok, found = await self._bounded("committed", reads)
        if not ok or found is None:
            return  # their records wait; tried again on the next pass
        for tp, committed in zip(todo, found, strict=True):
            if tp not in self.consumer.assignment():
                continue
            offset = None if committed is None else committed.offset
            try:
                meta = self.tracker.inherit(
                    tp, offset, "" if committed is None else committed.metadata
                )
            except ValueError as exc:
                log.warning("unreadable commit metadata ignored", partition=str(tp), error=str(exc))
                meta = self.tracker.inherit(tp, offset, "")
            if meta.done or meta.lives or meta.frontier:
                log.info(
                    "inherited commit metadata",
                    partition=str(tp),
                    offset=offset,
                    done=len(meta.done),
                    lives=sum(meta.lives.values()),
                    clean=meta.clean,
                    truncated=meta.truncated,
                )

    async def _write_ahead(self, ready: list[tuple[TopicPartition, Fetched, Verdict]]) -> bool:
        """Before records run, commit a frontier past them, so that if the process dies
        they lose a life. A record run alone needs it landed; others go ahead regardless."""
        tp, item, verdict = ready[-1]
        if verdict is Verdict.SOLO:
            log.warning(
                "running alone a record the process died with before",
                partition=str(tp),
                offset=item.offset,
                lives=self.tracker.lives(tp, item.offset),
            )
            self.tracker.pin_frontiers(tp, item.offset)
            return await self._commit_now()
        spans: dict[TopicPartition, tuple[int, int]] = {}
        for tp, item, v in ready:
            if v is not Verdict.SKIP:
                spans[tp] = (spans.get(tp, (item.offset, 0))[0], item.offset)
        reserve = {tp: s for tp, s in spans.items() if self.tracker.needs_frontier(tp, s[1])}
        for tp, (first, last) in reserve.items():
            self.tracker.reserve(tp, first, last + 1 + RESERVE_AHEAD)
        if reserve:
            await self._commit_now()
        return True

    # -- commits, drains, revocation ---------------------------------------------------------

    async def _commit(
        self, partitions: Iterable[TopicPartition] | None = None, *, clean: bool = False
    ) -> bool:
        """Commit what moved; ``False`` if the broker did not take it in time (retried on the
        next tick; nothing is lost: uncommitted work is redone)."""
        async with self._commit_lock:
            assigned = self.consumer.assignment()
            wanted = assigned if partitions is None else [t for t in partitions if t in assigned]
            points = self.tracker.commit_points(wanted, clean=clean)
            if not points:
                return True
            offsets = {tp: Committed(p.offset, p.metadata) for tp, p in points.items()}
            ok, _ = await self._bounded("commit", self.consumer.commit(offsets))
            if not ok:
                return False
            self.tracker.mark_sent(points)
        for tp, point in points.items():
            high = self.consumer.highwater(tp)
            if high is not None:
                self.metrics.lag(tp.topic, tp.partition, max(0, high - point.offset))
        log.debug("committed", offsets={str(tp): p.offset for tp, p in points.items()})
        return True

    async def _commit_now(self) -> bool:
        """A commit work waits for: within ``bound``, waiting for the lock included."""
        try:
            return await asyncio.wait_for(self._commit(), self.bound)
        except TimeoutError as exc:
            self._failed("commit", exc)
            return False

    async def _bounded(self, call: str, work: Awaitable[_T]) -> tuple[bool, _T | None]:
        """``work`` within ``bound`` seconds; a timeout or ``ConsumerError`` is logged."""
        try:
            return True, await asyncio.wait_for(work, self.bound)
        except (TimeoutError, ConsumerError) as exc:
            self._failed(call, exc)
            return False, None

    def _failed(self, call: str, exc: Exception) -> None:
        kind = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
        self.metrics.consumer_error(call, kind)
        log.warning(f"{call} failed; will retry", error=str(exc) or kind, timeout_s=self.bound)

    async def _shutdown(self) -> None:
        """Drain, commit and leave within the drain timeout from ``stop``."""
        self._held.clear()
        end = self._stop_at + self.settings.drain_timeout_s - 2 * self.bound
        await self.work.drain(list(self.work.tasks), max(0.0, end - time.monotonic()))
        if self._committer is not None:
            await self.work.cancel([self._committer])  # the last commit says it all
        await self._commit(clean=True)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        share = self.consumer.group_share()
        log.info("partitions assigned", partitions=sorted(map(str, assigned)), group_share=share)
        self.on_share(share)

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.release(revoked)

    async def release(self, revoked: list[TopicPartition]) -> None:
        """Partitions are being taken away: finish what we can, commit it, drop the rest so
        the new owner redoes it."""
        gone = set(revoked)
        self._revoking |= gone
        try:
            self._held = deque(x for x in self._held if x[0] not in gone)
            mine = self.work.of(gone)
            await self.work.drain(mine, self.settings.drain_timeout_s)
            await self._commit(revoked, clean=True)
            await self.work.cancel([t for t in mine if not t.done()])
            for tp in revoked:
                self.tracker.drop(tp)
                self.metrics.forget_partition(tp.topic, tp.partition)
        finally:
            self._revoking -= gone
        log.info("partitions revoked", partitions=sorted(str(tp) for tp in revoked))
