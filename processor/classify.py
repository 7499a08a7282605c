"""Pure classification of backend/store outcomes into the error tree.

No I/O here: callers pass the status, headers and the current time in.
"""

from __future__ import annotations

import datetime as dt
from email.utils import parsedate_to_datetime

from processor.errors import Permanent, Stage, Systemic, Transient, VoxlineError

TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
PERMANENT_STATUSES = frozenset({400, 413, 415, 422})
#: Failing for every request alike: credentials or routing are wrong, not this request.
#: 501 is the server-side twin of 405 (the endpoint is not implemented there): retrying each
#: record would only dead-letter them all as ``retries_exhausted``.
SYSTEMIC_STATUSES = frozenset({401, 403, 404, 405, 501})


def kind_for_status(status: int) -> type[VoxlineError] | None:
    """The error class for an HTTP status; ``None`` for success (2xx)."""
    if 200 <= status < 300:
        return None
    if status in TRANSIENT_STATUSES:
        return Transient
    if status in PERMANENT_STATUSES:
        return Permanent
    if status in SYSTEMIC_STATUSES:
        return Systemic
    # Unknown 5xx are the server's trouble; unknown 4xx (and 1xx/3xx we did not follow) ours.
    return Transient if status >= 500 else Permanent


def parse_retry_after(value: str | None, now: dt.datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or ``None``."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        # HTTP-dates are GMT; asctime and "-0000" dates parse naive. A naive ``now`` is taken
        # as UTC too, rather than failing on the aware/naive subtraction.
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        if now.tzinfo is None:
            now = now.replace(tzinfo=dt.UTC)
        seconds = (when - now).total_seconds()
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN or infinite
        return None
    return max(0.0, seconds)


def error_for_status(
    status: int,
    message: str,
    *,
    stage: Stage,
    retry_after: str | None = None,
    now: dt.datetime | None = None,
) -> VoxlineError | None:
    """The error to raise for a response, or ``None`` when it succeeded."""
    kind = kind_for_status(status)
    if kind is None:
        return None
    wait = parse_retry_after(retry_after, now or dt.datetime.now(dt.UTC))
    return kind(
        f"HTTP {status}: {message}" if message else f"HTTP {status}",
        stage=stage,
        http_status=status,
        retry_after=wait,
        error_type=f"http_{status}",
    )


def clamp_backoff(retry_after: float | None, computed: float, remaining: float) -> float:
    """Backoff before the next try: the server's wish if it gave one, never past the budget."""
    wait = computed if retry_after is None else retry_after
    return max(0.0, min(wait, remaining))
