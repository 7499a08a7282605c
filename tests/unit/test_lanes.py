"""Priority lanes: higher lanes take a backend's slots first, a lower lane keeps its minimum
share while it has calls waiting, and the config file declares them."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path

import pytest

from processor.admission import Admission
from processor.config import ConfigError, parse
from processor.gate import Gate
from processor.kafka.memory import MemoryLog
from processor.lanes import PRIORITY, Lane, Lanes, may_start
from processor.limiter import StaticLimit

pytestmark = pytest.mark.timeout(30)

BACKENDS = {"tts": {"kind": "openai", "url": "http://x"}}


def test_a_higher_lane_waiting_goes_first() -> None:
    waiting = {0: 3, 10: 1}
    assert may_start(10, {0: 2}, waiting, 4, {})
    assert not may_start(0, {0: 2}, waiting, 4, {}), "the urgent call is waiting"
    assert may_start(0, {0: 2}, {0: 3}, 4, {}), "none waiting above: first come"
    assert not may_start(10, {0: 4}, waiting, 4, {}), "no free slot"


def test_a_lower_lane_keeps_its_minimum_share() -> None:
    shares = {0: 0.25}  # 1 of 4 slots
    assert may_start(0, {10: 3}, {0: 1, 10: 5}, 4, shares), "below its minimum: it goes"
    assert not may_start(10, {10: 3}, {0: 1, 10: 5}, 4, shares), "the last slot is kept"
    assert may_start(10, {10: 3}, {10: 5}, 4, shares), "nothing waiting below: not kept"
    assert not may_start(0, {0: 1, 10: 2}, {0: 1, 10: 5}, 4, shares), "minimum met"


def test_lanes_by_topic() -> None:
    lanes = Lanes([Lane("urgent", 10)], "tts.requests")
    assert lanes.topics == ["urgent", "tts.requests"]
    assert (lanes.priority("urgent"), lanes.priority("tts.requests"), lanes.lowest) == (10, 0, 0)
    assert lanes.ranked
    assert not Lanes([], "tts.requests").ranked


def test_the_config_file_declares_lanes() -> None:
    data = {
        "backends": BACKENDS,
        "lanes": [
            {"topic": "urgent", "priority": 10},
            {"topic": "tts.requests", "priority": 0, "share": 0.25},
        ],
    }
    conf = parse(data, {})
    assert conf.lanes == (Lane("urgent", 10, 0.0), Lane("tts.requests", 0, 0.25))
    for bad, says in (
        ({"priority": 1}, "topic is required"),
        ({"topic": "t", "share": 1.0}, "below 1"),
        ({"topic": "t", "speed": 1}, "unknown key"),
    ):
        with pytest.raises(ConfigError, match=says):
            parse({"backends": BACKENDS, "lanes": [bad]}, {})


async def test_the_gate_lets_the_urgent_call_in_before_the_backlog() -> None:
    gate = Gate("b", StaticLimit(1))
    gate.shares = {0: 0.0, 10: 0.0}
    order: list[str] = []
    release = asyncio.Event()

    async def call(name: str, priority: int, hold: bool = False) -> None:
        PRIORITY.set(priority)
        async with gate.call(work=1):
            order.append(name)
            if hold:
                await release.wait()

    first = asyncio.create_task(call("first", 0, hold=True))
    await asyncio.sleep(0)
    backlog = [asyncio.create_task(call(f"low{i}", 0)) for i in range(3)]
    await asyncio.sleep(0)
    urgent = asyncio.create_task(call("urgent", 10))
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(first, urgent, *backlog)
    assert order[:2] == ["first", "urgent"], order


def test_the_readme_scheduling_configuration_parses() -> None:
    """The copy-paste configuration of the README's Scheduling section is valid as it is."""
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Scheduling", 1)[1].split("\n## ", 1)[0]
    block = section.split("```toml\n", 1)[1].split("```", 1)[0]
    conf = parse(tomllib.loads(block), {"HOSTED_TTS_KEY": "secret"})
    assert [lane.priority for lane in conf.lanes] == [10, 0]
    assert conf.backends["hosted"].rate.requests_per_s == 5
    assert conf.backends["hosted"].rate.chars_burst == 5000


def test_a_backend_share_of_the_record_window_keeps_the_low_lane_minimum() -> None:
    log_low, log_high = MemoryLog("low"), MemoryLog("high")
    low = [log_low.append(0) for _ in range(5)]
    high = [log_high.append(0) for _ in range(5)]
    admission = Admission({"b": 4}, "b")
    admission.lanes = Lanes([Lane("high", 10), Lane("low", 0, 0.25)], "low")
    admission.count_waiting([("b", item) for item in [*high, *low]])
    started = []
    for item in [*high, *low]:  # the runner's order: higher lanes first
        if admission.has_room("b", item):
            admission.take("b", admission.prio(item))
            started.append(item.topic)
    assert started == ["high", "high", "high", "low"], "a quarter of 4 kept for the backlog"
    admission.give("b", 10)
    admission.count_waiting([("b", item) for item in [*high[3:], *low[1:]]])
    assert admission.has_room("b", high[3])
    assert not admission.has_room("b", low[1]), "minimum met; the urgent lane is waiting"
