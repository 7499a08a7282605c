"""CloudEvents in, end to end on the real broker and store: requests the official CloudEvents
SDK for Python writes in binary and in structured mode become audio and a succeeded event
that points back at the request's event; a malformed envelope is dead-lettered as
invalid_input naming the attribute."""

from __future__ import annotations

import json

import pytest
from aiokafka import AIOKafkaProducer
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.v1.event import CloudEvent

from processor.settings import Settings
from tests.integration import harness
from tests.integration.services import Services

pytestmark = pytest.mark.integration

SOURCE = "/tests/cloudevents"
TYPE = "io.example.tts.requested"


def event(rid: str, text: str) -> CloudEvent:
    attributes = {"id": f"evt-{rid}", "source": SOURCE, "type": TYPE}
    return CloudEvent(attributes=attributes, data={"request_id": rid, "text": text})


async def send(settings: Settings, messages: list[tuple[bytes, ce_kafka.KafkaMessage]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for key, msg in messages:
            headers = list(msg.headers.items())
            await producer.send_and_wait(
                settings.kafka.request_topic, msg.value, key=key, headers=headers
            )
    finally:
        await producer.stop()


async def test_binary_and_structured_cloudevents_succeed_and_bad_envelopes_dead_letter(
    services: Services,
) -> None:
    settings = harness.unique_settings(services, "ce-in")
    binary = ce_kafka.to_binary_event(event("ce-binary", "Sent in binary mode."))
    structured = ce_kafka.to_structured_event(event("ce-structured", "Sent in structured mode."))
    no_source = ce_kafka.KafkaMessage(
        headers={k: v for k, v in binary.headers.items() if k != "ce_source"},
        key=None,
        value=json.dumps({"request_id": "ce-no-source", "text": "hi"}).encode(),
    )
    async with harness.running(settings):
        await send(
            settings,
            [(b"ce-binary", binary), (b"ce-structured", structured), (b"ce-no-source", no_source)],
        )
        ids = {"ce-binary", "ce-structured", "ce-no-source"}
        events = await harness.wait_for_events(settings, ids, timeout=120)
        dead = await harness.read_topic(settings.kafka, settings.kafka.dlq_topic)

    for rid in ("ce-binary", "ce-structured"):
        (done,) = events[rid]
        body = done.json()
        assert body["status"] == "succeeded", body
        assert done.headers["ce_causationid"] == f"evt-{rid}"
        assert done.headers["ce_causationsource"] == SOURCE
        assert done.headers["ce_causationtype"] == TYPE
        assert done.headers["ce_subject"] == rid
        objects = await harness.get_objects(services, [body["audio"]["uri"]])
        data, _ = objects[body["audio"]["uri"]]
        assert data[:4] == b"RIFF"
        assert len(data) == body["audio"]["bytes"]

    (failed,) = events["ce-no-source"]
    assert failed.json()["reason"] == "invalid_input"
    assert "ce_causationid" not in failed.headers  # the envelope was not a CloudEvent
    (letter,) = dead
    assert letter.key == b"ce-no-source"
    assert letter.value == no_source.value, "the dead letter carries the original bytes"
    assert letter.headers["dlq.reason"] == "invalid_input"
    assert letter.headers["dlq.error.type"] == "cloudevent"
    assert letter.headers["dlq.error.message"] == (
        "CloudEvent header ce_source: missing (required by CloudEvents 1.0)"
    )
