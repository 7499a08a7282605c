"""The core promise on the real broker and store: every record ends as audio plus a
succeeded event, or a dead letter plus a failed event."""

from __future__ import annotations

import hashlib
import io
import json
import time
import wave

import pytest

from tests.integration import harness
from tests.integration.services import Services

pytestmark = pytest.mark.integration

LINES = [
    ("en", "The quick brown fox jumps over the lazy dog."),
    ("zh", "今天天气很好。"),
    ("ja", "こんにちは、世界。"),
    ("en", "Voxline turns streams of requests into audio."),
]


async def test_200_requests_become_200_valid_wavs(
    services: Services, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = harness.unique_settings(services, "bulk", max_in_flight=8)
    ids = [f"bulk-{i:03d}" for i in range(200)]
    async with harness.running(settings):
        t0 = time.monotonic()
        await harness.produce(
            settings,
            [
                harness.request(
                    rid, LINES[i % 4][1], language=LINES[i % 4][0], metadata={"n": str(i)}
                )
                for i, rid in enumerate(ids)
            ],
        )
        events = await harness.wait_for_events(settings, set(ids), timeout=300)
        elapsed = time.monotonic() - t0
    with capsys.disabled():
        print(
            f"\n[figure] 200 requests end to end in {elapsed:.1f} s: "
            f"{200 / elapsed:.1f} requests/s (espeak-ng, window 8)"
        )
    assert set(events) == set(ids)
    objects = await harness.get_objects(
        services, [events[r][0].json()["audio"]["uri"] for r in ids]
    )
    for i, rid in enumerate(ids):
        (event,) = events[rid]
        body = event.json()
        assert body["status"] == "succeeded", body
        assert event.headers["ce_type"] == "io.voxline.synthesis.succeeded.v1"
        assert event.headers["ce_subject"] == rid
        assert event.key == rid.encode()
        assert body["metadata"] == {"n": str(i)}
        data, head = objects[body["audio"]["uri"]]
        assert hashlib.sha256(data).hexdigest() == body["audio"]["sha256"]
        assert head["Metadata"]["sha256"] == body["audio"]["sha256"]
        assert head["Metadata"]["request_id"] == rid
        assert head["ContentType"] == "audio/wav"
        assert body["audio"]["uri"].endswith(f"{settings.store.prefix}{rid}.wav")
        with wave.open(io.BytesIO(data)) as wav:
            assert wav.getnframes() > 0
            assert wav.getframerate() == body["audio"]["sample_rate"]
            duration_ms = round(wav.getnframes() * 1000 / wav.getframerate())
        assert duration_ms > 0
        assert abs(duration_ms - body["audio"]["duration_ms"]) <= 1
    assert await harness.read_topic(settings.kafka, settings.kafka.dlq_topic) == []


async def test_malformed_records_are_dead_lettered_and_the_rest_succeed(
    services: Services,
) -> None:
    settings = harness.unique_settings(services, "mixed", max_in_flight=4, max_text_chars=500)
    bad: dict[str, tuple[bytes | None, bytes | None, str, str]] = {
        # request_id (or the key it is known by): key, value, expected stage, field in message
        "bad-json": (b"bad-json", b"{not json", "decode", ""),
        "bad-array": (b"bad-array", b"[1, 2, 3]", "decode", ""),
        "bad-types": (
            b"bad-types",
            json.dumps({"request_id": "bad-types", "text": 42}).encode(),
            "validate",
            "text",
        ),
        "bad-empty": (
            b"bad-empty",
            json.dumps({"request_id": "bad-empty", "text": ""}).encode(),
            "validate",
            "text",
        ),
        "bad-oversize": (
            b"bad-oversize",
            json.dumps({"request_id": "bad-oversize", "text": "a" * 600}).encode(),
            "validate",
            "text",
        ),
        "bad-format": (
            b"bad-format",
            json.dumps({"request_id": "bad-format", "text": "hi", "format": "aiff"}).encode(),
            "validate",
            "format",
        ),
        "bad-utf8": (b"bad-utf8", b"\xff\xfe\x00garbage", "decode", ""),
    }
    good = [f"good-{i}" for i in range(12)]
    records: list[tuple[bytes | None, bytes | None]] = []
    for i, rid in enumerate(good):
        records.append(harness.request(rid, LINES[i % 4][1], language=LINES[i % 4][0]))
        if i < len(bad):
            key, value, _, _ = list(bad.values())[i]
            records.append((key, value))
    async with harness.running(settings) as app:
        await harness.produce(settings, records)
        events = await harness.wait_for_events(settings, set(good) | set(bad), timeout=120)
        dead = await harness.read_topic(settings.kafka, settings.kafka.dlq_topic)
        assert app.in_flight >= 0  # still the same live app; `running` checks the task
    for rid in good:
        assert [e.json()["status"] for e in events[rid]] == ["succeeded"]
    by_key = {d.key: d for d in dead}
    assert set(by_key) == {v[0] for v in bad.values()}
    for rid, (key, value, stage, field) in bad.items():
        (event,) = events[rid]
        body = event.json()
        assert body["status"] == "failed"
        assert body["reason"] == "invalid_input"
        assert event.headers["ce_type"] == "io.voxline.synthesis.failed.v1"
        letter = by_key[key]
        assert letter.value == value, "dead letter must carry the original bytes"
        h = letter.headers
        assert h["dlq.reason"] == "invalid_input"
        assert h["dlq.stage"] == stage
        assert h["dlq.original.topic"] == settings.kafka.request_topic
        assert h["dlq.consumer.group"] == settings.kafka.group_id
        assert h["dlq.attempts"] == "0"
        assert h["dlq.processor"].startswith("voxline@")
        for name in (
            "dlq.original.partition",
            "dlq.original.offset",
            "dlq.original.timestamp",
            "dlq.error.type",
            "dlq.error.message",
            "dlq.first_failed_at",
            "dlq.failed_at",
            "dlq.replay_count",
        ):
            assert h.get(name), f"{name} missing on {rid}"
        assert len(h["dlq.error.message"].encode()) <= 1024
        if field:
            assert field in h["dlq.error.message"], h["dlq.error.message"]
        assert body["dead_letter"] == {
            "topic": settings.kafka.dlq_topic,
            "partition": letter.partition,
            "offset": letter.offset,
        }


async def test_redelivered_event_keeps_its_id(services: Services) -> None:
    """The same request processed twice (as after a crash) overwrites the same key and
    carries the same CloudEvents id."""
    settings = harness.unique_settings(services, "dup", max_in_flight=2)
    events: dict[str, list[harness.Msg]] = {}

    async def twice() -> bool:
        nonlocal events
        events = await harness.events_by_id(settings)
        return len(events.get("dup-1", [])) >= 2

    async with harness.running(settings):
        await harness.produce(settings, [harness.request("dup-1", "hello")] * 2)
        await harness.wait_for(twice, timeout=60, what="two events for dup-1")
    first, second = events["dup-1"][:2]
    assert first.headers["ce_id"] == second.headers["ce_id"]
    assert first.json()["audio"]["uri"] == second.json()["audio"]["uri"]
