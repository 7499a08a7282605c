"""The crash accounting of the fault suite (tests/faults/kills.py), on made-up runs: no
services needed."""

from __future__ import annotations

import pytest

from processor.commit_meta import CommitMeta, encode_meta
from processor.kafka.consumer import Committed
from tests.faults.kills import (
    Acked,
    Crash,
    PartitionCommit,
    acknowledged,
    charge_duplicates,
    cost,
    costs,
    event_stamps,
)

#: Requests r0..r9 at offsets 0..9 of partition 0.
WHERE = {f"r{i}": (0, i) for i in range(10)}


def committed(offset: int, done: set[int] | None = None) -> Committed:
    return Committed(offset, encode_meta(offset, CommitMeta(frozenset(done or ()))))


def test_a_commit_covers_below_its_offset_and_what_its_metadata_says_is_done() -> None:
    part = PartitionCommit.of(committed(4, {6, 7}))
    assert [o for o in range(10) if part.covers(o)] == [0, 1, 2, 3, 6, 7]
    assert [o for o in range(10) if part.below(o)] == [0, 1, 2, 3]
    assert not PartitionCommit.of(None).covers(0)
    assert PartitionCommit.of(Committed(3, "not ours")).done == frozenset()


def test_each_extra_event_is_charged_to_the_death_of_the_process_that_sent_the_one_before() -> None:
    stamps = {"a": [10, 25], "b": [12, 40, 55], "c": [30], "d": [60, 70]}
    per_death, uncharged = charge_duplicates(stamps, [20, 50])
    assert per_death == [["a", "b"], ["b"]]
    assert uncharged == ["d"]
    with pytest.raises(ValueError, match="in order"):
        charge_duplicates(stamps, [50, 20])


def test_the_allowed_duplicates_are_the_published_records_the_commit_does_not_cover() -> None:
    # The process acknowledged r0..r5 in this order, and had sent r6's event when it died; the
    # last commit landed after r3: offset 2 (r2 was still running then), r3 done above it.
    acked = [Acked(0, o, 1000 + o) for o in (0, 1, 3, 2, 4, 5)]
    crash = Crash(1, 2000, 1500, 8, {0: PartitionCommit.of(committed(2, {3}))}, acked)
    stamps = {f"r{i}": [1000 + i] for i in range(7)}
    stamps.update(r2=[1002, 3000], r4=[1004, 3001], r5=[1005, 3002], r6=[1006, 3003])
    (figures,), uncharged = costs([crash], 0, stamps, WHERE)
    assert uncharged == []
    assert figures.unacknowledged == 1  # r6
    assert figures.finished_after_commit == 3  # r2, r4, r5
    assert figures.finished_after_commit_ms == 2000 - 1002
    assert (figures.allowed, figures.duplicates) == (4, 4)
    assert figures.without_metadata == 5  # r3 too, had the commit said only "2"
    assert (figures.unexplained, figures.out_of_order, figures.truncated) == ((), (), ())
    assert figures.to_json()["in_flight"] == 8


def test_redoing_a_covered_record_is_unexplained() -> None:
    crash = Crash(1, 2000, 1500, None, {0: PartitionCommit.of(committed(2))}, [Acked(0, 0, 1000)])
    figures = cost(crash, 0, {"r0": [1000, 3000]}, WHERE, ["r0"])
    assert figures.unexplained == ("r0",)
    assert figures.allowed == 0


def test_a_commit_that_is_not_a_snapshot_is_out_of_order() -> None:
    # r1 acknowledged after r0, yet the commit covers r1 (done) and not r0.
    acked = [Acked(0, 0, 1000), Acked(0, 1, 1001)]
    crash = Crash(1, 2000, 1500, None, {0: PartitionCommit(0, frozenset({1}))}, acked)
    figures = cost(crash, 0, {"r0": [1000], "r1": [1001]}, WHERE, [])
    assert figures.out_of_order == (0,)
    assert (
        cost(
            Crash(
                1, 2000, 1500, None, {0: PartitionCommit(0, frozenset({1}), truncated=True)}, acked
            ),
            0,
            {},
            WHERE,
            [],
        ).out_of_order
        == ()
    )


def test_acknowledged_outcomes_are_read_from_the_log_lines_in_order() -> None:
    lines = [
        {
            "event": "succeeded",
            "topic": "t",
            "partition": 1,
            "offset": 5,
            "timestamp": "2026-01-01T00:00:01.5Z",
        },
        {"event": "backend call failed", "topic": "t", "partition": 1, "offset": 6},
        {
            "event": "dead-lettered",
            "topic": "t",
            "partition": 0,
            "offset": 2,
            "timestamp": "2026-01-01T00:00:02Z",
        },
        {
            "event": "succeeded",
            "topic": "other",
            "partition": 0,
            "offset": 3,
            "timestamp": "2026-01-01T00:00:03Z",
        },
    ]
    got = acknowledged(lines, "t")
    assert [(a.partition, a.offset) for a in got] == [(1, 5), (0, 2)]
    assert got[1].at_ms - got[0].at_ms == 500
    assert event_stamps([("a", 2), ("b", 1), ("a", 1)]) == {"a": [2, 1], "b": [1]}
