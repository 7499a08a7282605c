"""The publish stage: a record's outcome made durable, as a succeeded event, or as a dead
letter plus a failed event. Returns only once the broker has acknowledged it."""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from processor.cloudevents_in import causation_of
from processor.errors import Permanent, Reason, VoxlineError
from processor.events import (
    FAILED_TYPE,
    SUCCEEDED_TYPE,
    DeadLetterRef,
    Failure,
    ce_headers,
    dead_letter_headers,
    encode,
    failed_body,
)
from processor.kafka.headers import Headers
from processor.kafka.records import Record
from processor.kafka.sink import EventSink, Outbound
from processor.observability import Metrics
from processor.quality_gate import QualityFailed
from processor.retry import Policy
from processor.settings import Settings
from processor.steps import Tally, now, run_step
from processor.usage import TenantLabels, Usage, tenant_of

Logger = structlog.typing.FilteringBoundLogger

#: A dead letter the broker refuses whole keeps at most this much of its value.
TRUNCATED_VALUE_BYTES = 64 * 1024
TRUNCATED_HEADER = "dlq.value.truncated"


class Outcomes:
    def __init__(
        self, settings: Settings, sink: EventSink, policy: Policy, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.policy = policy
        self.metrics = metrics
        self.tenants = TenantLabels(settings.usage_max_tenants)

    async def publish(
        self,
        subject: str,
        ce_type: str,
        status: str,
        body: Mapping[str, object],
        causation: Headers | None = None,
    ) -> None:
        headers = ce_headers(subject, ce_type, status, self.settings.event_source, now())
        headers += causation or []  # the request's own CloudEvent, if it came as one
        value = encode(body)
        topic = self.settings.kafka.completion_topic
        out = Outbound(topic, subject.encode(), value, headers)
        await run_step(lambda: self.sink.send(out), self.policy)

    async def succeeded(
        self,
        request_id: str,
        body: Mapping[str, object],
        causation: Headers | None = None,
        usage: Usage | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        await self.publish(request_id, SUCCEEDED_TYPE, "succeeded", body, causation)
        if usage is not None:  # a caller without usage figures adds nothing to the metrics
            self.account(usage, metadata or {})

    def account(self, usage: Usage, metadata: Mapping[str, str]) -> None:
        """Usage metrics for one finished record, by backend and (bounded) tenant."""
        tenant = self.tenants.label(tenant_of(metadata, self.settings.usage_tenant_key))
        self.metrics.usage(
            usage.backend or "-",
            tenant,
            usage.characters,
            usage.audio_ms / 1000,
            usage.backend_ms / 1000,
        )

    async def failed(
        self,
        record: Record,
        request_id: str,
        metadata: Mapping[str, str],
        error: VoxlineError,
        tally: Tally,
        rlog: Logger,
        usage: Usage | None = None,
    ) -> None:
        """Dead letter, then failed event (it names where the dead letter went)."""
        usage = usage or Usage()
        reason = error.reason or Reason.RETRIES_EXHAUSTED
        failure = Failure(
            stage=error.stage,
            reason=reason,
            error_type=error.error_type,
            message=error.message,
            attempts=tally.attempts,
            first_failed_at=tally.first_failed_at or now(),
            failed_at=now(),
            http_status=error.http_status,
            extra=error.headers if isinstance(error, QualityFailed) else {},
        )
        headers = dead_letter_headers(
            record.headers,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp_ms,
            group_id=self.settings.kafka.group_id,
            processor=self.settings.processor_id,
            failure=failure,
        )
        ref = await self._dead_letter(record, headers)
        body = failed_body(
            request_id,
            reason=reason,
            error_type=error.error_type,
            message=error.message,
            dead_letter=ref,
            attempts=tally.attempts,
            metadata=metadata,
            usage=usage.as_event(),
            backend=usage.backend,
        )
        causation = causation_of(record.headers, record.value)
        await self.publish(request_id, FAILED_TYPE, "failed", body, causation)
        self.account(usage, metadata)
        self.metrics.dead_lettered(reason.value, error.stage.value)
        rlog.warning(
            "dead-lettered",
            stage=error.stage.value,
            reason=reason.value,
            error_type=error.error_type,
            error=error.message,
            attempt=tally.attempts,
            dlq_partition=ref.partition,
            dlq_offset=ref.offset,
        )

    async def _dead_letter(self, record: Record, headers: Headers) -> DeadLetterRef:
        """The original record whole; if the broker can never take it (the added headers
        pushed it over the size limit), its value cut short and a header saying so."""
        topic = self.settings.kafka.dlq_topic
        value = record.value

        async def send(value: bytes | None, headers: Headers) -> tuple[int, int]:
            return await run_step(
                lambda: self.sink.send(
                    Outbound(topic, record.key, value, headers, record.timestamp_ms)
                ),
                self.policy,
            )

        try:
            partition, offset = await send(value, headers)
        except Permanent:
            if value is None:
                raise
            cut = value[: min(len(value) // 2, TRUNCATED_VALUE_BYTES)]
            marked = [*headers, (TRUNCATED_HEADER, str(len(value)).encode())]
            partition, offset = await send(cut, marked)
        return DeadLetterRef(topic, partition, offset)
