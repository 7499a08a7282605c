"""processor.held: records holding synthesized audio are bounded; a record holding none waits
before its first backend call, one holding some never waits, and no turn is lost."""

from __future__ import annotations

import asyncio
import contextvars
import json
import time
from typing import Any

import pytest

from processor.backends.base import Audio, Utterance
from processor.cache import ChunkCache
from processor.config import BackendConfig, ConfigError, load, single_backend
from processor.errors import Permanent, Stage, Transient
from processor.gate import Gate
from processor.held import HeldAudio, audio_window
from processor.kafka.records import Record
from processor.lanes import PRIORITY
from processor.limiter import StaticLimit
from processor.observability import Metrics
from processor.pipeline import Pipeline
from processor.retry import Policy
from processor.routes import Route
from processor.settings import CacheSettings, KafkaSettings, RetrySettings, Settings
from processor.testing import MemorySink, MemoryStore, ScriptedBackend, tone
from tests.unit.test_usage_cache import MemoryCacheStore

POLICY = Policy(attempts=3, budget_s=1.0, backoff_s=(0.001, 0.002), hold_s=(0.01, 30.0))
KAFKA = KafkaSettings(completion_topic="done", dlq_topic="dlq")
FAST = RetrySettings(wait_initial_s=0.001, wait_max_s=0.002, systemic_wait_max_s=0.01)


async def turns(n: int = 5) -> None:
    """Let the loop run the callbacks that are ready (no time passes)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_room_is_free_below_the_limit_and_waits_at_it() -> None:
    held = HeldAudio(2)
    await held.room()
    held.take()
    await held.room()
    held.take()
    waiting = asyncio.create_task(held.room())
    await turns()
    assert not waiting.done()
    assert held.waiting == 1
    held.give()
    await asyncio.wait_for(waiting, 5)
    assert held.count == 1


async def test_a_release_wakes_one_waiter_in_turn() -> None:
    held = HeldAudio(1)
    first, second = await two_waiting(held)
    await asyncio.wait_for(first, 5)
    held.take()  # the first one's call came back with audio
    await turns()
    assert not second.done()
    held.give()
    await asyncio.wait_for(second, 5)


async def two_waiting(held: HeldAudio) -> tuple[asyncio.Task[None], asyncio.Task[None]]:
    """Two records waiting for the room of one that is taken, the first woken."""
    held.take()
    first = asyncio.create_task(held.room())
    await turns()
    second = asyncio.create_task(held.room())
    await turns()
    held.give()
    return first, second


async def test_a_woken_call_that_brought_no_audio_passes_its_turn_on() -> None:
    held = HeldAudio(1)
    first, second = await two_waiting(held)
    await asyncio.wait_for(first, 5)
    await turns()
    assert not second.done()
    held.missed()  # the first one's call failed: nothing taken
    await asyncio.wait_for(second, 5)


async def test_a_woken_waiter_cancelled_passes_its_turn_on() -> None:
    held = HeldAudio(1)
    first, second = await two_waiting(held)
    first.cancel()  # woken, it leaves before it runs  # ... which leaves before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 5)
    assert held.waiting == 0


def lane(priority: int) -> contextvars.Context:
    """The context of a record's task in the lane of ``priority``."""
    context = contextvars.copy_context()
    context.run(PRIORITY.set, priority)
    return context


def in_lane(priority: int, work: Any) -> asyncio.Task[Any]:
    """``work`` (a coroutine) as a task of a record in the lane of ``priority``."""
    return asyncio.get_running_loop().create_task(work, context=lane(priority))


async def test_the_highest_lane_is_woken_first() -> None:
    held = HeldAudio(1)
    held.take()
    low = in_lane(0, held.room())
    await turns()
    high = in_lane(10, held.room())
    await turns()
    held.give()
    await asyncio.wait_for(high, 5)
    await turns()
    assert not low.done()
    held.missed()
    await asyncio.wait_for(low, 5)


async def test_a_lane_below_its_share_is_woken_before_a_higher_one() -> None:
    held = HeldAudio(2)
    held.shares = {0: 0.5}  # the low lane keeps one of the two
    lane(10).run(held.take)
    lane(10).run(held.take)
    high = in_lane(10, held.room())
    await turns()
    low = in_lane(0, held.room())
    await turns()
    lane(10).run(held.give)
    await asyncio.wait_for(low, 5)
    await turns()
    assert not high.done()


async def test_a_records_other_chunks_go_once_one_of_them_is_answered() -> None:
    held = HeldAudio(1)
    holds: list[bool] = []
    held.take()  # another record
    chunks = [asyncio.create_task(held.room(lambda: bool(holds))) for _ in range(3)]
    await turns()
    held.give()  # the other record ends: one chunk's turn
    await until(lambda: sum(c.done() for c in chunks) == 1)
    holds.append(True)  # that chunk's answer came back: the record holds audio
    held.take()
    await asyncio.wait_for(asyncio.gather(*chunks), 5)  # its siblings do not wait for room
    assert held.count == 1


async def test_records_of_many_chunks_all_end_with_room_for_one() -> None:
    world = World(limit=1, window=2, text_limit=40)
    world.store.script.gate = None  # the store takes every upload at once
    long = " ".join(f"Sentence number {n} is here." for n in range(3))
    tasks = world.start(range(4), long)
    assert await asyncio.wait_for(asyncio.gather(*tasks), 10) == ["succeeded"] * 4
    assert world.held.count == 0
    assert world.held.waiting == 0


