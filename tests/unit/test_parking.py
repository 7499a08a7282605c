"""Park instead of hold: a record that would hold past ``park_after_s`` goes to the delay
topic with its headers, comes back as its original record, counts its attempts across parks,
and ends ``retries_exhausted`` past the park budget or ``expired`` at its deadline. The runner
lets a parked record wait without a slot and without holding back the others."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time

import pytest

from processor.breaker import Breaker, BreakerConfig
from processor.errors import Stage, Systemic, Transient
from processor.gate import Gate
from processor.kafka.memory import MemoryConsumer, MemoryLog
from processor.kafka.records import Record
from processor.limiter import StaticLimit
from processor.ops.reconcile.accounting import Outcome, RequestSeen, account
from processor.parking import delay_s, due_ms, resumed, retry_topic, unwrap
from processor.retry import Policy
from processor.runner import Runner
from processor.settings import Settings
from processor.steps import Park, run_step
from tests.pipelines import FakePipeline
from tests.unit.test_pipeline import KAFKA, POLICY, World, record
from tests.unit.test_runner import make_settings, until

pytestmark = pytest.mark.timeout(60)
S = Stage.SYNTHESIZE
PARKING = dataclasses.replace(POLICY, hold_s=(0.01, 0.01), park_after_s=0.05)
DOWN = Systemic("connection refused", stage=S, error_type="connect")


def test_names_and_delays() -> None:
    assert retry_topic("tts.requests") == "tts.requests.retry"
    assert retry_topic("tts.requests", "custom") == "custom"
    assert [delay_s(n) for n in range(6)] == [5.0, 15.0, 30.0, 60.0, 60.0, 60.0]


async def test_a_hold_parks_once_it_has_lasted_park_after_s() -> None:
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise DOWN

    with pytest.raises(Park) as parked:
        await run_step(down, PARKING)
    assert parked.value.error is DOWN
    assert calls == 5, "held 0.01 s at a time until 0.05 s, then parked"
    with pytest.raises(Park):  # told to wait longer than park_after_s: parked at once
        await run_step(_raises(Transient("429", stage=S, retry_after=3600.0)), PARKING)
    assert PARKING.park_after_s is not None


def _raises(error: Exception):  # type: ignore[no-untyped-def]
    async def op() -> None:
        raise error

    return op


async def test_a_parked_record_goes_to_the_delay_topic_whole() -> None:
    world = World([DOWN] * 100, policy=PARKING)
    original = record(7, headers=[("trace-me", b"x"), ("park.count", b"1")])
    before = time.time() * 1000
    assert await world.pipeline.handle(original) == "parked"
    after = time.time() * 1000
    (parked,) = world.sink.on("tts.requests.retry")
    assert (parked.key, parked.value) == (original.key, original.value)
    assert parked.timestamp_ms == original.timestamp_ms
    assert parked.header("trace-me") == "x"
    assert parked.header("park.count") == "2", "counts on from the earlier park"
    assert parked.header("park.original.topic") == "requests"
    assert parked.header("park.original.offset") == "7"
    assert parked.header("park.reason") == "connect"
    assert int(parked.header("park.attempts") or 0) >= 1
    due = int(parked.header("park.due") or 0)
    assert before + 15_000 <= due <= after + 15_001, "the 2nd park waits 15 s (ms, rounded)"
    assert world.events() == []
    assert world.dead_letters() == []


async def test_a_released_record_runs_as_its_original_and_counts_earlier_attempts() -> None:
    world = World([], policy=PARKING)
    original = record(7)
    first = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    headers = [
        ("park.due", b"0"),
        ("park.count", b"2"),
        ("park.attempts", b"6"),
        ("park.first_failed_at", first.isoformat().encode()),
        ("park.original.topic", b"requests"),
        ("park.original.partition", b"0"),
        ("park.original.offset", b"7"),
        ("park.original.timestamp", str(original.timestamp_ms).encode()),
    ]
    fetched = Record("requests.retry", 3, 41, original.key, original.value, 5, headers)
    back = unwrap(fetched)
    assert (back.topic, back.partition, back.offset) == ("requests", 0, 7)
    assert back.timestamp_ms == original.timestamp_ms
    tally = resumed(back.headers)
    assert (tally.attempts, tally.parks, tally.first_failed_at) == (6, 2, first)
    assert await world.pipeline.handle(back) == "succeeded"
    assert world.events()[0]["attempts"] == 7, "6 before the parks, 1 now"


async def test_the_park_budget_ends_in_retries_exhausted_and_the_deadline_in_expired() -> None:
    world = World([DOWN] * 100, policy=PARKING)
    spent = record(1, headers=[("park.count", b"20"), ("park.original.topic", b"requests")])
    assert await world.pipeline.handle(spent) == "failed"
    (letter,) = world.dead_letters()
    assert letter.header("dlq.reason") == "retries_exhausted"
    assert letter.header("park.count") is None, "a dead letter drops the park headers"
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)).isoformat()
    assert await world.pipeline.handle(record(2, deadline=soon)) == "failed"
    assert world.dead_letters()[1].header("dlq.reason") == "expired"


async def test_a_parked_record_not_yet_due_waits_without_holding_back_the_others() -> None:
    """On the delay topic: a record due in a minute, then records due now; the later ones
    run, the first waits (registered, so no commit passes it), then runs when due."""
    log = MemoryLog()
    late = log.append(0, b"{}", key=b"late", headers=[("park.due", _ms(60))])
    for i in range(5):
        log.append(0, b"{}", key=f"now{i}".encode(), headers=[("park.due", _ms(-1))])
    pipe = FakePipeline()
    settings = make_settings()
    runner = Runner(settings, pipe, MemoryConsumer(log), window=4)
    task = asyncio.create_task(runner.run())
    try:
        await until(lambda: len(pipe.finished) == 5, "the records already due")
        assert (0, late.offset) not in pipe.started
        assert log.committed.get(log.tp(0)) is None or log.committed[log.tp(0)].offset == 0
        (entry,) = runner._held
        runner._held[0] = (entry[0], _due_now(late), entry[2], entry[3])
        await until(lambda: (0, late.offset) in pipe.finished, "the late one, once due")
        await until(lambda: log.committed[log.tp(0)].offset == 6, "the commit past all")
    finally:
        runner.stop()
        await asyncio.wait_for(task, 10)


def _ms(seconds: float) -> bytes:
    return str(round((time.time() + seconds) * 1000)).encode()


def _due_now(parked: Record) -> Record:
    return dataclasses.replace(parked, headers=[("park.due", _ms(-1))])


def test_due_reads_the_header() -> None:
    log = MemoryLog()
    assert due_ms(log.append(0)) is None
    assert due_ms(log.append(0, headers=[("park.due", b"123")])) == 123
    assert due_ms(log.append(0, headers=[("park.due", b"soon")])) is None


def test_settings_default_to_parking_after_ten_seconds() -> None:
    settings = Settings(kafka=KAFKA)
    assert settings.park_after_s == 10.0
    assert settings.max_parks == 20
    assert Policy().park_after_s is None, "a bare policy never parks (stores, publishes)"


def test_reconcile_counts_a_parked_record_as_pending_not_lost() -> None:
    seen = [RequestSeen(rid, "requests", 0, i) for i, rid in enumerate(("waiting", "gone"))]
    report = account(seen, [], [], [], bucket="b", parked=["waiting"])
    assert (report.parked, report.parked_ids) == (1, ("waiting",))
    assert (report.lost, report.lost_ids) == (1, ("gone",))
    done = [Outcome("waiting", "failed", reason="expired")]
    report = account(seen[:1], done, [], [], bucket="b", parked=["waiting"])
    assert report.parked == 0, "parked once, then ended: accounted as its outcome"
    assert report.failed == 1


async def test_a_call_the_breaker_keeps_away_parks_its_record() -> None:
    breaker = Breaker(BreakerConfig(open_for_s=60.0, max_open_for_s=60.0))
    gate = Gate("b", StaticLimit(4), breaker)
    gate.park_after_s = 0.1
    breaker.trip(time.monotonic(), "crash")
    with pytest.raises(Park) as parked:
        async with gate.call(work=1):
            pytest.fail("the breaker is open: no call goes through")
    assert parked.value.error.error_type == "breaker_open"
    assert gate.in_flight == 0
