"""Library log lines come out as JSON, and a flood of one message is thinned out."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from processor import logs


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _record(msg: str = "Unable connect to node with id %s", *args: object) -> logging.LogRecord:
    return logging.LogRecord("aiokafka", logging.ERROR, __file__, 1, msg, args or (1,), None)


def test_a_repeated_message_passes_once_per_interval_and_counts_the_rest() -> None:
    clock = Clock()
    gate = logs.RepeatFilter(interval_s=10, clock=clock)
    passed = [gate.filter(_record()) for _ in range(1000)]
    assert passed.count(True) == 1
    clock.now = 10.0
    again = _record()
    assert gate.filter(again)
    assert again.repeated == 999  # type: ignore[attr-defined]
    assert gate.filter(_record("another message")), "other messages are not held back"


def test_library_lines_are_json(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        logs.configure("info")
        logging.getLogger("aiokafka.conn").error("Unable connect to node with id %s", 1)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        structlog.reset_defaults()
    line = capsys.readouterr().err.strip().splitlines()[-1]
    event = json.loads(line)
    assert event["event"] == "Unable connect to node with id 1"
    assert event["level"] == "error"
    assert event["logger"] == "aiokafka.conn"
