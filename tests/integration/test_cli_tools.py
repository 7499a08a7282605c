"""The operator verbs end to end on the real broker and store, without a processor: ``submit``
sends, ``dlq list`` and ``dlq replay`` read and resend dead letters, ``reconcile`` accounts for
outcomes the test writes itself. Each runs through the ``voxline`` group as an operator would,
configured by environment variables only."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from click.testing import CliRunner, Result

from processor.kafka.topics import ensure_topics
from processor.ops.cli import main
from processor.settings import Settings
from processor.store import S3Store
from tests.integration.harness import read_topic, unique_settings
from tests.integration.services import Services

pytestmark = pytest.mark.integration

Headers = list[tuple[str, bytes]]


def _env(settings: Settings) -> dict[str, str | None]:
    k, s = settings.kafka, settings.store
    return {
        "KAFKA_BOOTSTRAP_SERVERS": k.bootstrap_servers,
        "VOXLINE_REQUEST_TOPIC": k.request_topic,
        "VOXLINE_COMPLETION_TOPIC": k.completion_topic,
        "VOXLINE_DLQ_TOPIC": k.dlq_topic,
        "S3_ENDPOINT_URL": s.endpoint_url,
        "S3_BUCKET": s.bucket,
        "S3_PREFIX": s.prefix,
        "AWS_REGION": s.region,
    }


def voxline(settings: Settings, *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=_env(settings), catch_exceptions=False)


def fresh(services: Services, name: str) -> Settings:
    settings = unique_settings(services, name)
    k = settings.kafka
    topics = [k.request_topic, k.completion_topic, k.dlq_topic]
    asyncio.run(ensure_topics(k, topics, k.create_topics_partitions))
    return settings


async def _send(
    settings: Settings, topic: str, key: bytes, value: bytes, headers: Headers | None = None
) -> tuple[int, int]:
    """One record, acknowledged; its partition and offset."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, value=value, key=key, headers=headers or [])
    finally:
        await producer.stop()
    return meta.partition, meta.offset


def send(settings: Settings, topic: str, key: str, body: object, **headers: str) -> tuple[int, int]:
    raw = [(name.replace("_", "."), value.encode()) for name, value in headers.items()]
    return asyncio.run(_send(settings, topic, key.encode(), json.dumps(body).encode(), raw))


def test_submit_sends_json_lines_and_plain_text(services: Services, tmp_path: Path) -> None:
    settings = fresh(services, "cli-submit")
    lines = tmp_path / "requests.txt"
    lines.write_text('{"request_id": "a-1", "text": "One."}\n\nTwo, as plain text.\n')
    result = voxline(settings, "submit", str(lines), "--id-prefix", "plain")
    assert result.exit_code == 0, result.output
    sent = asyncio.run(read_topic(settings.kafka, settings.kafka.request_topic))
    assert sorted((m.key, m.json()["text"]) for m in sent) == [
        (b"a-1", "One."),
        (b"plain-000002", "Two, as plain text."),
    ]


def test_dlq_list_filters_and_replay_resends(services: Services) -> None:
    settings = fresh(services, "cli-dlq")
    dlq, requests = settings.kafka.dlq_topic, settings.kafka.request_topic
    for rid, reason in (("d-1", "permanent"), ("d-2", "invalid_input")):
        send(
            settings,
            dlq,
            rid,
            {"request_id": rid, "text": "x"},
            dlq_original_topic=requests,
            dlq_reason=reason,
            dlq_error_type="http_422",
            dlq_failed_at="2026-01-02T03:04:05+00:00",
        )

    listed = voxline(settings, "dlq", "list", "--json", "--reason", "permanent")
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.output.splitlines()]
    assert [(r["request_id"], r["headers"]["dlq.reason"]) for r in rows] == [("d-1", "permanent")]
    assert "would replay: 2" in voxline(settings, "dlq", "replay", "--dry-run").output
    assert (
        "would replay: 0"
        in voxline(settings, "dlq", "replay", "--dry-run", "--since", "2026-01-03").output
    )

    replayed = voxline(settings, "dlq", "replay", "--request-id", "d-2")
    assert replayed.exit_code == 0, replayed.output
    resent = asyncio.run(read_topic(settings.kafka, requests))
    assert [(m.key, m.headers) for m in resent] == [(b"d-2", {"dlq.replay_count": "1"})]


def test_reconcile_finds_every_outcome_then_a_lost_request(services: Services) -> None:
    settings = fresh(services, "cli-reconcile")
    k, store = settings.kafka, settings.store
    audio = b"RIFF not really a wav"
    sha = hashlib.sha256(audio).hexdigest()
    key = f"{store.prefix}ok-1.wav"

    async def upload() -> str:
        async with S3Store(store.bucket, endpoint_url=store.endpoint_url) as s3:
            return await s3.put(key, audio, "audio/wav", {"sha256": sha})

    uri = asyncio.run(upload())
    send(settings, k.request_topic, "ok-1", {"request_id": "ok-1", "text": "a"})
    partition, offset = send(settings, k.request_topic, "bad-1", {"request_id": "bad-1"})
    letter = send(
        settings,
        k.dlq_topic,
        "bad-1",
        {"request_id": "bad-1"},
        dlq_original_topic=k.request_topic,
        dlq_original_partition=str(partition),
        dlq_original_offset=str(offset),
        dlq_reason="invalid_input",
    )
    audio_facts = {"uri": uri, "bytes": len(audio), "sha256": sha}
    send(
        settings,
        k.completion_topic,
        "ok-1",
        {"request_id": "ok-1", "status": "succeeded", "audio": audio_facts},
    )
    dead_letter = {"topic": k.dlq_topic, "partition": letter[0], "offset": letter[1]}
    send(
        settings,
        k.completion_topic,
        "bad-1",
        {
            "request_id": "bad-1",
            "status": "failed",
            "reason": "invalid_input",
            "dead_letter": dead_letter,
        },
    )

    clean = voxline(settings, "reconcile", "--json", "--verify-content")
    report = json.loads(clean.output)
    assert clean.exit_code == 0, report
    assert (report["succeeded"], report["failed"], report["objects_downloaded"]) == (1, 1, 1)

    send(settings, k.request_topic, "lost-1", {"request_id": "lost-1", "text": "b"})
    lost = voxline(settings, "reconcile")
    assert lost.exit_code == 1
    assert "lost-1" in lost.output
