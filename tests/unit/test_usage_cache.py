"""Usage accounting and the chunk cache on in-memory doubles: the figures every event
carries, the bounded tenant label, the cache's modes, single-flight, integrity and a failing
store. (The same checks against the real store: tests/integration/test_chunk_cache.py.)"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import time
from collections.abc import Mapping
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from processor.backends.base import ReferenceAudio, Utterance
from processor.breaker import Breaker, BreakerConfig
from processor.cache import FAILURES_TO_SKIP, ChunkCache
from processor.cache_key import chunk_key, key_document
from processor.cache_store import CachedObject
from processor.config import BackendConfig
from processor.errors import Permanent, Stage, Transient
from processor.gate import Gate
from processor.kafka.records import Record
from processor.limiter import StaticLimit
from processor.observability import Metrics
from processor.ops.cache import hit_ratio, to_prune
from processor.ops.usage import seconds_of
from processor.pipeline import Pipeline
from processor.request import Reference, Voice
from processor.retry import Policy
from processor.routes import Route
from processor.settings import CacheSettings, KafkaSettings, RetrySettings, Settings
from processor.testing import MemorySink, MemoryStore, ScriptedBackend, Step, spoken, tone
from processor.usage import OTHER_TENANT, TenantLabels

POLICY = Policy(attempts=3, budget_s=1.0, backoff_s=(0.001, 0.002), hold_s=(0.01, 30.0))
SETTINGS = Settings(
    kafka=KafkaSettings(completion_topic="done", dlq_topic="dlq"),
    retry=RetrySettings(wait_initial_s=0.001, wait_max_s=0.002, systemic_wait_max_s=0.01),
    usage_max_tenants=2,
)
CHAPTER = " ".join(f"Sentence number {i} of the chapter." for i in range(12))


class MemoryCacheStore:
    """Cached objects in a dict; ``down`` makes every call fail, ``slow_s`` delays reads."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.down = False
        self.slow_s = 0.0
        self.writes = 0
        self.reads = 0
        #: When set, writes wait for it; ``written`` is set once ``expected`` objects exist.
        self.hold_writes: asyncio.Event | None = None
        self.expected = 0
        self.written = asyncio.Event()

    async def read(self, key: str) -> tuple[bytes, Mapping[str, str]] | None:
        self.reads += 1
        await asyncio.sleep(self.slow_s)
        if self.down:
            raise ConnectionRefusedError("store down")
        return self.objects.get(key)

    async def write(self, key: str, data: bytes, metadata: Mapping[str, str]) -> None:
        if self.hold_writes is not None:
            await self.hold_writes.wait()
        if self.down:
            raise ConnectionRefusedError("store down")
        self.writes += 1
        self.objects[key] = (data, dict(metadata))
        if self.expected and len(self.objects) >= self.expected:
            self.written.set()


def numbered(utterance: Utterance) -> Any:
    """Different speech-like audio per text, so cached audio can be told apart."""
    return spoken(utterance, seed=sum(map(ord, utterance.text)))


class World:
    def __init__(
        self, steps: list[Step] | None = None, *, cache: bool = True, kind: str = "espeak"
    ) -> None:
        self.backend = ScriptedBackend("b", steps, audio=numbered)
        self.metrics = Metrics()
        self.cache_store = MemoryCacheStore()
        self.cache = ChunkCache(self.cache_store, CacheSettings(lookup_timeout_s=0.2), self.metrics)
        gate = Gate("b", StaticLimit(4), Breaker(BreakerConfig(open_for_s=0.01)))
        conf = BackendConfig(name="b", kind=kind, text_limit=40)
        route = Route(self.backend, gate, conf, POLICY)
        self.sink = MemorySink()
        self.pipeline = Pipeline(
            SETTINGS,
            {"b": route},
            "b",
            MemoryStore(),
            self.sink,
            self.metrics,
            cache=self.cache if cache else None,
        )
        self.store = self.pipeline.store
        self.offset = 0

    async def send(self, **fields: Any) -> dict[str, Any]:
        self.offset += 1
        body = {"request_id": f"r{self.offset}", "text": CHAPTER, **fields}
        value = json.dumps(body).encode()
        rec = Record("in", 0, self.offset, None, value, int(time.time() * 1000), ())
        await self.pipeline.handle(rec)
        event: dict[str, Any] = json.loads(self.sink.on("done")[-1].value or b"")
        return event

    def audio(self, event: dict[str, Any]) -> bytes:
        key = event["audio"]["uri"].removeprefix("s3://memory/")
        data: bytes = self.store.objects[key][0]  # type: ignore[attr-defined]
        return data

    def metric(self, name: str, **labels: str) -> float:
        for family in text_string_to_metric_families(self.metrics.render().decode()):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0


