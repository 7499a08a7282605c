"""Table-driven tests of the pure HTTP outcome classifier."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processor.classify import (
    PERMANENT_STATUSES,
    SYSTEMIC_STATUSES,
    TRANSIENT_STATUSES,
    clamp_backoff,
    error_for_status,
    kind_for_status,
    parse_retry_after,
)
from processor.errors import Permanent, Stage, Systemic, Transient, VoxlineError

NOW = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)

EXPECTED_KIND: dict[int, type[VoxlineError] | None] = {
    200: None,
    201: None,
    204: None,
    400: Permanent,
    401: Systemic,  # our credentials: wrong for every request
    403: Systemic,
    404: Systemic,  # our routing: the endpoint is not there for anyone
    408: Transient,
    413: Permanent,  # this request is too large; others are fine
    415: Permanent,
    422: Permanent,
    425: Transient,
    429: Transient,
    500: Transient,
    501: Systemic,  # the server does not implement the endpoint at all
    502: Transient,
    503: Transient,
    504: Transient,
    599: Transient,  # unknown 5xx: the server's trouble
    418: Permanent,  # unknown 4xx: ours
}


@pytest.mark.parametrize(("status", "kind"), EXPECTED_KIND.items())
def test_kind_for_status(status: int, kind: type[VoxlineError] | None) -> None:
    assert kind_for_status(status) is kind


@given(st.integers(100, 599))
def test_every_status_has_exactly_one_kind(status: int) -> None:
    kind = kind_for_status(status)
    assert (kind is None) == (200 <= status < 300)
    assert kind in (None, Transient, Permanent, Systemic)
    assert kind is not Systemic or status in SYSTEMIC_STATUSES
    listed = [s for s in (TRANSIENT_STATUSES, PERMANENT_STATUSES, SYSTEMIC_STATUSES) if status in s]
    assert len(listed) <= 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (" 7 ", 7.0),
        ("-3", 0.0),
        ("", None),
        ("   ", None),
        (None, None),
        ("garbage", None),
        ("5 seconds", None),
        ("nan", None),
        ("NaN", None),
        ("inf", None),
        ("-inf", None),
        ("Infinity", None),
        ("1e400", None),  # overflows to infinity
        ("Sat, 01 Mar 2025 12:00:30 GMT", 30.0),  # future HTTP-date
        ("Sat, 01 Mar 2025 11:59:00 GMT", 0.0),  # past HTTP-date
        ("Sat, 01 Mar 2025 12:00:00 GMT", 0.0),  # now
        ("Sat, 01 Mar 2025 14:00:10 +0200", 10.0),  # other zone
        ("Saturday, 01-Mar-25 12:01:00 GMT", 60.0),  # obsolete RFC 850 form
        ("Sat Mar  1 12:00:05 2025", 5.0),  # asctime form: no zone, GMT by definition
        ("Sat, 01 Mar 2025 12:00:05 -0000", 5.0),  # unknown zone: parsed naive, taken as UTC
        ("Sat, 32 Mar 2025 12:00:00 GMT", None),  # not a date
        ("Mon, 01 Jan 99999 00:00:00 GMT", None),  # year out of range
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_parse_retry_after_accepts_a_naive_now_as_utc() -> None:
    naive = NOW.replace(tzinfo=None)
    assert parse_retry_after("Sat, 01 Mar 2025 12:00:30 GMT", naive) == 30.0


@given(st.text(max_size=40))
def test_parse_retry_after_never_raises_and_is_finite_non_negative(value: str) -> None:
    seconds = parse_retry_after(value, NOW)
    assert seconds is None or (math.isfinite(seconds) and seconds >= 0.0)


# HTTP-dates have four-digit years; shorter ones would parse as two-digit years.
@given(st.datetimes(min_value=dt.datetime(1970, 1, 1), timezones=st.just(dt.UTC)))
def test_parse_retry_after_of_any_http_date(when: dt.datetime) -> None:
    header = when.strftime("%a, %d %b %Y %H:%M:%S GMT")
    expected = max(0.0, (when.replace(microsecond=0) - NOW).total_seconds())
    assert parse_retry_after(header, NOW) == expected


@pytest.mark.parametrize(("status", "kind"), EXPECTED_KIND.items())
def test_error_for_status_carries_status_stage_and_type(
    status: int, kind: type[VoxlineError] | None
) -> None:
    error = error_for_status(
        status, "server said no", stage=Stage.SYNTHESIZE, retry_after="12", now=NOW
    )
    if kind is None:
        assert error is None
        return
    assert type(error) is kind
    assert error.http_status == status
    assert error.retry_after == 12.0
    assert error.error_type == f"http_{status}"
    assert error.stage is Stage.SYNTHESIZE
    assert error.message == f"HTTP {status}: server said no"
    assert str(error) == error.message


def test_error_for_status_without_message_or_retry_after() -> None:
    error = error_for_status(503, "", stage=Stage.STORE)
    assert error is not None
    assert error.message == "HTTP 503"
    assert error.retry_after is None
    assert error.stage is Stage.STORE


def test_error_for_status_parses_an_http_date_against_now() -> None:
    error = error_for_status(
        429,
        "slow down",
        stage=Stage.SYNTHESIZE,
        retry_after="Sat, 01 Mar 2025 12:00:45 GMT",
        now=NOW,
    )
    assert error is not None
    assert error.retry_after == 45.0


def test_error_for_status_ignores_a_garbage_retry_after() -> None:
    error = error_for_status(503, "x", stage=Stage.SYNTHESIZE, retry_after="soon", now=NOW)
    assert error is not None
    assert error.retry_after is None


@pytest.mark.parametrize(
    ("retry_after", "computed", "remaining", "expected"),
    [
        (None, 2.0, 10.0, 2.0),  # no server wish: our backoff
        (5.0, 2.0, 10.0, 5.0),  # the server's wish wins, longer ...
        (1.0, 2.0, 10.0, 1.0),  # ... or shorter
        (0.0, 2.0, 10.0, 0.0),  # "retry now" is a wish too
        (30.0, 2.0, 10.0, 10.0),  # never past the budget
        (None, 20.0, 10.0, 10.0),
        (5.0, 2.0, 0.0, 0.0),  # budget spent
        (5.0, 2.0, -3.0, 0.0),  # overspent: never negative
        (None, -1.0, 10.0, 0.0),
    ],
)
def test_clamp_backoff(
    retry_after: float | None, computed: float, remaining: float, expected: float
) -> None:
    assert clamp_backoff(retry_after, computed, remaining) == expected


finite = st.floats(min_value=-1e6, max_value=1e6)


@given(st.one_of(st.none(), st.floats(0.0, 1e6)), finite, finite)
def test_clamp_backoff_stays_within_the_budget(
    retry_after: float | None, computed: float, remaining: float
) -> None:
    wait = clamp_backoff(retry_after, computed, remaining)
    assert 0.0 <= wait <= max(0.0, remaining)
    wish = computed if retry_after is None else retry_after
    if 0.0 <= wish <= remaining:
        assert wait == wish
