"""A producer's trace on the real broker and store: its trace id comes back on the completion
event and on the dead letter, the processor's spans hang under the producer's span, and with
the standard OTEL_* variables the spans reach an OTLP/HTTP collector."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import threading
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaProducer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from processor import tracing
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


async def produce_traced(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    headers = [("traceparent", f"00-{TRACE_ID}-{PRODUCER_SPAN}-01".encode())]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()


async def test_a_producers_trace_id_comes_back_on_the_completion_event(
    services: Services, spans: InMemorySpanExporter
) -> None:
    settings = unique_settings(services, "trace")
    async with running(settings):
        await produce_traced(
            settings.kafka.bootstrap_servers,
            settings.kafka.request_topic,
            [request("traced-ok", "Follow me."), (b"traced-bad", b"not json")],
        )
        events = await wait_for_events(settings, {"traced-ok", "traced-bad"}, timeout=120)
    ok, bad = events["traced-ok"][0], events["traced-bad"][0]
    assert ok.json()["status"] == "succeeded"
    publishes = {
        format(s.context.span_id, "016x")
        for s in spans.get_finished_spans()
        if s.name == "voxline.publish" and s.context is not None
    }
    for event in (ok, bad):
        version, trace_id, span_id, _flags = event.headers["traceparent"].split("-")
        assert (version, trace_id) == ("00", TRACE_ID), "the producer's trace continues"
        assert span_id in publishes, "the event's parent is our publish span"
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


@contextlib.contextmanager
def otlp_collector() -> Iterator[tuple[str, list[ExportTraceServiceRequest]]]:
    """An OTLP/HTTP trace receiver on 127.0.0.1 (a thread of its own: the SDK exports from its
    thread and flushes on shutdown while the event loop waits); yields its URL and what it got."""
    received: list[ExportTraceServiceRequest] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            message = ExportTraceServiceRequest()
            message.ParseFromString(body)
            received.append(message)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


async def test_the_otel_variables_send_spans_to_an_otlp_collector(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = unique_settings(services, "otlp")
    with otlp_collector() as (url, received):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "voxline-under-test")
        with tracing.configured() as on:
            assert on
            async with running(settings):
                await produce_traced(
                    settings.kafka.bootstrap_servers,
                    settings.kafka.request_topic,
                    [request("otlp-ok", "Exported.")],
                )
                await wait_for_events(settings, {"otlp-ok"}, timeout=120)
        assert not tracing.enabled()
    # configured() flushed the batch on the way out: the spans arrived before it returned.
    spans = [
        (resource.resource, span)
        for message in received
        for resource in message.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    names = {span.name for _, span in spans if span.trace_id.hex() == TRACE_ID}
    assert {f"process {settings.kafka.request_topic}", "voxline.backend_call"} <= names
    services_seen = {
        a.value.string_value for r, _ in spans for a in r.attributes if a.key == "service.name"
    }
    assert services_seen == {"voxline-under-test"}