async def test_usage_on_a_succeeded_event_adds_up() -> None:
    transient = Transient("HTTP 503", stage=Stage.SYNTHESIZE, http_status=503)
    world = World([transient], cache=False)
    event = await world.send(metadata={"tenant": "acme"})
    usage = event["usage"]
    assert usage["characters"] == len(CHAPTER)
    assert usage["chunks"] == event["chunks"] > 1
    assert usage["backend_calls"] == len(world.backend.calls) == event["chunks"] + 1
    assert usage["backend_calls"] == event["attempts"]
    assert usage["cache_hits"] == 0
    assert usage["audio_ms"] == event["audio"]["duration_ms"]
    assert usage["backend_ms"] >= 0
    chars = world.metric("voxline_usage_characters_total", backend="b", tenant="acme")
    assert chars == len(CHAPTER)
    audio_s = world.metric("voxline_usage_audio_seconds_total", backend="b", tenant="acme")
    assert audio_s == pytest.approx(usage["audio_ms"] / 1000)


async def test_usage_on_a_failed_event() -> None:
    transient = Transient("HTTP 503", stage=Stage.SYNTHESIZE, http_status=503)
    world = World([transient] * 100, cache=False)
    event = await world.send(text="One short sentence.")
    assert event["status"] == "failed"
    assert event["backend"] == "b"
    assert event["usage"]["backend_calls"] == len(world.backend.calls) == POLICY.attempts
    assert event["usage"]["characters"] == len("One short sentence.")
    assert event["usage"]["audio_ms"] == 0


async def test_an_invalid_record_has_zero_usage() -> None:
    world = World()
    event = await world.send(text="")
    assert event["status"] == "failed"
    assert event["usage"] == dict.fromkeys(
        ("characters", "chunks", "backend_calls", "cache_hits", "audio_ms", "backend_ms"), 0
    )


def test_tenant_labels_are_bounded() -> None:
    labels = TenantLabels(2)
    assert [labels.label(t) for t in ("a", "b", "c", "a", "d", "b")] == [
        "a",
        "b",
        OTHER_TENANT,
        "a",
        OTHER_TENANT,
        "b",
    ]


async def test_same_request_twice_makes_no_backend_call_and_identical_audio() -> None:
    world = World()
    first = await world.send()
    calls = len(world.backend.calls)
    second = await world.send()
    assert len(world.backend.calls) == calls
    assert second["usage"]["backend_calls"] == 0
    assert second["usage"]["cache_hits"] == second["chunks"] == first["chunks"]
    assert world.audio(second) == world.audio(first)


async def test_one_edited_sentence_misses_exactly_one_chunk() -> None:
    world = World()
    first = await world.send()
    edited = CHAPTER.replace("number 5 of", "number five of")
    second = await world.send(text=edited)
    assert second["usage"]["backend_calls"] == 1
    assert second["usage"]["cache_hits"] == first["chunks"] - 1


@pytest.mark.parametrize(
    "change",
    [
        {"voice": {"preset": "other"}},
        {"voice": {"description": "a calm voice"}},
        {"seed": 7},
        {"params": {"speed": 1.1}},
        {"language": "de"},
    ],
)
async def test_a_changed_key_input_misses_every_chunk(change: dict[str, Any]) -> None:
    world = World()
    first = await world.send()
    second = await world.send(**change)
    assert second["usage"]["cache_hits"] == 0
    assert second["usage"]["backend_calls"] == first["chunks"]


def test_the_key_covers_backend_version_options_and_reference() -> None:
    conf = BackendConfig(name="b", kind="qwen")
    call = Utterance("Hello.", seed=1)
    base = chunk_key(conf, call)
    assert chunk_key(conf, call) == base
    assert chunk_key(dataclasses.replace(conf, name="c"), call) != base
    assert chunk_key(dataclasses.replace(conf, options={"model": "v2"}), call) != base
    assert chunk_key(dataclasses.replace(conf, options={"api_key": "x"}), call) == base
    ref = ReferenceAudio("s3://r/a.wav", tone(50).data, 16_000, 1, 50)
    cloned = dataclasses.replace(call, voice=Voice(reference=Reference("s3://r/a.wav", "hi")))
    with_ref = chunk_key(conf, dataclasses.replace(cloned, reference=ref))
    other_audio = dataclasses.replace(ref, wav=tone(60).data)
    assert with_ref != chunk_key(conf, dataclasses.replace(cloned, reference=other_audio))
    other_text = dataclasses.replace(cloned, voice=Voice(reference=Reference("s3://r/a.wav", "x")))
    assert with_ref != chunk_key(conf, dataclasses.replace(other_text, reference=ref))
    assert "mapping_version" in key_document(conf, call)


