"""One error tree; each class says what the pipeline does with the record.

    VoxlineError            (never raised itself)
    ├── Transient           retried with backoff; dead-lettered as ``retries_exhausted``
    │                       once the budget is spent
    ├── Permanent           dead-lettered at once as ``permanent``
    │   ├── InvalidInput    ... as ``invalid_input`` (bad record, bad request for a backend)
    │   ├── Expired         ... as ``expired`` (past the request's deadline)
    │   ├── InternalError   ... as ``internal_error`` (Voxline itself failed on this record,
    │                       again and again: a bug, not the record's or a backend's fault)
    │   └── QualityFailed   ... as ``quality`` (processor.quality_gate: the audio failed the
    │                       quality gate on every regeneration)
    └── Systemic            the backend or store is down for everyone: the record waits and
                            is retried, never dead-lettered for it

Every error carries the stage it happened in and, where there was one, the HTTP status.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class Stage(enum.StrEnum):
    DECODE = "decode"
    VALIDATE = "validate"
    SYNTHESIZE = "synthesize"
    STORE = "store"
    PUBLISH = "publish"


class Reason(enum.StrEnum):
    INVALID_INPUT = "invalid_input"
    PERMANENT = "permanent"
    RETRIES_EXHAUSTED = "retries_exhausted"
    EXPIRED = "expired"
    INTERNAL_ERROR = "internal_error"
    QUALITY = "quality"


class VoxlineError(Exception):
    """Base of all errors the pipeline knows how to route."""

    reason: ClassVar[Reason | None] = None

    def __init__(
        self,
        message: str,
        *,
        stage: Stage,
        http_status: int | None = None,
        retry_after: float | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.stage = stage
        self.http_status = http_status
        #: Seconds the server asked us to wait (``Retry-After``), if it said.
        self.retry_after = retry_after
        #: Short machine-readable type, e.g. ``http_503`` or ``timeout``; the class name by default.
        self.error_type = error_type or type(self).__name__

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, stage={self.stage.value}, "
            f"http_status={self.http_status}, error_type={self.error_type!r})"
        )


class Transient(VoxlineError):
    """Worth another try soon: timeouts, dropped connections, 429/5xx, truncated bodies."""


class Permanent(VoxlineError):
    """Retrying cannot help: the backend rejected this very request."""

    reason = Reason.PERMANENT


class InvalidInput(Permanent):
    """The record is not a valid request, or asks for something the backend cannot do."""

    reason = Reason.INVALID_INPUT


class Expired(Permanent):
    """The request's deadline passed before it could be synthesized."""

    reason = Reason.EXPIRED


class InternalError(Permanent):
    """Processing this record failed with an unexpected error, more often than allowed."""

    reason = Reason.INTERNAL_ERROR


class Systemic(VoxlineError):
    """The dependency is failing for everyone (down, unauthorised): wait, never dead-letter."""
