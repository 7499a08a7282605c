"""The chunk cache and usage accounting on the real broker and store, against the OpenAI fake
(whose own request counter is the truth about backend calls): the issue's checks."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from processor.backends.base import Utterance
from processor.cache import ChunkCache
from processor.cache_bundle import bundle_name, unpack
from processor.cache_key import chunk_key, object_name
from processor.cache_store import S3CacheStore
from processor.chunking import split_sentences
from processor.errors import Permanent, Stage
from processor.observability import Metrics
from processor.ops.cli import main
from processor.ops.client import read_dead_letters, replay
from processor.settings import CacheSettings, Settings
from processor.synthesis import SHORTEST_SENTENCE
from processor.testing import ScriptedBackend, tone
from tests.fakes.openai_server import running_fake
from tests.integration.harness import (
    events_by_id,
    get_objects,
    produce,
    request,
    running,
    unique_settings,
    wait_for,
    wait_for_events,
)
from tests.integration.services import Services

pytestmark = pytest.mark.integration
CHAPTER = " ".join(f"This is sentence number {i} of the chapter." for i in range(20))


def _config(tmp_path: Path, url: str) -> str:
    path = tmp_path / "voxline.toml"
    path.write_text(
        f'default_backend = "tts"\n\n[backends.tts]\nkind = "openai"\nurl = "{url}"\n'
        "max_in_flight = 8\ntext_limit = 60\nretry_timeout_s = 30\n",
        encoding="utf-8",
    )
    return str(path)


def _cached(settings: Settings, **changes: Any) -> Settings:
    cache = CacheSettings(enabled=True, prefix=f"{settings.store.prefix}cache/", **changes)
    return dataclasses.replace(settings, cache=cache)


def _calls(fake: Any) -> int:
    requests: int = fake.stats()["requests"]
    return requests


async def _round(settings: Settings, batch: list[tuple[str, str, dict[str, Any]]]) -> list[Any]:
    """Send requests, wait for their events; the events in the order sent."""
    await produce(settings, [request(rid, text, **extra) for rid, text, extra in batch])
    events = await wait_for_events(settings, {rid for rid, _, _ in batch}, timeout=120)
    return [events[rid][-1].json() for rid, _, _ in batch]


async def test_cache_twice_edit_single_flight_and_corrupt_object(
    services: Services, tmp_path: Path
) -> None:
    async with running_fake(latency_ms=20) as fake:
        settings = _cached(
            unique_settings(services, "cache", config_path=_config(tmp_path, fake.url))
        )
        async with running(settings) as app:
            same = "Again and again, the same. " * 6
            first, twin = await _round(
                settings, [("a", CHAPTER, {"seed": 1}), ("same", same, {"seed": 1})]
            )
            assert first["usage"]["backend_calls"] == first["chunks"] == _calls(fake) - 1
            # Six identical chunks of one request, in flight together: one call (single-flight).
            assert twin["usage"]["backend_calls"] == 1
            assert twin["usage"]["cache_hits"] == twin["chunks"] - 1

            before = _calls(fake)
            (second,) = await _round(settings, [("b", CHAPTER, {"seed": 1})])
            assert _calls(fake) == before
            assert second["usage"] == {
                **first["usage"],
                "backend_calls": 0,
                "backend_ms": 0,
                "cache_hits": first["chunks"],
            }
            audio = await get_objects(services, [first["audio"]["uri"], second["audio"]["uri"]])
            assert audio[first["audio"]["uri"]][0] == audio[second["audio"]["uri"]][0]

            edited = CHAPTER.replace("number 7 of", "number seven of")
            (third,) = await _round(settings, [("c", edited, {"seed": 1})])
            assert third["usage"]["backend_calls"] == 1 == _calls(fake) - before
            changed = await _round(
                settings,
                [
                    ("d", CHAPTER, {"seed": 2}),
                    ("d2", CHAPTER, {"seed": 1, "params": {"speed": 1.25}}),
                    ("d3", CHAPTER, {"seed": 1, "voice": {"preset": "nova"}}),
                    ("d4", CHAPTER, {"seed": 1, "cache": "bypass"}),
                ],
            )
            assert [e["usage"]["cache_hits"] for e in changed] == [0, 0, 0, 0]

            # A truncated object (integrity metadata kept) is ignored and rewritten: the
            # request's bundle, then (read one by one instead) its first chunk.
            async with S3CacheStore(
                settings.store.bucket, settings.cache.prefix, endpoint_url=services.s3_endpoint_url
            ) as store:
                conf = settings.backends.backends["tts"]
                texts = split_sentences(CHAPTER, conf.text_limit, shortest=SHORTEST_SENTENCE)
                keys = [
                    object_name(settings.cache.prefix, chunk_key(conf, Utterance(t, seed=1)))
                    for t in texts
                ]
                victims = [keys[0], bundle_name(settings.cache.prefix, keys)]
                kept = {}
                for victim in victims:
                    kept[victim] = data, meta = await store.read(victim) or (b"", {})
                    await store.write(victim, data[: len(data) // 2], meta)
                before = _calls(fake)
                (fourth,) = await _round(settings, [("e", CHAPTER, {"seed": 1})])
                assert fourth["usage"]["backend_calls"] == 1 == _calls(fake) - before
                assert (await store.read(keys[0]) or (b"", {}))[0] == kept[keys[0]][0]
                # The bundle held the edited chapter ("c"); now it holds this one's chunks.
                bundle = (await store.read(victims[1]) or (b"", {}))[0]
                assert list(unpack(bundle)) == keys
            text = app.metrics.render().decode()
            assert 'voxline_cache_total{op="lookup",result="corrupt"} 1.0' in text
            assert 'voxline_cache_total{op="bundle",result="corrupt"} 1.0' in text


async def test_unseeded_requests_to_a_sampling_backend_are_not_cached(
    services: Services, tmp_path: Path
) -> None:
    async with running_fake() as fake:
        settings = _cached(
            unique_settings(services, "unseeded", config_path=_config(tmp_path, fake.url))
        )
        async with running(settings):
            await _round(settings, [("a", "Hello there.", {})])
            (again,) = await _round(settings, [("b", "Hello there.", {})])
            assert again["usage"]["backend_calls"] == 1
            assert _calls(fake) == 2


async def test_a_store_that_is_down_is_a_miss_not_a_hold() -> None:
    metrics = Metrics()
    settings = CacheSettings(enabled=True, lookup_timeout_s=1.0)
    made = 0

    async def make() -> Any:
        nonlocal made
        made += 1
        return tone(50)

    # Nothing listens on port 9 of 127.0.0.1: every call is refused.
    async with S3CacheStore("voxline-audio", "c/", endpoint_url="http://127.0.0.1:9") as store:
        cache = ChunkCache(store, settings, metrics)
        audio, hit = await asyncio.wait_for(cache.through("c/x.wav", "use", make), 30)
    assert (audio.duration_ms, hit, made) == (50, False, 1)
    text = metrics.render().decode()
    assert 'voxline_cache_total{op="lookup",result="error"} 1.0' in text
    assert 'voxline_cache_total{op="write",result="failed"} 1.0' in text


def _metric_by(text: str, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                key = sample.labels[label]
                out[key] = out.get(key, 0.0) + sample.value
    return out


async def test_usage_adds_up_to_the_fake_and_the_cli_matches_the_metrics(
    services: Services, tmp_path: Path
) -> None:
    async with running_fake(latency_ms=10, fail_first_n=3) as fake:
        settings = unique_settings(services, "usage", config_path=_config(tmp_path, fake.url))
        async with running(settings) as app:
            batch: list[tuple[str, str, dict[str, Any]]] = [
                (f"r{i}", CHAPTER[: 40 + 30 * i], {"metadata": {"tenant": f"t{i % 3}"}})
                for i in range(9)
            ]
            batch.append(("bad", "x", {"params": {"speed": 9}}))  # the fake answers 400
            events = await _round(settings, batch)
            metrics = app.metrics.render().decode()
    assert sum(e["usage"]["backend_calls"] for e in events) == _calls(fake)
    assert sum(e["attempts"] for e in events) == _calls(fake)
    assert events[-1]["status"] == "failed"
    assert events[-1]["usage"]["backend_calls"] >= 1

    kafka = settings.kafka
    args = ["usage", "--json", "--bootstrap-servers", kafka.bootstrap_servers]
    args += ["--completion-topic", kafka.completion_topic]
    for by, label in (("tenant", "tenant"), ("backend", "backend")):
        result = await asyncio.to_thread(CliRunner().invoke, main, [*args, "--by", by])
        assert result.exit_code == 0, result.output
        rows = json.loads(result.output)["rows"]
        chars = _metric_by(metrics, "voxline_usage_characters_total", label)
        assert {k: float(v["characters"]) for k, v in rows.items()} == chars
        audio = _metric_by(metrics, "voxline_usage_audio_seconds_total", label)
        assert {k: v["audio_ms"] / 1000 for k, v in rows.items()} == pytest.approx(audio)
    assert sum(r["backend_calls"] for r in rows.values()) == _calls(fake)


async def test_cache_stats_and_prune_on_the_store(services: Services) -> None:
    prefix = f"tests/cache-ops-{uuid.uuid4().hex[:8]}/"
    data = tone(80).data
    async with S3CacheStore(
        services.bucket, prefix, endpoint_url=services.s3_endpoint_url
    ) as store:
        for i in range(5):
            await store.write(f"{prefix}{i:02d}/{i}.wav", data, {"sha256": "x"})
    base = ["--s3-endpoint-url", services.s3_endpoint_url, "--s3-bucket", services.bucket]
    base += ["--cache-prefix", prefix]

    def cli(*args: str) -> str:
        result = CliRunner().invoke(main, ["cache", *args, *base])
        assert result.exit_code == 0, result.output
        return result.output

    stats = json.loads(await asyncio.to_thread(cli, "stats", "--json", "--metrics-url", ""))
    assert (stats["objects"], stats["bytes"], stats["hit_ratio"]) == (5, 5 * len(data), None)
    bound = str(2 * len(data))
    out = await asyncio.to_thread(cli, "prune", "--cache-max-bytes", bound, "--dry-run")
    assert out.startswith("would delete 3 cached chunk(s)")
    out = await asyncio.to_thread(cli, "prune", "--cache-max-bytes", bound)
    assert out.startswith("deleted 3 cached chunk(s)")
    stats = json.loads(await asyncio.to_thread(cli, "stats", "--json", "--metrics-url", ""))
    assert stats["objects"] == 2
    assert (await asyncio.to_thread(cli, "prune", "--older-than", "30d")).startswith("deleted 0")
    assert (await asyncio.to_thread(cli, "prune", "--older-than", "0s")).startswith("deleted 2")


async def test_a_replayed_dead_letter_redoes_only_its_failed_chunk(
    services: Services, tmp_path: Path
) -> None:
    """A long chapter whose last chunk the backend refuses once is dead-lettered; replayed
    with ``voxline dlq replay``'s client, it costs one backend call."""
    settings = _cached(
        unique_settings(services, "replay", config_path=_config(tmp_path, "http://127.0.0.1:9"))
    )
    text = f"{CHAPTER} This last one is REFUSED."
    chunks = len(split_sentences(text, 60, shortest=SHORTEST_SENTENCE))
    cache = S3CacheStore(
        settings.store.bucket, settings.cache.prefix, endpoint_url=services.s3_endpoint_url
    )

    async def cached() -> bool:
        return len([o async for o in cache.objects()]) == chunks - 1

    async def refuse_once(utterance: Utterance) -> None:
        if "REFUSED" in utterance.text and not refused:
            refused.append(utterance.text)
            # Refused once every other chunk is made and kept (whatever the scheduling).
            await wait_for(cached, timeout=30, what="the other chunks in the cache", every=0.1)
            raise Permanent("HTTP 422 refused", stage=Stage.SYNTHESIZE, http_status=422)

    refused: list[str] = []
    backend = ScriptedBackend("tts", hook=refuse_once)
    async with cache, running(settings, backends={"tts": backend}):
        (failed,) = await _round(settings, [("long", text, {"seed": 1})])
        assert failed["status"] == "failed"
        assert failed["usage"]["backend_calls"] == len(backend.calls) == chunks
        letters = await read_dead_letters(settings.kafka)
        assert await replay(settings.kafka, letters) == 1

        async def both() -> bool:
            return len((await events_by_id(settings)).get("long", [])) == 2

        await wait_for(both, timeout=60, what="the replayed record's event")
        replayed = (await events_by_id(settings))["long"][-1].json()
    assert replayed["status"] == "succeeded"
    assert replayed["usage"]["backend_calls"] == 1 == len(backend.calls) - chunks
    assert replayed["usage"]["cache_hits"] == replayed["chunks"] - 1 == chunks - 1
