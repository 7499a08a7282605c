"""The pure accounting of ``voxline reconcile``: facts in, a report out."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from processor.events import DeadLetterRef
from processor.kafka.records import Record
from processor.ops.reconcile.accounting import (
    Letter,
    Outcome,
    RequestSeen,
    StoredObject,
    account,
    key_of_uri,
)
from processor.ops.reconcile.command import parse_since, reconcile_command, report_table
from processor.ops.reconcile.gather import letter_of, outcome_of
from processor.request import request_id_of

BUCKET = "audio"
TOPIC = "t.requests"
DLQ = "t.requests.dlq"
SHA = "a" * 64


def sent(rid: str, offset: int = 0, partition: int = 0, ts: int = 0) -> RequestSeen:
    return RequestSeen(rid, TOPIC, partition, offset, ts)


def ok(rid: str, size: int = 10, sha: str = SHA) -> Outcome:
    return Outcome(rid, "succeeded", uri=f"s3://{BUCKET}/p/{rid}.wav", bytes=size, sha256=sha)


def obj(rid: str, size: int = 10, sha: str | None = SHA, content: str | None = SHA) -> StoredObject:
    return StoredObject(f"p/{rid}.wav", size, sha, content)


def failed(rid: str, dlq_offset: int, reason: str = "invalid_input") -> Outcome:
    return Outcome(rid, "failed", reason=reason, dead_letter=DeadLetterRef(DLQ, 0, dlq_offset))


def letter(offset: int, origin: int, reason: str = "invalid_input") -> Letter:
    return Letter(DLQ, 0, offset, reason, DeadLetterRef(TOPIC, 0, origin))


# -- request ids ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        (b"k-1", b'{"request_id": "r-1", "text": "hi"}', "r-1"),
        (b"k-1", b'{"request_id": "r-1", "text": 5}', "r-1"),  # invalid, id still readable
        (b"k-1", b'{"request_id": "r-1", "te', "r-1"),  # truncated: the leading member
        (b"k-1", b"\xff\xfe garbage", "k-1"),
        (b"k-1", None, "k-1"),
        (b"k-1", b'{"request_id": "no/slash", "text": "x"}', "k-1"),
        (b"has/slash", b"junk", f"{TOPIC}:3:77"),
        (b"\xffbytes", b"junk", f"{TOPIC}:3:77"),
        (b"x" * 129, b"junk", f"{TOPIC}:3:77"),
        (None, b"[1, 2]", f"{TOPIC}:3:77"),
        (b"", b"", f"{TOPIC}:3:77"),
    ],
)
def test_request_id_follows_the_processors_fallback_rule(
    key: bytes | None, value: bytes | None, expected: str
) -> None:
    assert request_id_of(TOPIC, 3, 77, key, value) == expected


# -- outcomes -------------------------------------------------------------------------------


def test_everything_in_place_is_ok() -> None:
    report = account(
        [sent("a", 0), sent("b", 1), sent("c", 2)],
        [ok("a"), ok("b"), failed("c", 0)],
        [letter(0, origin=2)],
        [obj("a"), obj("b")],
        bucket=BUCKET,
    )
    assert report.ok
    assert (report.requests, report.succeeded, report.failed, report.lost) == (3, 2, 1, 0)
    assert report.failed_reasons == (("invalid_input", 1),)
    assert report.failed_ids == ("c",)


def test_a_request_without_an_event_is_lost() -> None:
    report = account([sent("a"), sent("b", 1)], [ok("a")], [], [obj("a")], bucket=BUCKET)
    assert not report.ok
    assert report.lost == 1
    assert report.lost_ids == ("b",)


def test_a_redelivered_outcome_is_a_duplicate_not_an_error() -> None:
    report = account([sent("a")], [ok("a"), ok("a"), ok("a")], [], [obj("a")], bucket=BUCKET)
    assert report.ok
    assert (report.succeeded, report.duplicates, report.duplicate_ids) == (1, 2, ("a",))


def test_both_outcomes_for_one_record_conflict() -> None:
    report = account(
        [sent("a")], [ok("a"), failed("a", 0)], [letter(0, 0)], [obj("a")], bucket=BUCKET
    )
    assert not report.ok
    assert (report.conflicts, report.conflict_ids) == (1, ("a",))
    assert report.succeeded == report.failed == 0


def test_a_replayed_dead_letter_may_succeed_later() -> None:
    report = account(
        [sent("a", 0), sent("a", 5)],
        [failed("a", 0, "retries_exhausted"), ok("a")],
        [letter(0, 0, "retries_exhausted")],
        [obj("a")],
        bucket=BUCKET,
    )
    assert report.ok
    assert (report.requests, report.records, report.succeeded, report.conflicts) == (1, 2, 1, 0)
    assert report.duplicates == 0


def test_events_of_requests_out_of_scope_are_ignored() -> None:
    report = account([sent("a")], [ok("a"), ok("older")], [], [obj("a")], bucket=BUCKET)
    assert report.ok
    assert report.requests == 1


# -- objects --------------------------------------------------------------------------------


def test_a_succeeded_event_without_its_object_is_missing() -> None:
    report = account([sent("a")], [ok("a")], [], [], bucket=BUCKET)
    assert not report.ok
    assert report.missing_object_ids == ("a",)


def test_an_event_naming_another_bucket_is_missing_its_object() -> None:
    event = Outcome("a", "succeeded", uri="s3://elsewhere/p/a.wav", bytes=10, sha256=SHA)
    report = account([sent("a")], [event], [], [obj("a")], bucket=BUCKET)
    assert report.missing_objects == 1
    assert report.orphans == 1  # and the object in our bucket is nobody's


@pytest.mark.parametrize(
    "stored",
    [
        obj("a", size=9),  # partial
        obj("a", sha="b" * 64),  # metadata says other audio
        obj("a", sha=None),  # no sha256 metadata
        obj("a", content="c" * 64),  # bytes are not what the event describes
    ],
)
def test_an_object_that_does_not_match_its_event_is_bad(stored: StoredObject) -> None:
    report = account([sent("a")], [ok("a")], [], [stored], bucket=BUCKET)
    assert not report.ok
    assert (report.bad_objects, report.bad_object_ids) == (1, ("a",))


def test_an_object_not_downloaded_is_checked_by_size_and_metadata() -> None:
    report = account([sent("a")], [ok("a")], [], [obj("a", content=None)], bucket=BUCKET)
    assert report.ok


def test_the_object_may_match_either_of_two_redelivered_events() -> None:
    # Two processors wrote the object; the last write need not be the last event's.
    events = [ok("a", size=10, sha=SHA), ok("a", size=12, sha="d" * 64)]
    report = account([sent("a")], events, [], [obj("a")], bucket=BUCKET)
    assert report.ok


def test_two_records_with_one_request_id_must_leave_the_later_one_s_audio() -> None:
    # The earlier text's audio under the key while the later event names other audio: the
    # race the processor's per-request_id ordering prevents.
    events = [ok("a", size=10, sha=SHA), ok("a", size=12, sha="d" * 64)]
    sends = [sent("a", offset=0), sent("a", offset=1)]
    report = account(sends, events, [], [obj("a")], bucket=BUCKET)
    assert report.bad_object_ids == ("a",)
    fixed = account(
        sends, events, [], [obj("a", size=12, sha="d" * 64, content=None)], bucket=BUCKET
    )
    assert fixed.ok


def test_objects_no_event_names_are_orphans_unless_older_than_since() -> None:
    stray_new = StoredObject("p/stray.wav", 5, SHA, None, last_modified_ms=2_000)
    stray_old = StoredObject("p/old.wav", 5, SHA, None, last_modified_ms=500)
    report = account(
        [sent("a", ts=1_500)],
        [ok("a")],
        [],
        [obj("a"), stray_new, stray_old],
        bucket=BUCKET,
        since_ms=1_000,
    )
    assert report.ok  # orphans are reported, they do not fail the check
    assert report.orphan_keys == ("p/stray.wav",)
    assert report.objects == 3


def test_an_object_vouched_for_by_an_out_of_scope_event_is_no_orphan() -> None:
    report = account(
        [sent("a")], [ok("a"), ok("older")], [], [obj("a"), obj("older")], bucket=BUCKET
    )
    assert report.orphans == 0


# -- dead letters ---------------------------------------------------------------------------


def test_a_failed_event_without_its_dead_letter_is_missing() -> None:
    report = account([sent("a")], [failed("a", 4)], [letter(3, 0)], [], bucket=BUCKET)
    assert not report.ok
    assert report.missing_dead_letter_ids == ("a",)


def test_a_failed_event_without_a_dead_letter_reference_is_missing() -> None:
    event = Outcome("a", "failed", reason="permanent")
    report = account([sent("a")], [event], [], [], bucket=BUCKET)
    assert report.missing_dead_letters == 1


@pytest.mark.parametrize(
    "found",
    [letter(0, origin=0, reason="permanent"), letter(0, origin=9)],
    ids=["other reason", "other record"],
)
def test_a_dead_letter_that_does_not_match_its_event_is_bad(found: Letter) -> None:
    report = account([sent("a")], [failed("a", 0)], [found], [], bucket=BUCKET)
    assert not report.ok
    assert report.bad_dead_letter_ids == ("a",)


# -- the whole ------------------------------------------------------------------------------

ids = st.sampled_from(["a", "b", "c", "d"])
statuses = st.sampled_from(["succeeded", "failed"])


@given(
    st.lists(ids, max_size=8),
    st.lists(st.tuples(ids, statuses), max_size=12),
)
def test_every_request_is_counted_once(sends: list[str], outcomes: list[tuple[str, str]]) -> None:
    events = [ok(rid) if s == "succeeded" else failed(rid, 0) for rid, s in outcomes]
    requests = [sent(rid, offset) for offset, rid in enumerate(sends)]
    report = account(requests, events, [letter(0, 0)], [obj(r) for r in "abcd"], bucket=BUCKET)
    assert report.succeeded + report.failed + report.conflicts + report.lost == report.requests
    assert report.requests == len(set(sends))
    assert report.records == len(sends)
    assert report.lost == len(set(sends) - {rid for rid, _ in outcomes})


# -- parsing the wire -----------------------------------------------------------------------


def test_events_are_read_from_their_json() -> None:
    value = json.dumps(
        {
            "request_id": "a",
            "status": "succeeded",
            "audio": {"uri": "s3://b/k.wav", "bytes": 44, "sha256": SHA},
        }
    ).encode()
    assert outcome_of(value) == Outcome("a", "succeeded", uri="s3://b/k.wav", bytes=44, sha256=SHA)
    value = json.dumps(
        {
            "request_id": "b",
            "status": "failed",
            "reason": "expired",
            "dead_letter": {"topic": DLQ, "partition": 1, "offset": 2},
        }
    ).encode()
    assert outcome_of(value) == Outcome(
        "b", "failed", reason="expired", dead_letter=DeadLetterRef(DLQ, 1, 2)
    )


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"not json",
        b"[]",
        b'{"status": "succeeded"}',
        b'{"request_id": "a", "status": "pending"}',
    ],
)
def test_unreadable_events_are_none(value: bytes | None) -> None:
    assert outcome_of(value) is None


def test_odd_field_types_in_an_event_read_as_absent() -> None:
    value = b'{"request_id": "a", "status": "failed", "dead_letter": {"topic": 1}, "reason": 2}'
    assert outcome_of(value) == Outcome("a", "failed")
    value = b'{"request_id": "a", "status": "succeeded", "audio": {"bytes": true}}'
    assert outcome_of(value) == Outcome("a", "succeeded")


def test_dead_letters_are_read_from_their_headers() -> None:
    headers = (
        ("dlq.original.topic", TOPIC.encode()),
        ("dlq.original.partition", b"2"),
        ("dlq.original.offset", b"41"),
        ("dlq.reason", b"permanent"),
    )
    record = Record(DLQ, 0, 7, b"k", b"v", 0, headers)
    assert letter_of(record) == Letter(DLQ, 0, 7, "permanent", DeadLetterRef(TOPIC, 2, 41))
    assert letter_of(Record(DLQ, 0, 8, None, None, 0)) == Letter(DLQ, 0, 8, None, None)


@pytest.mark.parametrize(
    ("uri", "key"),
    [
        ("s3://audio/p/a.wav", "p/a.wav"),
        ("s3://audio/", None),
        ("s3://audiox/p/a.wav", None),
        ("http://audio/p/a.wav", None),
        (None, None),
    ],
)
def test_key_of_uri(uri: str | None, key: str | None) -> None:
    assert key_of_uri(uri, "audio") == key


# -- since, the table, the command ----------------------------------------------------------

NOW = dt.datetime(2026, 1, 2, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15m", NOW - dt.timedelta(minutes=15)),
        ("2h", NOW - dt.timedelta(hours=2)),
        ("90s", NOW - dt.timedelta(seconds=90)),
        ("1.5d", NOW - dt.timedelta(hours=36)),
        ("2026-01-01T08:00:00Z", dt.datetime(2026, 1, 1, 8, tzinfo=dt.UTC)),
        ("2026-01-01T08:00:00", dt.datetime(2026, 1, 1, 8, tzinfo=dt.UTC)),
        (
            "2026-01-01T08:00:00+02:00",
            dt.datetime(2026, 1, 1, 6, tzinfo=dt.UTC),
        ),
    ],
)
def test_since_takes_a_time_or_a_duration(text: str, expected: dt.datetime) -> None:
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "15", "m15", "-2h", ""])
def test_since_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="Invalid isoformat"):
        parse_since(text, NOW)


def test_the_table_caps_the_ids_it_lists() -> None:
    report = account([sent(f"r{i:02d}", i) for i in range(30)], [], [], [], bucket=BUCKET)
    console = Console(width=400, record=True)
    console.print(report_table(report, show=5))
    text = console.export_text()
    assert "PROBLEMS" in text
    assert "r00, r01, r02, r03, r04 (+25 more)" in text
    assert "r05" not in text


def test_the_command_rejects_a_bad_since_before_touching_the_network() -> None:
    result = CliRunner().invoke(reconcile_command, ["--since", "last tuesday"])
    assert result.exit_code == 2
    assert "neither an ISO time nor a duration" in result.output


def test_the_command_refuses_sasl_without_a_user_before_touching_the_network() -> None:
    result = CliRunner().invoke(
        reconcile_command,
        ["--security-protocol", "SASL_PLAINTEXT"],
        env={"KAFKA_SASL_USERNAME": ""},
    )
    assert result.exit_code == 1
    assert "SASL needs KAFKA_SASL_USERNAME" in result.output
