"""Park instead of hold, on the real broker and store: the backend is down long enough for
records to park (``VOXLINE_PARK_AFTER=2``); while it is down, parked records leave the window
(the delay topic fills) and come back when due; once it is up every request succeeds, nothing
is dead-lettered, nothing lost, and no record is left on the delay topic unaccounted for."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from processor.kafka.records import read_to_end
from processor.parking import retry_topic
from tests.faults.support import drill, report_and_check, send
from tests.integration.services import Services

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

DOWN_S = 15.0


async def test_records_park_while_the_backend_is_down_and_all_come_back(
    services: Services, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with drill(services, tmp_path, "parking", VOXLINE_PARK_AFTER="2") as run:
        k = run.settings.kafka
        parked_topic = retry_topic(k.request_topic)
        await run.fake.control(down=True)
        ids = await send(run, 120)
        await run.fleet.start()
        began = time.time()
        give_up = time.monotonic() + 120
        while not await read_to_end(k, parked_topic):  # the first park reaches the broker
            assert time.monotonic() < give_up, "nothing was parked while the backend was down"
            await asyncio.sleep(0.5)
        await asyncio.sleep(max(0.0, DOWN_S - (time.time() - began)))  # the fault window
        await run.fake.control(down=False)
        report = await run.account(ids)
        parked = await read_to_end(k, parked_topic)
        logs = "".join(m.log_text() for m in run.fleet.members)
        report_and_check(
            run,
            report,
            capsys,
            parked_records=len(parked),
            parked_requests=len({p.key for p in parked}),
            parks_logged=logs.count('"event": "parked"'),
            most_parks=max(int(p.header("park.count") or 0) for p in parked),
        )
        assert report.failed == report.dead_letter_records == 0
        assert report.parked == 0, "every parked request ended"
        assert parked, "records parked"
        assert {p.header("park.original.topic") for p in parked} == {k.request_topic}
