"""Park instead of hold: a record that cannot make progress soon leaves the record window for
the delay topic (default ``{request topic}.retry``, ``tts.requests.retry``), and comes back
through the same runner and pipeline when it is due.

A backend call whose retry decision is a hold (``processor.retry``) raises :class:`Park` once
the record has held for ``park_after_s`` or is told to wait at least that long (a long
``Retry-After``, a quota answer). ``Pipeline`` hands it to :meth:`Parking.park`, which produces
the record, its key, value and headers kept and its timestamp the original one, with the
``park.*`` headers below; its offset then completes and its slot is free. The runner reads the
delay topic with the request topic: a record there waits, without a slot and without holding
back the others, until ``park.due`` (epoch ms), then runs as its original record
(:func:`unwrap`: the original topic, partition, offset and timestamp).

Headers (UTF-8): ``park.due`` (epoch ms), ``park.count`` (parks so far), ``park.attempts``
(backend calls so far, across parks), ``park.first_failed_at`` (RFC 3339), ``park.reason`` (the
error type), ``park.error.message``, ``park.original.topic``, ``park.original.partition``,
``park.original.offset``, ``park.original.timestamp``. Dead letters drop them.

Past ``max_parks`` a record is dead-lettered ``retries_exhausted``; one whose deadline comes
before it would be due, ``expired``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time

import structlog

from processor.errors import Expired, Stage, Transient, VoxlineError
from processor.kafka.headers import Headers, RawHeaders, header_value, without
from processor.kafka.records import Record
from processor.kafka.sink import EventSink, Outbound
from processor.observability import Metrics
from processor.request import Request
from processor.retry import Policy
from processor.steps import Park, Tally, run_step

Logger = structlog.typing.FilteringBoundLogger
PREFIX = "park."
#: Seconds a parked record waits, by the number of parks before (the last repeats).
DELAYS_S = (5.0, 15.0, 30.0, 60.0)


def retry_topic(request_topic: str, configured: str = "") -> str:
    """The delay topic: ``configured``, else the request topic's name plus ``.retry``."""
    return configured or f"{request_topic}.retry"


def delay_s(parks: int) -> float:
    """How long the ``parks + 1``-th park waits."""
    return DELAYS_S[min(parks, len(DELAYS_S) - 1)]


def due_ms(record: Record) -> int | None:
    """When a parked record is due (epoch ms); None for a record that was never parked."""
    text = header_value(record.headers, "park.due")
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def unwrap(record: Record) -> Record:
    """A parked record as the original it stands for (``park.*`` headers kept: they carry the
    attempts); any other record unchanged."""
    h = record.headers
    topic = header_value(h, "park.original.topic")
    if topic is None or record.topic == topic:
        return record
    try:
        partition = int(header_value(h, "park.original.partition") or "")
        offset = int(header_value(h, "park.original.offset") or "")
        stamp = int(header_value(h, "park.original.timestamp") or record.timestamp_ms)
    except ValueError:
        return record
    return dataclasses.replace(
        record, topic=topic, partition=partition, offset=offset, timestamp_ms=stamp
    )


def resumed(headers: RawHeaders) -> Tally:
    """What a record's earlier parks went through: attempts, parks, first failure."""
    tally = Tally()
    try:
        tally.attempts = int(header_value(headers, "park.attempts") or 0)
        tally.parks = int(header_value(headers, "park.count") or 0)
        first = header_value(headers, "park.first_failed_at")
        tally.first_failed_at = None if first is None else dt.datetime.fromisoformat(first)
    except ValueError:
        pass
    return tally


class Parking:
    def __init__(
        self, sink: EventSink, topic: str, policy: Policy, metrics: Metrics, max_parks: int = 20
    ) -> None:
        self.sink = sink
        self.topic = topic
        self.policy = policy
        self.metrics = metrics
        self.max_parks = max_parks

    async def park(
        self, record: Record, request: Request, tally: Tally, park: Park, rlog: Logger
    ) -> VoxlineError | None:
        """Produce ``record`` to the delay topic (acknowledged; None), or the error to
        dead-letter it with when its park budget is spent or its deadline comes first."""
        error = park.error
        wait = delay_s(tally.parks)
        due = time.time() + wait
        if tally.parks >= self.max_parks:
            return Transient(
                f"gave up after {tally.parks} parks: {error.message}",
                stage=error.stage,
                http_status=error.http_status,
                error_type=error.error_type,
            )
        if request.deadline is not None and request.deadline.timestamp() <= due:
            return Expired(
                f"deadline {request.deadline.isoformat()} comes before the next try "
                f"({error.message})",
                stage=Stage.SYNTHESIZE,
                error_type="deadline_passed",
            )
        first = tally.failed()
        headers: Headers = without(record.headers, (PREFIX,))
        added = {
            "park.due": str(round(due * 1000)),
            "park.count": str(tally.parks + 1),
            "park.attempts": str(tally.attempts),
            "park.first_failed_at": first.isoformat(),
            "park.reason": error.error_type,
            "park.error.message": error.message[:1000],
            "park.original.topic": record.topic,
            "park.original.partition": str(record.partition),
            "park.original.offset": str(record.offset),
            "park.original.timestamp": str(record.timestamp_ms),
        }
        headers += [(k, v.encode()) for k, v in added.items()]
        out = Outbound(self.topic, record.key, record.value, headers, record.timestamp_ms)
        partition, offset = await run_step(lambda: self.sink.send(out), self.policy)
        self.metrics.parked(error.error_type)
        rlog.warning(
            "parked",
            reason=error.error_type,
            parks=tally.parks + 1,
            attempt=tally.attempts,
            due_in_s=wait,
            retry_partition=partition,
            retry_offset=offset,
        )
        return None
