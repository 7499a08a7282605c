"""A producer's trace on the real broker and store: its trace id comes back on the completion
event and on the dead letter, and the processor's spans hang under the producer's span."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaProducer
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.integration.harness import read_topic, request, running, unique_settings, wait_for_events
from tests.integration.services import Services
from tests.spans import recorded_spans

pytestmark = pytest.mark.integration

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PRODUCER_SPAN = "b7ad6b7169203331"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recorded_spans() as exporter:
        yield exporter


async def test_a_producers_trace_id_comes_back_on_the_completion_event(
    services: Services, spans: InMemorySpanExporter
) -> None:
    settings = unique_settings(services, "trace")
    headers = [("traceparent", f"00-{TRACE_ID}-{PRODUCER_SPAN}-01".encode())]
    async with running(settings):
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
        await producer.start()
        try:
            key, value = request("traced-ok", "Follow me.")
            topic = settings.kafka.request_topic
            await producer.send_and_wait(topic, value, key=key, headers=headers)
            await producer.send_and_wait(topic, b"not json", key=b"traced-bad", headers=headers)
        finally:
            await producer.stop()
        events = await wait_for_events(settings, {"traced-ok", "traced-bad"}, timeout=120)
    ok, bad = events["traced-ok"][0], events["traced-bad"][0]
    assert ok.json()["status"] == "succeeded"
    for event in (ok, bad):
        version, trace_id, span_id, _flags = event.headers["traceparent"].split("-")
        assert (version, trace_id) == ("00", TRACE_ID), "the producer's trace continues"
        assert span_id != PRODUCER_SPAN, "the parent is our publish span, not the producer's"
        assert event.headers["ce_traceparent"] == event.headers["traceparent"]
    (letter,) = await read_topic(settings.kafka, settings.kafka.dlq_topic)
    assert letter.headers["traceparent"].split("-")[1] == TRACE_ID

    records = [s for s in spans.get_finished_spans() if s.name.startswith("process ")]
    assert len(records) == 2
    for span in records:
        assert span.parent is not None
        assert format(span.parent.span_id, "016x") == PRODUCER_SPAN
    names = {s.name for s in spans.get_finished_spans()}
    assert {"voxline.backend_call", "voxline.store", "voxline.publish"} <= names
