"""Tracing on the pipeline's in-memory doubles, with the SDK's in-memory exporter: the span
tree of a record, its parent taken from the producer's headers, error status on failures,
the context injected into outgoing headers, and nothing at all while tracing is off."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from processor import tracing
from processor.breaker import Breaker, BreakerConfig
from processor.config import BackendConfig
from processor.errors import Permanent, Stage, Systemic, Transient
from processor.gate import Gate
from processor.kafka.records import Record
from processor.limiter import StaticLimit
from processor.pipeline import Pipeline
from processor.retry import Policy
from processor.routes import Route
from processor.settings import KafkaSettings, RetrySettings, Settings
from processor.testing import MemorySink, MemoryStore, ScriptedBackend, Step
from tests.spans import recorded_spans

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
POLICY = Policy(attempts=3, budget_s=1.0, backoff_s=(0.001, 0.002), hold_s=(0.01, 30.0))
S = Stage.SYNTHESIZE


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recorded_spans() as exporter:
        yield exporter


def pipeline(
    steps: list[Step] | None = None, text_limit: int = 1000, policy: Policy = POLICY
) -> tuple[Pipeline, MemorySink]:
    backend = ScriptedBackend("b", steps)
    gate = Gate("b", StaticLimit(4), Breaker(BreakerConfig(open_for_s=0.01, max_open_for_s=0.02)))
    conf = BackendConfig(name="b", kind="espeak", text_limit=text_limit)
    route = Route(backend, gate, conf, policy)
    sink = MemorySink()
    settings = Settings(
        kafka=KafkaSettings(completion_topic="done", dlq_topic="dlq"),
        retry=RetrySettings(wait_initial_s=0.001, wait_max_s=0.002, systemic_wait_max_s=0.01),
    )
    return Pipeline(settings, {"b": route}, "b", MemoryStore(), sink), sink


def record(value: bytes | None = None, headers: Any = (), text: str = "Hello there.") -> Record:
    body = value if value is not None else json.dumps({"request_id": "r1", "text": text}).encode()
    return Record("requests", 2, 7, b"r1", body, int(time.time() * 1000), list(headers))


def by_name(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        out.setdefault(span.name, []).append(span)
    return out


async def test_a_record_is_one_span_with_a_child_for_each_stage(
    spans: InMemorySpanExporter,
) -> None:
    p, _ = pipeline()
    assert await p.handle(record(headers=[("traceparent", TRACEPARENT.encode())])) == "succeeded"
    named = by_name(spans)
    (root,) = named.pop("process requests")
    assert root.kind is SpanKind.CONSUMER
    assert root.context is not None
    assert root.parent is not None
    assert format(root.context.trace_id, "032x") == TRACE_ID, "the producer's trace"
    assert format(root.parent.span_id, "016x") == PARENT_ID, "a child of the producer's span"
    assert root.attributes is not None
    assert root.attributes["voxline.outcome"] == "succeeded"
    assert root.attributes["messaging.destination.partition.id"] == "2"
    assert root.attributes["messaging.kafka.offset"] == 7
    assert sorted(named) == [
        "voxline.backend_call",
        "voxline.publish",
        "voxline.store",
        "voxline.validate",
    ]
    for (child,) in named.values():
        assert child.parent is not None
        assert child.parent.span_id == root.context.span_id
        assert child.status.status_code is StatusCode.UNSET
    (call,) = named["voxline.backend_call"]
    assert dict(call.attributes or {}) == {
        "voxline.backend": "b",
        "voxline.attempt": 1,
        "voxline.window": 4,
        "voxline.chunk.index": 0,
        "voxline.text.length": len("Hello there."),
    }
    assert (named["voxline.publish"][0].kind, call.kind) == (SpanKind.PRODUCER, SpanKind.CLIENT)


async def test_each_chunk_and_each_attempt_is_a_backend_call_span(
    spans: InMemorySpanExporter,
) -> None:
    text = "First sentence here. Second sentence here. Third sentence here."
    error = Transient("HTTP 503", stage=S, http_status=503, error_type="http_503")
    p, _ = pipeline([error], text_limit=25)
    assert await p.handle(record(text=text)) == "succeeded"
    calls = by_name(spans)["voxline.backend_call"]
    assert len(calls) == 4, "three chunks, one of them tried twice"
    attrs = [dict(c.attributes or {}) for c in calls]
    assert sorted({int(str(a["voxline.chunk.index"])) for a in attrs}) == [0, 1, 2]
    assert sorted(int(str(a["voxline.attempt"])) for a in attrs) == [1, 2, 3, 4]
    failed = [c for c in calls if c.status.status_code is StatusCode.ERROR]
    assert len(failed) == 1
    (root,) = by_name(spans)["process requests"]
    assert root.status.status_code is StatusCode.UNSET, "a retried call does not fail the record"
    (wait,) = root.events
    assert wait.name == "voxline.wait", "the wait before the retry is an event on the record"
    assert (wait.attributes or {})["error.type"] == "http_503"


async def test_a_dead_lettered_record_has_error_status_and_says_why(
    spans: InMemorySpanExporter,
) -> None:
    p, sink = pipeline([Permanent("HTTP 422", stage=S, http_status=422)])
    assert await p.handle(record()) == "failed"
    named = by_name(spans)
    (root,) = named["process requests"]
    assert root.status.status_code is StatusCode.ERROR
    assert root.status.description is not None
    assert "permanent" in root.status.description
    assert root.attributes is not None
    assert root.attributes["voxline.dlq.reason"] == "permanent"
    assert root.attributes["voxline.outcome"] == "failed"
    (call,) = named["voxline.backend_call"]
    assert call.status.status_code is StatusCode.ERROR
    assert "voxline.store" not in named
    assert len(named["voxline.publish"]) == 1, "dead letter and failed event"
    assert [o.topic for o in sink.sent] == ["dlq", "done"]


async def test_a_parked_record_says_so_and_is_no_error(spans: InMemorySpanExporter) -> None:
    down: list[Step] = [Systemic("HTTP 503", stage=S, http_status=503)] * 50
    p, sink = pipeline(down, policy=dataclasses.replace(POLICY, park_after_s=0.02))
    assert await p.handle(record()) == "parked"
    (root,) = by_name(spans)["process requests"]
    assert root.attributes is not None
    assert root.attributes["voxline.outcome"] == "parked"
    assert root.status.status_code is StatusCode.UNSET
    assert [o.topic for o in sink.sent] == ["tts.requests.retry"]


async def test_an_invalid_record_fails_its_validation_span(spans: InMemorySpanExporter) -> None:
    p, _ = pipeline()
    assert await p.handle(record(value=b"not json")) == "failed"
    named = by_name(spans)
    (validate,) = named["voxline.validate"]
    assert validate.status.status_code is StatusCode.ERROR
    (root,) = named["process requests"]
    assert root.attributes is not None
    assert root.attributes["voxline.dlq.reason"] == "invalid_input"
    assert "voxline.backend_call" not in named


@pytest.mark.parametrize(
    ("headers", "value"),
    [
        ([("ce_traceparent", TRACEPARENT.encode())], b"{}"),
        (
            [("content-type", b"application/cloudevents+json; charset=utf-8")],
            json.dumps({"specversion": "1.0", "traceparent": TRACEPARENT}).encode(),
        ),
    ],
    ids=["binary-mode", "structured-mode"],
)
def test_the_cloudevents_extension_carries_the_parent(headers: Any, value: bytes) -> None:
    from opentelemetry import trace

    parent = trace.get_current_span(tracing.extract(headers, value)).get_span_context()
    assert format(parent.trace_id, "032x") == TRACE_ID
    assert format(parent.span_id, "016x") == PARENT_ID


def test_the_w3c_header_wins_over_the_extension() -> None:
    from opentelemetry import trace

    other = f"00-{'1' * 32}-{'2' * 16}-01"
    headers = [("ce_traceparent", other.encode()), ("traceparent", TRACEPARENT.encode())]
    parent = trace.get_current_span(tracing.extract(headers)).get_span_context()
    assert format(parent.trace_id, "032x") == TRACE_ID


def test_inject_adds_the_current_context_and_replaces_an_old_one(
    spans: InMemorySpanExporter,
) -> None:
    old = [("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"), ("x", b"y")]
    with tracing.span("voxline.publish") as current:
        plain = dict(tracing.inject(old))
        event = tracing.inject([("ce_specversion", b"1.0")])
    ctx = current.get_span_context()
    expected = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}".encode()
    assert plain == {"traceparent": expected, "x": b"y"}
    assert dict(event)["ce_traceparent"] == dict(event)["traceparent"] == expected


def test_off_by_default_every_hook_is_free() -> None:
    assert not tracing.enabled()
    headers = [("a", b"b")]
    assert tracing.inject(headers) is headers, "the same list: nothing copied"
    assert tracing.span("voxline.store") is tracing.record_span(record()) is tracing._NULL
    tracing.failed(Permanent("x", stage=S))  # no current span needed


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "voxline"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
    ],
)
def test_the_standard_variables_turn_it_on(environ: dict[str, str], on: bool) -> None:
    assert tracing.wanted(environ) is on


def test_configured_installs_a_tracer_for_its_life_only() -> None:
    environ = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    with tracing.configured(environ) as on:
        assert on
        assert tracing.enabled()
    assert not tracing.enabled()
    with pytest.raises(ValueError, match="unsupported exporter 'zipkin'"):
        tracing.sdk_provider({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ValueError, match="http/protobuf only"):
        tracing.sdk_provider({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
