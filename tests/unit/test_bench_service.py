"""The pure parts of the bench's service scenario and of its comparison with the best peer."""

from __future__ import annotations

import pytest

from bench.report import Row, against_best
from bench.service_scenario import added_latency, busy_share, sentences, tag


def test_tags_are_letters_and_unique() -> None:
    tags = [tag(i) for i in range(2000)]
    assert len(set(tags)) == 2000
    assert all(t.isalpha() for t in tags)


def test_each_sentence_starts_with_its_tag() -> None:
    (key, value), *_ = sentences("run", 27, 1)
    assert key == b"run-00027"
    assert b'"text": "' + tag(27).encode() + b" " in value


def test_busy_share_clips_calls_to_the_span() -> None:
    calls = [("a", 0.0, 2.0), ("b", 1.0, 3.0), ("c", 2.5, 4.5)]
    # In [1, 3] with 2 slots: a serves 1 s, b 2 s, c 0.5 s of 4 slot-seconds.
    assert busy_share(calls, 1.0, 3.0, 2) == pytest.approx(3.5 / 4)
    assert busy_share(calls, 5.0, 6.0, 2) == 0.0
    assert busy_share(calls, 3.0, 3.0, 2) == 0.0


def test_added_latency_is_end_to_end_minus_the_service_time() -> None:
    sent = {"r1": 10.0, "r2": 11.0, "lost": 12.0}
    done = {"r1": 12.05, "r2": 13.5}
    calls = {"r1": (10.01, 12.0), "r2": (11.3, 13.4)}
    found = added_latency(sent, done, calls)
    assert [rid for *_, rid in found] == ["r1", "r2"]  # fastest first; "lost" has no times
    added, before, after, _ = found[0]
    assert before == pytest.approx(0.01)
    assert after == pytest.approx(0.05)
    assert added == pytest.approx(0.06)
    assert found[1][0] == pytest.approx(0.4)


def test_against_best_takes_the_best_peer_for_each_figure() -> None:
    rows = [
        Row(
            "overhead",
            "CPU seconds per 1,000 records",
            {"voxline": 2.0, "gather": 3.0, "faststream": 4.0},
            "lower",
        ),
        Row(
            "backlog",
            "drain rate, records/s",
            {"voxline": 90.0, "gather": 100.0, "faststream": 80.0},
        ),
    ]
    lines = against_best(rows)
    assert "| 0.67 | ≤ 0.7 | met |" in lines[2]  # against gather's 3.0, not FastStream's 4.0
    assert "| 0.90 | ≥ 1 | missed |" in lines[3]
    assert against_best([Row("backlog", "drain rate", {"voxline": 1.0})]) == []
