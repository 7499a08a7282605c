"""The pipeline on in-memory doubles (no Kafka, no S3): every error class is routed to its
outcome, and nothing leaves a record without one."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from typing import Any

import pytest

from processor.backends.base import ReferenceAudio, Utterance
from processor.breaker import Breaker, BreakerConfig
from processor.config import BackendConfig
from processor.errors import (
    Expired,
    InvalidInput,
    Permanent,
    Stage,
    Systemic,
    Transient,
)
from processor.gate import Gate
from processor.kafka.records import Record
from processor.limiter import StaticLimit
from processor.pipeline import INTERNAL_ATTEMPTS, Pipeline
from processor.retry import Policy
from processor.routes import Route
from processor.settings import KafkaSettings, RetrySettings, Settings
from processor.testing import (
    MemoryReferences,
    MemorySink,
    MemoryStore,
    Script,
    ScriptedBackend,
    Step,
    tone,
)

S = Stage.SYNTHESIZE
KAFKA = KafkaSettings(completion_topic="done", dlq_topic="dlq")
FAST = RetrySettings(wait_initial_s=0.001, wait_max_s=0.002, systemic_wait_max_s=0.01)
POLICY = Policy(attempts=3, budget_s=1.0, backoff_s=(0.001, 0.002), hold_s=(0.01, 30.0))


class World:
    """A pipeline over one scripted backend, a memory store, sink and reference loader."""

    def __init__(
        self, steps: list[Step] | None = None, policy: Policy = POLICY, **backend: Any
    ) -> None:
        self.backend = ScriptedBackend("b", steps, **backend)
        self.store = MemoryStore()
        self.sink = MemorySink()
        self.references = MemoryReferences()
        self.breaker = Breaker(BreakerConfig(open_for_s=0.01, max_open_for_s=0.02))
        gate = Gate("b", StaticLimit(4), self.breaker)
        route = Route(self.backend, gate, BackendConfig(name="b", kind="espeak"), policy)
        settings = Settings(kafka=KAFKA, retry=FAST)
        self.pipeline = Pipeline(
            settings, {"b": route}, "b", self.store, self.sink, references=self.references
        )

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(s.value or b"") for s in self.sink.on("done")]

    def dead_letters(self) -> list[Any]:
        return self.sink.on("dlq")


def record(offset: int = 0, headers: Any = (), **fields: Any) -> Record:
    body = {"request_id": f"r{offset}", "text": "Hello there.", **fields}
    return Record(
        "requests",
        0,
        offset,
        body["request_id"].encode(),
        json.dumps(body).encode(),
        int(time.time() * 1000),
        headers,
    )


async def test_success_stores_audio_and_publishes_one_event() -> None:
    world = World()
    assert await world.pipeline.handle(record()) == "succeeded"
    (event,) = world.events()
    assert event["status"] == "succeeded"
    assert event["audio"]["uri"] == "s3://memory/r0.wav"
    assert list(world.store.objects) == ["r0.wav"]
    assert world.dead_letters() == []


@pytest.mark.parametrize(
    ("error", "reason", "calls"),
    [
        (InvalidInput("cannot", stage=S), "invalid_input", 1),
        (Permanent("HTTP 422", stage=S, http_status=422), "permanent", 1),
        (Expired("late", stage=S), "expired", 1),
        (Transient("HTTP 500", stage=S, http_status=500), "retries_exhausted", POLICY.attempts),
    ],
)
async def test_each_error_class_is_routed_to_its_reason(
    error: Exception, reason: str, calls: int
) -> None:
    world = World([error] * 10)
    assert await world.pipeline.handle(record()) == "failed"
    (letter,) = world.dead_letters()
    assert letter.header("dlq.reason") == reason
    assert letter.value == record().value, "a dead letter carries the original value"
    (event,) = world.events()
    assert (event["status"], event["reason"]) == ("failed", reason)
    assert world.backend.script.calls == calls
    assert world.store.objects == {}


async def test_a_transient_failure_then_success_succeeds() -> None:
    world = World([Transient("timeout", stage=S, error_type="timeout")])
    assert await world.pipeline.handle(record()) == "succeeded"
    assert world.events()[0]["attempts"] == 2


async def test_an_outage_holds_the_record_and_never_dead_letters_it() -> None:
    # More systemic failures than attempts: a hold never uses attempts up.
    world = World([Systemic("HTTP 401", stage=S, http_status=401)] * (POLICY.attempts + 4))
    assert await world.pipeline.handle(record()) == "succeeded"
    assert world.dead_letters() == []


async def test_a_day_long_retry_after_holds_instead_of_dead_lettering() -> None:
    day = Transient("HTTP 429", stage=S, http_status=429, retry_after=86_400.0)
    # The hold waits at most the policy's longest hold, not the day the server asked for.
    world = World([day], policy=Policy(attempts=3, budget_s=1.0, hold_s=(0.2, 0.01)))
    assert await world.pipeline.handle(record()) == "succeeded"
    assert world.dead_letters() == []


async def test_the_deadline_ends_a_hold() -> None:
    world = World([Systemic("down", stage=S)] * 1000)
    deadline = (dt.datetime.now(dt.UTC) + dt.timedelta(milliseconds=50)).isoformat()
    assert await world.pipeline.handle(record(deadline=deadline)) == "failed"
    assert world.dead_letters()[0].header("dlq.reason") == "expired"


async def test_an_unexpected_error_is_retried_then_dead_lettered_as_internal_error() -> None:
    world = World([RuntimeError("adapter bug")] * 10)
    assert await world.pipeline.handle(record()) == "failed"
    (letter,) = world.dead_letters()
    assert letter.header("dlq.reason") == "internal_error"
    message = letter.header("dlq.error.message") or ""
    assert "RuntimeError: adapter bug" in message
    assert "testing.py" in message, "the last frame the error passed through is named"
    assert world.backend.script.calls == INTERNAL_ATTEMPTS


async def test_an_unexpected_error_once_is_retried_and_succeeds() -> None:
    world = World([ValueError("flaky bug")])
    assert await world.pipeline.handle(record()) == "succeeded"
    assert world.dead_letters() == []


async def test_null_repeated_and_non_utf8_headers_reach_the_dead_letter() -> None:
    headers = [("trace", None), ("x", b"\xff\xfe"), ("x", b"second"), ("dlq.reason", b"old")]
    world = World()
    bad = Record("requests", 0, 7, b"k", b"not json", 0, headers)
    assert await world.pipeline.handle(bad) == "failed"
    (letter,) = world.dead_letters()
    assert letter.header("dlq.reason") == "invalid_input"
    assert ("trace", b"") in letter.headers
    assert [v for k, v in letter.headers if k == "x"] == [b"\xff\xfe", b"second"]
    assert [k for k, _ in letter.headers].count("dlq.reason") == 1


async def test_a_store_outage_holds_and_a_store_rejection_dead_letters() -> None:
    world = World()
    world.store.script.steps = [Systemic("store down", stage=Stage.STORE)] * 3
    assert await world.pipeline.handle(record(0)) == "succeeded"
    world.store.script.steps = [Permanent("EntityTooLarge", stage=Stage.STORE)]
    assert await world.pipeline.handle(record(1)) == "failed"
    assert world.dead_letters()[0].header("dlq.stage") == "store"


async def test_a_dead_letter_too_large_for_the_broker_is_truncated_and_says_so() -> None:
    world = World([InvalidInput("cannot", stage=S)])
    world.sink.scripts["dlq"] = Script(
        [Permanent("too large", stage=Stage.PUBLISH, error_type="kafka_MessageSizeTooLargeError")]
    )
    rec = record(text="x" * 5000)
    assert await world.pipeline.handle(rec) == "failed"
    (letter,) = world.dead_letters()
    assert letter.header("dlq.value.truncated") == str(len(rec.value or b""))
    assert letter.value is not None
    assert len(letter.value) < len(rec.value or b"")


async def test_a_missing_reference_is_the_request_s_fault_and_spares_the_breaker() -> None:
    world = World()
    voice = {"reference": {"audio_uri": "s3://refs/missing.wav", "text": "hi"}}
    assert await world.pipeline.handle(record(voice=voice)) == "failed"
    assert world.dead_letters()[0].header("dlq.reason") == "invalid_input"
    assert world.backend.script.calls == 0
    assert world.breaker.state == "closed"


async def test_a_reference_store_outage_holds_without_touching_the_breaker() -> None:
    uri = "s3://refs/a.wav"
    seen: list[Utterance] = []

    def audio(u: Utterance) -> Any:
        seen.append(u)
        return tone()

    world = World(audio=audio)
    world.references.audio[uri] = ReferenceAudio(uri, b"RIFF", 16_000, 1, 1000)
    world.references.script.steps = [Systemic("store down", stage=Stage.STORE)] * 8
    voice = {"reference": {"audio_uri": uri, "text": "hi"}}
    assert await world.pipeline.handle(record(voice=voice)) == "succeeded"
    assert world.breaker.state == "closed"
    assert seen[0].reference is not None
    assert seen[0].reference.uri == uri


async def test_same_request_id_is_processed_in_order_and_the_later_one_wins() -> None:
    first_started = asyncio.Event()
    release = asyncio.Event()

    async def hook(u: Utterance) -> None:
        if u.text == "first":
            first_started.set()
            await release.wait()

    world = World(hook=hook, audio=lambda u: tone(100 if u.text == "first" else 300))
    a = record(0, request_id="same", text="first")
    b = record(1, request_id="same", text="second")
    ta = asyncio.create_task(world.pipeline.handle(a))
    tb = asyncio.create_task(world.pipeline.handle(b))
    await first_started.wait()
    await asyncio.sleep(0.01)
    assert [u.text for u in world.backend.calls] == ["first"], "the second waits its turn"
    release.set()
    assert list(await asyncio.gather(ta, tb)) == ["succeeded", "succeeded"]
    assert [u.text for u in world.backend.calls] == ["first", "second"]
    assert [e["audio"]["duration_ms"] for e in world.events()] == [100, 300]


async def test_an_unknown_backend_is_invalid_input() -> None:
    world = World()
    assert await world.pipeline.handle(record(backend="nope")) == "failed"
    assert world.dead_letters()[0].header("dlq.error.type") == "unknown_backend"
