"""Poison records on the real broker and store: each ends as a dead letter with the right
reason, and no partition stalls behind it (every valid record after it in the same partition
succeeds, and the group's commit reaches the end of every partition).

* header values that are null, repeated names and bytes that are not UTF-8, on a record that
  succeeds and on one that is dead-lettered (its dead letter keeps them);
* a header *name* that is not UTF-8 (written as a raw record batch, as librdkafka producers can
  and aiokafka cannot): dead-lettered ``invalid_input`` / ``unreadable_record``, and the
  accounting still reads the topic (a scenario of its own);
* a record near the broker's size limit whose dead-letter copy (the ``dlq.*`` headers added)
  no longer fits: dead-lettered with its value cut short and ``dlq.value.truncated``;
* an internal error: a two-chunk request whose chunks come back at different sample rates
  (the fake's ``marked_rate``), so joining them raises; retried, then ``internal_error``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from processor.ops.client import DeadLetter, read_dead_letters
from tests.batches import batch, produce_batch
from tests.faults import support
from tests.faults.support import FAKE_ARGS, drill, produce, report_and_check, valid_requests
from tests.integration.services import Services

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

#: Chunks of at most 60 characters: a request of two sentences is two backend calls.
CHUNKED = """\
default_backend = "openai"
[backends.openai]
kind = "openai"
url = "{url}"
max_in_flight = 8
text_limit = 60
"""
MARK = "[rate]"
#: The broker's message.max.bytes is 1 MiB + 12: a value this long fits (with its key and
#: the batch framing), its dead letter with the dlq.* headers does not.
NEAR_LIMIT = 1_048_400
ODD_HEADERS: support.HeaderList = [
    ("trace", None),
    ("dup", b"1"),
    ("dup", b"2"),
    ("bin", b"\xff\xfe\x00"),
]


def request(rid: str, text: str) -> tuple[bytes, bytes]:
    return rid.encode(), json.dumps({"request_id": rid, "text": text}).encode()


def by_origin(letters: list[DeadLetter]) -> dict[tuple[int, int], DeadLetter]:
    return {
        (
            int(d.header("dlq.original.partition") or -1),
            int(d.header("dlq.original.offset") or -1),
        ): d
        for d in letters
    }


async def test_poison_records_are_dead_lettered_and_stall_no_partition(
    services: Services, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_args = (*FAKE_ARGS, "--marked-rate", "22050", "--rate-marker", MARK)
    async with drill(services, tmp_path, "poison", fake_args=fake_args, config=CHUNKED) as run:
        name = run.name
        before = valid_requests(f"{name}-a", 24)
        after = valid_requests(f"{name}-b", 24)
        odd_ok = request(f"{name}-odd-headers", "Odd headers, fine request.")
        odd_bad = (f"{name}-odd-bad".encode(), b"{not json")
        two_chunks = request(
            f"{name}-two-chunks", "The first sentence makes one chunk. The second one is plain."
        )
        mixed = request(
            f"{name}-mixed-rates", f"The first sentence makes one chunk. The second {MARK} is odd."
        )
        big_id = f"{name}-near-limit"
        filler = NEAR_LIMIT - len(json.dumps({"request_id": big_id, "text": ""}))
        big = request(big_id, "a" * filler)
        assert len(big[1]) == NEAR_LIMIT

        at = await produce(run.settings, before)
        poison = [odd_ok, odd_bad, two_chunks, mixed, big]
        heads = [ODD_HEADERS, ODD_HEADERS, [], [], []]
        at += await produce(run.settings, poison, headers=heads)
        at += await produce(run.settings, after)
        where = dict(zip([k.decode() for k, _ in (*before, *poison, *after)], at, strict=True))
        # Every partition holding a poison record holds valid records after it.
        for rid in (k.decode() for k, _ in poison):
            p, o = where[rid]
            assert any(q == p and x > o for q, x in (where[k.decode()] for k, _ in after)), rid

        ids = set(where)
        await run.fleet.start()
        report = await run.account(ids)
        letters = by_origin(await read_dead_letters(run.settings.kafka))
        report_and_check(run, report, capsys, recovery_s=None)

        expected = {odd_bad[0].decode(), big_id, mixed[0].decode()}
        assert set(report.failed_ids) == expected
        assert dict(report.failed_reasons) == {"invalid_input": 2, "internal_error": 1}
        assert report.succeeded == len(ids) - len(expected)
        assert report.duplicates == 0

        odd = letters[where[odd_bad[0].decode()]]
        assert odd.value == odd_bad[1]
        assert [(k, v) for k, v in odd.headers if not k.startswith("dlq.")] == [
            ("trace", b""),  # null values become empty ones in the dead letter
            ("dup", b"1"),
            ("dup", b"2"),
            ("bin", b"\xff\xfe\x00"),
        ]

        cut = letters[where[big_id]]
        assert cut.header("dlq.value.truncated") == str(NEAR_LIMIT)
        assert cut.value is not None
        assert 0 < len(cut.value) < NEAR_LIMIT
        assert big[1].startswith(cut.value)

        internal = letters[where[mixed[0].decode()]]
        message = internal.header("dlq.error.message") or ""
        assert internal.header("dlq.reason") == "internal_error"
        assert "ValueError" in message, message
        assert "3 tries" in message, message


async def test_a_header_name_that_is_not_utf8_is_dead_lettered_and_stalls_nothing(
    services: Services, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with drill(services, tmp_path, "bad-header-name") as run:
        topic = run.settings.kafka.request_topic
        valid = valid_requests(run.name, 16)
        at = await produce(run.settings, valid[:8])
        bad_id = f"{run.name}-bad-name"
        bad_name = [(b"\xff\xfe", b"v"), (b"ok", None)]
        records = [
            (*request(f"{run.name}-raw-before", "Before it, in its batch."), []),
            (*request(bad_id, "A header name that is not UTF-8."), bad_name),
            (*request(f"{run.name}-raw-after", "After it, in its batch."), []),
        ]
        base = await produce_batch(services.bootstrap_servers, topic, 0, batch(records))
        at += await produce(run.settings, valid[8:])
        ids = {k.decode() for k, _ in valid} | {r[0].decode() for r in records}
        assert len(at) == len(valid)

        await run.fleet.start()
        seen = await run.completions.wait_all(ids, timeout=240)
        assert seen, f"outcomes missing: {sorted(ids - set(run.completions.first))[:10]}"
        statuses = {rid: run.completions.first[rid].status for rid in ids}
        assert {rid for rid, s in statuses.items() if s != "succeeded"} == {bad_id}
        await run.fleet.stop_all()
        assert await support.stalled(run.settings) == {}
        letters = by_origin(await read_dead_letters(run.settings.kafka))
        letter = letters[(0, base + 1)]
        assert letter.header("dlq.error.type") == "unreadable_record"
        assert letter.header("dlq.reason") == "invalid_input"
        assert letter.value == records[1][1]

        report = await run.account(ids)
        report_and_check(run, report, capsys, recovery_s=None)
        assert set(report.failed_ids) == {bad_id}
        assert report.duplicates == 0
