"""OpenTelemetry tracing: one span per record, with children for validation, each backend
call, the store upload and the event publish. The producer's W3C context comes in on the
request's headers (``traceparent``/``tracestate``, or the CloudEvents distributed-tracing
extension); ours goes out on the completion event's and the dead letter's headers.

Off by default, and free when off: until ``configured`` (or ``use``) installs a tracer, every
hook returns one shared null context manager or the headers it was given, without touching
OpenTelemetry at all. On when the standard variables ask for it (``OTEL_TRACES_EXPORTER``
other than ``none``, or an ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``; ``OTEL_SDK_DISABLED=true``
wins); the SDK then reads the other ``OTEL_*`` variables itself (service name, resource,
sampler, batch processor, OTLP endpoint and headers). The SDK and the OTLP exporter are the
``tracing`` extra: ``pip install 'voxline[tracing]'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import os
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from processor import __version__
from processor.kafka.headers import Headers, RawHeaders, header_value

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from processor.errors import VoxlineError
    from processor.kafka.records import Record
    from processor.retry import Decision

T = TypeVar("T")
#: ``Pipeline.handle``: (self, record) -> outcome.
H = TypeVar("H", bound=Callable[[Any, "Record"], Coroutine[Any, Any, str]])

TRACE_HEADERS = ("traceparent", "tracestate")
#: The CloudEvents distributed-tracing extension in Kafka binary mode.
CE_TRACE_HEADERS = ("ce_traceparent", "ce_tracestate")
STRUCTURED_CE = "application/cloudevents+json"

_PROPAGATOR = TraceContextTextMapPropagator()
_NULL: contextlib.nullcontext[None] = contextlib.nullcontext()
#: The chunk of its record a task synthesizes (0 when the record has one).
_CHUNK: contextvars.ContextVar[int] = contextvars.ContextVar("voxline_chunk", default=0)
#: None: tracing is off and every hook is a no-op.
_tracer: trace.Tracer | None = None


def enabled() -> bool:
    return _tracer is not None


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the standard ``OTEL_*`` variables ask for traces."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER")
    if exporter is not None:
        return exporter.strip().lower() not in ("", "none")
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


@contextlib.contextmanager
def use(provider: trace.TracerProvider) -> Iterator[None]:
    """Trace with ``provider`` while the context is open (tests, embedding)."""
    global _tracer
    before = _tracer
    _tracer = provider.get_tracer("voxline", __version__)
    try:
        yield
    finally:
        _tracer = before


@contextlib.contextmanager
def configured(environ: Mapping[str, str] = os.environ) -> Iterator[bool]:
    """Tracing for the life of a processor, if the environment asks for it; yields whether
    it is on. Spans still buffered are exported on the way out."""
    if not wanted(environ):
        yield False
        return
    provider = sdk_provider(environ)
    try:
        with use(provider):
            yield True
    finally:
        provider.shutdown()


def sdk_provider(environ: Mapping[str, str]) -> TracerProvider:
    """An SDK tracer provider with a batch processor per exporter ``OTEL_TRACES_EXPORTER``
    names (``otlp``, the default, over HTTP/protobuf; ``console``)."""
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError as exc:  # pragma: no cover - the extra is part of dev installs
        raise ValueError(
            "OTEL_* variables turn tracing on, but the OpenTelemetry SDK is not installed: "
            "pip install 'voxline[tracing]'"
        ) from exc
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "voxline"}))
    provider = TracerProvider(resource=resource)
    for name in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(","):
        name = name.strip().lower()
        if name == "otlp":
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(environ)))
        elif name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name not in ("", "none"):
            raise ValueError(f"OTEL_TRACES_EXPORTER: unsupported exporter {name!r} (otlp, console)")
    return provider


def _otlp_exporter(environ: Mapping[str, str]) -> Any:
    protocol = environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    )
    if protocol.strip() not in ("", "http/protobuf"):
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: this build exports over http/protobuf only"
        )
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:  # pragma: no cover - the extra is part of dev installs
        raise ValueError(
            "the OTLP exporter is not installed: pip install 'voxline[tracing]'"
        ) from exc
    return OTLPSpanExporter()


def extract(headers: RawHeaders, value: bytes | None = None) -> Context:
    """The producer's context: W3C headers, else the CloudEvents extension (binary mode
    headers, or the attributes of a structured-mode event)."""
    carrier = {name: header_value(headers, name) for name in TRACE_HEADERS}
    if carrier["traceparent"] is None:
        carrier = {name: header_value(headers, "ce_" + name) for name in TRACE_HEADERS}
    if carrier["traceparent"] is None and value:
        content_type = (header_value(headers, "content-type") or "").lower()
        if content_type.startswith(STRUCTURED_CE):
            carrier = _structured(value)
    return _PROPAGATOR.extract({k: v for k, v in carrier.items() if v is not None})


def _structured(value: bytes) -> dict[str, str | None]:
    try:
        event = json.loads(value)
    except ValueError:
        return {}
    if not isinstance(event, dict):
        return {}
    return {k: v for k in TRACE_HEADERS if isinstance(v := event.get(k), str)}


def inject(headers: Headers) -> Headers:
    """``headers`` plus the current context (W3C; CloudEvents extension too on an event);
    the same list when tracing is off."""
    if _tracer is None:
        return headers
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    if not carrier:
        return headers
    names = TRACE_HEADERS + CE_TRACE_HEADERS
    out = [(k, v) for k, v in headers if k.lower() not in names]
    is_event = any(k == "ce_specversion" for k, _ in headers)
    for name, text in carrier.items():
        out.append((name, text.encode()))
        if is_event:
            out.append(("ce_" + name, text.encode()))
    return out


def record_span(record: Record) -> contextlib.AbstractContextManager[Any]:
    """The span of one record, a child of the producer's context."""
    if _tracer is None:
        return _NULL
    return _tracer.start_as_current_span(
        f"process {record.topic}",
        context=extract(record.headers, record.value),
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": record.topic,
            "messaging.destination.partition.id": str(record.partition),
            "messaging.kafka.offset": record.offset,
        },
    )