async def test_unseeded_calls_to_a_sampling_backend_are_not_cached() -> None:
    world = World(kind="qwen")
    await world.send()
    second = await world.send()
    assert second["usage"]["cache_hits"] == 0
    seeded = await world.send(seed=3)
    again = await world.send(seed=3)
    assert seeded["usage"]["cache_hits"] == 0
    assert again["usage"]["cache_hits"] == again["chunks"]


async def test_bypass_and_refresh() -> None:
    world = World()
    first = await world.send()
    writes = world.cache_store.writes
    bypass = await world.send(cache="bypass")
    assert bypass["usage"]["backend_calls"] == first["chunks"]
    assert world.cache_store.writes == writes
    refresh = await world.send(cache="refresh")
    assert refresh["usage"]["cache_hits"] == 0
    assert world.cache_store.writes == writes + first["chunks"] + 1  # and the request's bundle


async def test_concurrent_identical_chunks_call_the_backend_once() -> None:
    world = World()
    text = "The same words. " * 8  # eight identical chunks at text_limit 40
    first, second = await asyncio.gather(world.send(text=text), world.send(text=text))
    assert len(world.backend.calls) == 1
    assert first["usage"]["backend_calls"] + second["usage"]["backend_calls"] == 1
    assert world.audio(first) == world.audio(second)