async def test_a_call_another_record_waits_for_stops_waiting_for_room() -> None:
    """The chunk cache's single flight: a record holding the only room waits for a chunk that
    a record holding none is making; that maker goes on, or neither would ever end."""
    held = HeldAudio(1)
    cache = ChunkCache(MemoryCacheStore(), CacheSettings(), Metrics())
    made: list[str] = []

    async def make() -> Audio:  # as Synthesizer._call: room first, then the backend
        await held.room()
        made.append("call")
        return tone()

    held.take()  # the follower's record holds audio
    maker = asyncio.create_task(cache.through("k", "use", make))
    await until(lambda: held.waiting == 1)  # its lookup missed; now it waits for room
    follower = asyncio.create_task(cache.through("k", "use", make))
    (_, shared), (_, mine) = await asyncio.wait_for(asyncio.gather(follower, maker), 5)
    assert made == ["call"]
    assert shared
    assert not mine
    assert held.waiting == 0


def test_the_default_is_a_quarter_of_the_windows_and_at_least_8() -> None:
    assert audio_window(64) == 16
    assert audio_window(8) == 8
    assert audio_window(1) == 8
    assert single_backend("espeak", max_in_flight=64).audio_window == 16
    assert single_backend("espeak", max_in_flight=64, max_audio_records=5).audio_window == 5


def test_the_config_file_sets_it_and_refuses_a_negative(tmp_path: Any) -> None:
    path = tmp_path / "voxline.toml"
    path.write_text('max_audio_records = 3\n[backends.a]\nkind = "espeak"\nmax_in_flight = 40\n')
    assert load(path).audio_window == 3
    path.write_text('max_audio_records = -1\n[backends.a]\nkind = "espeak"\n')
    with pytest.raises(ConfigError, match="max_audio_records"):
        load(path)


class World:
    """A pipeline whose store holds every upload until ``store.script.gate`` opens."""

    def __init__(self, limit: int, window: int = 8, text_limit: int = 200, **backend: Any) -> None:
        self.backend = ScriptedBackend("b", **backend)
        self.store = MemoryStore()
        self.store.script.gate = asyncio.Event()
        self.sink = MemorySink()
        conf = BackendConfig(name="b", kind="espeak", text_limit=text_limit)
        route = Route(self.backend, Gate("b", StaticLimit(window)), conf, POLICY)
        backends = single_backend("espeak", max_audio_records=limit)
        settings = Settings(kafka=KAFKA, retry=FAST, backends=backends)
        self.pipeline = Pipeline(settings, {"b": route}, "b", self.store, self.sink)
        self.held = self.pipeline.synth.held

    def start(self, offsets: range, text: str = "Hello there.") -> list[asyncio.Task[str]]:
        return [asyncio.create_task(self.pipeline.handle(record(i, text))) for i in offsets]

    def check(self, calls: int, held: int, waiting: int) -> None:
        assert len(self.backend.calls) == calls
        assert self.held.count == held
        assert self.held.waiting == waiting

    async def finish(self, tasks: list[asyncio.Task[str]]) -> None:
        """Let the store take the uploads: every record succeeds and gives its room back."""
        assert self.store.script.gate is not None
        self.store.script.gate.set()
        assert await asyncio.wait_for(asyncio.gather(*tasks), 10) == ["succeeded"] * len(tasks)
        assert self.held.count == 0


def record(offset: int, text: str) -> Record:
    body = json.dumps({"request_id": f"r{offset}", "text": text}).encode()
    return Record("requests", 0, offset, None, body, int(time.time() * 1000), ())


async def until(condition: Any, timeout_s: float = 5.0) -> None:
    """Wait for ``condition`` (polled each millisecond; nothing signals these counters)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.001)


async def test_no_more_records_hold_audio_than_the_bound_while_the_store_is_slow() -> None:
    world = World(limit=2, window=8)
    tasks = world.start(range(6))
    await until(lambda: world.store.script.calls == 2)
    await turns(20)
    # The window has room for 8 calls, but only the 2 records holding audio made theirs.
    world.check(calls=2, held=2, waiting=4)
    await world.finish(tasks)
    assert len(world.backend.calls) == 6


async def test_a_record_holding_audio_makes_its_next_chunks_without_waiting() -> None:
    """With room for one, a three-chunk record finishes though others wait for the room, and
    its chunk that failed once is made again after the record took the room."""
    failed: list[str] = []

    async def once(utterance: Utterance) -> None:
        if "number 1" in utterance.text and not failed:
            failed.append(utterance.text)
            await until(lambda: world.held.count == 1)  # a sibling answered: the room is taken
            raise Transient("busy", stage=Stage.SYNTHESIZE, error_type="http_503")

    world = World(limit=1, window=2, text_limit=40, hook=once)
    long = " ".join(f"Sentence number {n} is here." for n in range(3))
    tasks = world.start(range(1), long)
    await until(lambda: world.held.count == 1)
    tasks += world.start(range(1, 4))
    await until(lambda: world.store.script.calls == 1)
    await turns(20)
    world.check(calls=4, held=1, waiting=3)  # its three chunks and one again, nobody else's
    await world.finish(tasks)


async def test_a_first_call_that_fails_takes_no_room() -> None:
    bad = Permanent("no such voice", stage=Stage.SYNTHESIZE, error_type="bad_voice")

    async def refuse(utterance: Utterance) -> None:
        if utterance.text.startswith("Bad"):
            raise bad

    world = World(limit=1, hook=refuse)
    assert world.store.script.gate is not None
    world.store.script.gate.set()
    failed = world.start(range(3), "Bad text.")
    assert await asyncio.wait_for(asyncio.gather(*failed), 10) == ["failed"] * 3
    assert world.held.count == 0
    assert (
        await asyncio.wait_for(asyncio.gather(*world.start(range(3, 5))), 10) == ["succeeded"] * 2
    )
