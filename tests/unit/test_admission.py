"""Per-backend admission: route first, then a slot of that backend's share of the record
window. A backend whose records never finish holds only its share; the others keep going."""

from __future__ import annotations

import asyncio
import json

import pytest

from processor.admission import UNROUTED, Admission, backend_named, shares
from processor.kafka.memory import MemoryConsumer, MemoryLog
from processor.runner import Runner
from tests.pipelines import FakePipeline
from tests.unit.test_runner import make_settings, until

pytestmark = pytest.mark.timeout(60)


def request(backend: str | None, rid: str = "r") -> bytes:
    body: dict[str, str] = {"request_id": rid, "text": "hi"}
    if backend is not None:
        body["backend"] = backend
    return json.dumps(body).encode()


def test_shares_follow_the_call_windows_and_never_go_below_them() -> None:
    assert shares(32, {"a": 8, "b": 8}) == {"a": 16, "b": 16}
    assert shares(32, {"a": 12, "b": 4}) == {"a": 24, "b": 8}
    assert shares(10, {"a": 1, "b": 12}) == {"a": 1, "b": 12}
    assert shares(40, {"only": 8}) == {"only": 40}


def test_route_reads_the_backend_field() -> None:
    assert backend_named(request("a")) == "a"
    assert backend_named(request(None)) == ""
    ce = {"specversion": "1.0", "data": {"request_id": "x", "text": "t", "backend": "b"}}
    assert backend_named(json.dumps(ce).encode()) == "b"
    for bad in (b"", b"not json", b"[1]", b"[" * 100_000, b'{"backend": 3}', None):
        assert backend_named(bad) is None
    log = MemoryLog()
    gate = Admission({"a": 1, "b": 1}, default="a")
    assert gate.route(log.append(0, request(None))) == "a"
    assert gate.route(log.append(0, request("b"))) == "b"
    assert gate.route(log.append(0, request("nope"))) == UNROUTED
    assert gate.route(log.append(0, b"garbage")) == UNROUTED
    assert gate.route(log.append_unreadable(0)) == UNROUTED


def test_slots_are_counted_per_backend() -> None:
    gate = Admission({"a": 2}, default="a")
    gate.take("a")
    assert gate.has_room("a")
    gate.take("a")
    assert not gate.has_room("a")
    assert gate.has_room(UNROUTED), "unrouted records take no share"
    gate.give("a")
    assert gate.has_room("a")


async def test_a_stuck_backend_holds_only_its_share_and_the_other_flows() -> None:
    """Backend a never finishes a record; b's records, behind a's in the same partitions,
    all finish, and a never has more than its share started."""
    log = MemoryLog(partitions=2)
    a_keys: set[tuple[int, int]] = set()
    b_keys: set[tuple[int, int]] = set()
    for i in range(60):
        part, backend = i % 2, ("a" if i % 3 else "b")
        rec = log.append(part, request(backend, f"{backend}{i}"), key=f"{backend}{i}".encode())
        (a_keys if backend == "a" else b_keys).add((rec.partition, rec.offset))
    pipe = FakePipeline()
    for key in a_keys:
        pipe.hold(*key)
    admission = Admission({"a": 4, "b": 4}, default="a")
    runner = Runner(make_settings(), pipe, MemoryConsumer(log), window=8, admission=admission)
    task = asyncio.create_task(runner.run())
    try:
        await until(lambda: b_keys <= set(pipe.finished), "every b record to finish")
        assert len(a_keys & set(pipe.started)) == 4, "a started exactly its share"
        assert admission.taken["a"] == 4
        for key in a_keys:
            pipe.release(*key)
        await until(lambda: a_keys <= set(pipe.finished), "a's records once it recovers")
    finally:
        runner.stop()
        await asyncio.wait_for(task, 10)
    assert admission.taken == {"a": 0, "b": 0, UNROUTED: 0}


async def test_a_later_record_of_the_same_key_waits_for_the_earlier_one() -> None:
    """Same request_id, two backends: the later record does not overtake the earlier one
    that waits for its backend's share."""
    log = MemoryLog()
    first = log.append(0, request("a", "busy"), key=b"busy")
    log.append(0, request("a", "same"), key=b"same")
    later = log.append(0, request("b", "same"), key=b"same")
    pipe = FakePipeline()
    pipe.hold(0, first.offset)
    admission = Admission({"a": 1, "b": 4}, default="a")
    runner = Runner(make_settings(), pipe, MemoryConsumer(log), window=8, admission=admission)
    task = asyncio.create_task(runner.run())
    try:
        await until(lambda: (0, first.offset) in pipe.started, "the first a record")
        await until(
            lambda: any(item.offset == later.offset for _, item, _, _ in runner._held),
            "the later record fetched and held",
        )
        assert (0, later.offset) not in pipe.started, "overtook its key's earlier record"
        pipe.release(0, first.offset)
        await until(lambda: (0, later.offset) in pipe.finished, "the later record")
        assert pipe.finished.index((0, 1)) < pipe.finished.index((0, later.offset))
    finally:
        runner.stop()
        await asyncio.wait_for(task, 10)
