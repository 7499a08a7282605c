"""The same request_id twice with different text, on the real broker and store: records with
one request_id are processed one after the other in offset order, so both get a succeeded
event, the later one's last, and the object under the key is the later record's audio (the
accounting checks the object against the last succeeded event)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from processor.kafka.records import read_to_end
from tests.faults.support import drill, produce, report_and_check, valid_requests
from tests.integration.services import Services

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

#: The first record's text is long (more audio, a slower upload), the second's short: without
#: the ordering, the second would often finish first and the first's audio would stay.
FIRST_TEXT = "The first version of this request is the long one. " * 6
SECOND_TEXT = "The second version wins."


def twice(rid: str) -> list[tuple[bytes, bytes]]:
    return [
        (
            rid.encode(),
            json.dumps({"request_id": rid, "text": text, "metadata": {"record": which}}).encode(),
        )
        for which, text in (("first", FIRST_TEXT), ("second", SECOND_TEXT))
    ]


async def test_the_same_request_id_twice_keeps_the_later_records_audio(
    services: Services, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with drill(services, tmp_path, "same-id") as run:
        pairs = [f"{run.name}-twice-{i:02d}" for i in range(15)]
        singles = valid_requests(run.name, 30)
        records = [r for rid in pairs for r in twice(rid)]
        records += singles
        await produce(run.settings, records)
        ids = set(pairs) | {k.decode() for k, _ in singles}
        await run.fleet.start()
        report = await run.account(ids)
        events: dict[str, list[dict[str, object]]] = {}
        for event in await read_to_end(run.settings.kafka, run.settings.kafka.completion_topic):
            body = json.loads(event.value or b"{}")
            events.setdefault(body["request_id"], []).append(body)
        report_and_check(run, report, capsys, records=len(records), recovery_s=None)
        assert report.succeeded == len(ids)
        assert report.failed == report.duplicates == 0
        for rid in pairs:
            got = [(e["status"], e["metadata"]) for e in events[rid]]
            assert got == [
                ("succeeded", {"record": "first"}),
                ("succeeded", {"record": "second"}),
            ], rid
