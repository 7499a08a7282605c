"""The quality gate in the pipeline (in-memory doubles): a chunk that fails is synthesized
again (a new seed when the request has one) and the request succeeds when a regeneration is
good; a chunk bad on every synthesis dead-letters the request as ``quality`` with the
measures in ``dlq.quality.*`` headers; failures are counted by backend and check."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from processor.audio import wav_info
from processor.backends.base import Audio, Utterance
from processor.breaker import Breaker, BreakerConfig
from processor.config import BackendConfig, single_backend
from processor.gate import Gate
from processor.kafka.records import Record
from processor.limiter import StaticLimit
from processor.pipeline import Pipeline
from processor.quality import Thresholds
from processor.retry import Policy
from processor.routes import Route
from processor.settings import KafkaSettings, RetrySettings, Settings
from processor.testing import MemorySink, MemoryStore, ScriptedBackend
from tests.fakes.bad_audio import speechlike, spoil

RATE = 24_000
POLICY = Policy(attempts=3, budget_s=1.0, backoff_s=(0.001, 0.002), hold_s=(0.01, 30.0))
TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was "
    "the age of foolishness, it was the epoch of belief, it was the epoch of incredulity."
)


def made(modes: list[str]) -> Callable[[Utterance], Audio]:
    """A backend's audio: the next mode of ``modes`` per call (the last one repeats)."""
    calls = iter(range(10_000))

    def audio(call: Utterance) -> Audio:
        mode = modes[min(next(calls), len(modes) - 1)]
        wav = spoil(speechlike(len(call.text) * 60, RATE, seed=1), RATE, mode)
        try:
            info = wav_info(wav)
        except ValueError:  # the float WAV of the nan mode
            return Audio(wav, "wav", RATE, 1, 0)
        return Audio(wav, "wav", info.sample_rate, info.channels, info.duration_ms)

    return audio


class World:
    def __init__(self, modes: list[str], attempts: int = 3, enabled: bool = True) -> None:
        self.backend = ScriptedBackend("b", audio=made(modes))
        self.sink = MemorySink()
        self.breaker = Breaker(BreakerConfig())
        gate = Gate("b", StaticLimit(4), self.breaker)
        route = Route(self.backend, gate, BackendConfig(name="b", kind="espeak"), POLICY)
        settings = Settings(
            kafka=KafkaSettings(completion_topic="done", dlq_topic="dlq"),
            retry=RetrySettings(wait_initial_s=0.001, wait_max_s=0.002),
            backends=dataclasses.replace(
                single_backend(), quality=Thresholds(enabled=enabled, attempts=attempts)
            ),
        )
        self.pipeline = Pipeline(settings, {"b": route}, "b", MemoryStore(), self.sink)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(s.value or b"") for s in self.sink.on("done")]

    def failed_checks(self, check: str) -> float:
        value = self.pipeline.metrics.registry.get_sample_value(
            "voxline_quality_failures_total", {"backend": "b", "check": check}
        )
        return value or 0.0


def record(offset: int = 0, **fields: Any) -> Record:
    rid = f"r{offset}"
    body = {"request_id": rid, "text": TEXT, "language": "en", **fields}
    value = json.dumps(body).encode()
    return Record("requests", 0, offset, rid.encode(), value, int(time.time() * 1000))


@pytest.mark.parametrize(
    ("mode", "check"),
    [
        ("silence", "silence"),
        ("cut", "duration"),
        ("loop", "repetition"),
        ("babble", "duration"),
        ("clipped", "clipping"),
        ("nan", "nonfinite"),
    ],
)
async def test_a_bad_chunk_is_regenerated_and_the_request_succeeds(mode: str, check: str) -> None:
    world = World([mode, "good"])
    assert await world.pipeline.handle(record()) == "succeeded"
    assert len(world.backend.calls) == 2
    assert world.sink.on("dlq") == []
    assert world.failed_checks(check) == 1
    (event,) = world.events()
    quality = event["quality"]
    assert (quality["chunks_checked"], quality["regenerated"]) == (1, 1)
    assert quality["repetition"] < 0.95
    assert quality["clipping_ratio"] <= 0.01


async def test_bad_on_every_synthesis_dead_letters_as_quality_with_the_measures() -> None:
    world = World(["loop"], attempts=3)
    assert await world.pipeline.handle(record(seed=42)) == "failed"
    assert len(world.backend.calls) == 3
    assert [c.seed for c in world.backend.calls] == [42, 43, 44], "a new seed each time"
    (letter,) = world.sink.on("dlq")
    assert letter.header("dlq.reason") == "quality"
    assert letter.header("dlq.error.type") == "quality_repetition"
    assert letter.header("dlq.quality.checks") == "repetition"
    assert float(letter.header("dlq.quality.repetition") or 0) > 0.95
    (event,) = world.events()
    assert (event["status"], event["reason"]) == ("failed", "quality")
    assert world.failed_checks("repetition") == 3


async def test_without_a_seed_the_regeneration_sends_none() -> None:
    world = World(["cut", "good"])
    assert await world.pipeline.handle(record()) == "succeeded"
    assert [c.seed for c in world.backend.calls] == [None, None]


async def test_the_gate_off_lets_anything_through() -> None:
    world = World(["silence"], enabled=False)
    assert await world.pipeline.handle(record()) == "succeeded"
    assert len(world.backend.calls) == 1
    assert "quality" not in world.events()[0]


async def test_a_backend_bad_for_most_chunks_trips_its_breaker() -> None:
    world = World(["silence"], attempts=1)
    for offset in range(9):
        assert await world.pipeline.handle(record(offset)) == "failed"
    states: list[str] = [world.breaker.state]
    assert await world.pipeline.handle(record(9)) == "failed"
    states.append(world.breaker.state)
    assert states == ["closed", "open"], "fewer than ten chunks say nothing; ten do"


async def test_a_bad_chunk_now_and_then_leaves_the_breaker_closed() -> None:
    world = World(["good"] * 4 + ["silence"] + ["good"] * 100, attempts=1)
    outcomes = [await world.pipeline.handle(record(offset)) for offset in range(20)]
    assert outcomes.count("failed") == 1
    assert world.breaker.state == "closed"