def span(
    name: str, attributes: Mapping[str, str | int] | None = None, *, producer: bool = False
) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one (``voxline.validate``, ``voxline.store``,
    ``voxline.publish``); a failure inside it sets its status to error."""
    if _tracer is None:
        return _NULL
    return _tracer.start_as_current_span(
        name, kind=SpanKind.PRODUCER if producer else SpanKind.INTERNAL, attributes=attributes
    )


def chunk_task(index: int, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """A task for chunk ``index`` of a record; its backend calls' spans name the index."""
    if _tracer is None:
        return asyncio.create_task(work)
    context = contextvars.copy_context()
    context.run(_CHUNK.set, index)
    return asyncio.create_task(work, context=context)


def backend_call(
    backend: str, attempt: int, window: int, text: str
) -> contextlib.AbstractContextManager[Any]:
    """One call to a backend (inside its gate), for the chunk ``text`` of the current task."""
    if _tracer is None:
        return _NULL
    return _tracer.start_as_current_span(
        "voxline.backend_call",
        kind=SpanKind.CLIENT,
        attributes={
            "voxline.backend": backend,
            "voxline.attempt": attempt,
            "voxline.window": window,
            "voxline.chunk.index": _CHUNK.get(),
            "voxline.text.length": len(text),
        },
    )


def failed(error: VoxlineError) -> None:
    """The current span (the record's) ended in a dead letter: error status and why."""
    if _tracer is None:
        return
    current = trace.get_current_span()
    reason = error.reason.value if error.reason is not None else "retries_exhausted"
    current.set_attributes(
        {"voxline.dlq.reason": reason, "voxline.dlq.stage": error.stage.value}
        | {"error.type": error.error_type}
    )
    current.record_exception(error)
    current.set_status(Status(StatusCode.ERROR, f"{reason}: {error.message}"))


def waiting(error: VoxlineError, decision: Decision) -> None:
    """A step failed and waits before its next try: an event on the current span."""
    if _tracer is not None:
        trace.get_current_span().add_event(
            "voxline.wait",
            {
                "voxline.decision": decision.action.value,
                "voxline.wait_s": round(decision.wait_s, 3),
                "error.type": error.error_type,
            },
        )


async def within(
    name: str,
    step: Awaitable[T],
    attributes: Mapping[str, str | int] | None = None,
    *,
    producer: bool = False,
) -> T:
    """``await step`` inside a child span ``name`` (the store upload, the event publish)."""
    if _tracer is None:
        return await step
    with span(name, attributes, producer=producer):
        return await step


def traced_record(handle: H) -> H:
    """Decorates ``Pipeline.handle``: the record's span around everything done to it, with
    its outcome (``succeeded`` or ``failed``) as an attribute."""

    @functools.wraps(handle)
    async def traced(owner: object, record: Record) -> str:
        if _tracer is None:
            return await handle(owner, record)
        with record_span(record) as current:
            outcome = await handle(owner, record)
            current.set_attribute("voxline.outcome", outcome)
            return outcome

    return cast(H, traced)