async def test_a_corrupt_or_truncated_object_is_ignored_and_rewritten() -> None:
    world = World()
    first = await world.send()
    for bundle in [k for k in world.cache_store.objects if not k.endswith(".wav")]:
        del world.cache_store.objects[bundle]  # so the chunks are read one by one
    keys = sorted(world.cache_store.objects)
    data, meta = world.cache_store.objects[keys[0]]
    world.cache_store.objects[keys[0]] = (data[: len(data) // 2], meta)  # truncated
    flipped = bytearray(world.cache_store.objects[keys[1]][0])
    flipped[-1] ^= 0xFF
    world.cache_store.objects[keys[1]] = (bytes(flipped), world.cache_store.objects[keys[1]][1])
    second = await world.send()
    assert second["usage"]["backend_calls"] == 2
    assert world.metric("voxline_cache_total", op="lookup", result="corrupt") == 2
    assert world.cache_store.objects[keys[0]][0] == data  # rewritten whole
    assert world.audio(second) == world.audio(first)
    third = await world.send()
    assert third["usage"]["backend_calls"] == 0


async def test_a_request_seen_before_is_one_read_of_its_bundle() -> None:
    world = World()
    first = await world.send()
    assert first["chunks"] == 12  # one sentence a chunk with the cache on
    reads = world.cache_store.reads
    second = await world.send()
    assert world.cache_store.reads == reads + 1
    assert second["usage"]["backend_calls"] == 0
    assert second["usage"]["cache_hits"] == 12
    assert world.audio(second) == world.audio(first)
    assert world.metric("voxline_cache_total", op="bundle", result="hit") == 1


async def test_an_edited_sentence_reads_the_bundle_and_its_own_chunk_only() -> None:
    world = World()
    await world.send()
    reads = world.cache_store.reads
    edited = await world.send(text=CHAPTER.replace("number 5 of", "number five of"))
    assert edited["usage"]["backend_calls"] == 1
    assert edited["usage"]["cache_hits"] == 11
    assert world.cache_store.reads == reads + 2  # the bundle, then the edited chunk (a miss)
    assert world.metric("voxline_cache_total", op="bundle", result="partial") == 1
    again = await world.send(text=CHAPTER.replace("number 5 of", "number five of"))
    assert again["usage"]["backend_calls"] == 0  # the bundle was written again, edit included
    assert world.audio(again) == world.audio(edited)


async def test_a_corrupt_bundle_is_ignored_and_rewritten() -> None:
    world = World()
    first = await world.send()
    (name,) = [k for k in world.cache_store.objects if not k.endswith(".wav")]
    data, meta = world.cache_store.objects[name]
    world.cache_store.objects[name] = (data[:-1] + bytes([data[-1] ^ 0xFF]), meta)
    second = await world.send()
    assert second["usage"]["backend_calls"] == 0  # every chunk read on its own instead
    assert world.metric("voxline_cache_total", op="bundle", result="corrupt") == 1
    assert world.audio(second) == world.audio(first)
    assert world.cache_store.objects[name][0] == data


async def test_a_store_down_is_a_miss_and_then_skipped_for_a_while() -> None:
    world = World()
    world.cache_store.down = True
    event = await world.send()
    assert event["status"] == "succeeded"
    assert event["usage"]["cache_hits"] == 0
    chunks = event["chunks"]

    def count(op: str, result: str) -> float:
        return world.metric("voxline_cache_total", op=op, result=result)

    assert count("lookup", "error") >= FAILURES_TO_SKIP
    assert count("lookup", "error") + count("lookup", "skipped") == chunks
    assert count("write", "failed") + count("write", "skipped") == chunks
    reads, skipped = world.cache_store.reads, count("lookup", "skipped")
    again = await world.send()  # within SKIP_S of the last failure: no store call at all
    assert again["status"] == "succeeded"
    assert world.cache_store.reads == reads
    assert count("lookup", "skipped") == skipped + chunks


async def test_a_slow_store_is_a_miss_bounded_by_the_lookup_timeout() -> None:
    world = World()
    world.cache_store.slow_s = 5.0  # longer than lookup_timeout_s (0.2)
    started = time.monotonic()
    slow = await world.send(text="One sentence.")
    assert slow["status"] == "succeeded"
    assert slow["usage"]["backend_calls"] == 1
    assert world.metric("voxline_cache_total", op="lookup", result="error") == 1
    assert time.monotonic() - started < 5.0  # bounded by the lookup timeout, not the store


def test_prune_takes_the_old_then_the_oldest_past_the_bound() -> None:
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    objects = [CachedObject(f"k{i}", 100, t0 + dt.timedelta(days=i)) for i in range(6)]
    assert to_prune(objects, before=None, max_bytes=0) == []
    old = to_prune(objects, before=t0 + dt.timedelta(days=2), max_bytes=0)
    assert [o.key for o in old] == ["k0", "k1"]
    both = to_prune(objects, before=t0 + dt.timedelta(days=2), max_bytes=250)
    assert [o.key for o in both] == ["k0", "k1", "k2", "k3"]


def test_hit_ratio_and_time_spans() -> None:
    metrics = Metrics()
    for result in ("hit", "hit", "shared", "miss", "error", "uncacheable"):
        metrics.cache("lookup", result)
    metrics.cache("write", "ok")
    assert hit_ratio(metrics.render().decode()) == (3, 5)
    assert [seconds_of(s) for s in ("30m", "12h", "7d", "2w", "1d12h")] == [
        1800,
        43200,
        604800,
        1209600,
        129600,
    ]
    with pytest.raises(ValueError, match="not a time span"):
        seconds_of("7 days")


async def test_a_failed_sibling_does_not_cancel_the_writes_of_chunks_made() -> None:
    permanent = Permanent("HTTP 422", stage=Stage.SYNTHESIZE, http_status=422)
    world = World([None, None, permanent])
    world.cache_store.hold_writes = asyncio.Event()
    world.cache_store.expected = 2
    text = "First sentence of three. Second sentence of three. Third one fails."
    event = await world.send(text=text)
    assert event["status"] == "failed"
    assert world.cache_store.objects == {}  # both writes still waiting, their tasks cancelled
    world.cache_store.hold_writes.set()
    await asyncio.wait_for(world.cache_store.written.wait(), 5)
    assert len(world.cache_store.objects) == 2
    again = await world.send(text=text)  # the replay: one call, for the chunk that failed
    assert again["status"] == "succeeded"
    assert again["usage"]["backend_calls"] == 1
    assert again["usage"]["cache_hits"] == 2


@pytest.mark.parametrize("gate", ["passed", "unchecked"])
async def test_written_chunks_say_what_the_quality_gate_said(gate: str) -> None:
    """The gate passes a chunk before the cache writes it; with the gate off it is unchecked."""
    store = MemoryCacheStore()
    cache = ChunkCache(store, CacheSettings(), Metrics(), gate=gate)
    await cache.write("k", tone(300))
    assert store.objects["k"][1]["gate"] == gate
