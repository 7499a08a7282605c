"""A backend that stalls or turns everyone away, and a request whose reference audio is missing,
on the real broker and store. An outage never reaches the dead-letter topic: the backend's
circuit breaker opens, records wait, and everything succeeds once the backend answers again.
A request's own problem (a missing reference object) is dead-lettered alone, and the breaker
stays closed for everyone else.

Requests are fed as the run goes (``support.Feeder``): a backlog is waiting while each fault
is on, however fast or slow the machine, and a last batch follows the recovery.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aioboto3
import botocore.exceptions
import pytest

from processor.ops.client import read_dead_letters
from tests.fakes.common import tone, wav_bytes
from tests.faults import support
from tests.faults.support import (
    Drill,
    Feeder,
    Processor,
    breaker_opened,
    drill,
    produce,
    reached,
    report_and_check,
    seconds,
)
from tests.integration.services import Services

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

#: Seconds one backend call may take (the overall deadline: a dripping body is cut off too).
CALL_TIMEOUT = "2"


def opened(member: Processor, times: int, backend: str = "openai") -> support.Condition:
    """Whether ``backend``'s breaker has opened ``times`` times (twice: a probe failed too)."""

    async def check() -> bool:
        return breaker_opened(await member.scrape(), backend) >= times

    return check


def answered(stats: dict[str, Any], status: int) -> int:
    return int(stats["statuses"].get(str(status), 0))


def cut_off(stats: dict[str, Any]) -> int:
    """Calls the fake never finished answering: the client gave up on them."""
    return int(stats["requests"]) - sum(int(n) for n in stats["statuses"].values())


async def outage(
    run: Drill,
    feeder: Feeder,
    phases: list[tuple[dict[str, Any], support.Condition, str]],
    recover: dict[str, Any],
) -> tuple[float, float]:
    """Each phase: switch the fake, keep the backlog up until its condition holds. Then
    ``recover``. Returns when the fault began and ended (wall clock)."""
    began = time.time()
    for switches, until, what in phases:
        await run.fake.control(**switches)
        await feeder.step(until, what=what, timeout=180)
    await run.fake.control(**recover)
    return began, time.time()


async def finish(
    run: Drill,
    feeder: Feeder,
    member: Processor,
    capsys: pytest.CaptureFixture[str],
    began: float,
    ended: float,
    **extra: Any,
) -> dict[str, Any]:
    """Last requests, the accounting, the figures; no dead letter, no duplicate."""
    ids = await feeder.finish()
    await run.completions.wait_all(ids, timeout=240)
    opened_times = breaker_opened(await member.scrape(), "openai")
    report = await run.account(ids)
    stats = await run.fake.stats()
    report_and_check(
        run,
        report,
        capsys,
        outage_s=round(ended - began, 1),
        breaker_opened=opened_times,
        backend_calls=stats["requests"],
        calls_cut_off=cut_off(stats),
        recovery_s=seconds(run.completions.resumed_after(ended)),
        drain_s=seconds(run.completions.drained_after(ended, ids)),
        **extra,
    )
    assert report.failed == report.dead_letter_records == 0, "an outage was dead-lettered"
    assert report.duplicates == 0
    return stats


async def under_way(run: Drill) -> tuple[Feeder, Processor]:
    """A processor with a backlog waiting and its first outcomes out."""
    feeder = Feeder(run, backlog=30, tail=20)
    member = await run.fleet.start()
    await feeder.step(reached(run, 10), what="the first outcomes")
    return feeder, member


#: Faults where no call ever completes: every call hangs (never answers), or its audio comes
#: two bytes a second (no single read waits long: only the overall deadline ends the call).
NEVER_ANSWERS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "hung": ({"timeout_ratio": 1.0, "hang_ms": 3_600_000}, {"timeout_ratio": 0.0}),
    "drip": ({"drip_ms": 1000}, {"drip_ms": 0}),
}


@pytest.mark.parametrize("fault", list(NEVER_ANSWERS))
async def test_calls_that_never_complete_are_cut_off_and_dead_letter_nothing(
    services: Services, tmp_path: Path, capsys: pytest.CaptureFixture[str], fault: str
) -> None:
    """Until the fake recovers, each call is cut off by the per-call deadline and retried; the
    breaker opens, its probe is cut off too and opens it again (a probe cannot wedge it), and
    everything succeeds after."""
    on, off = NEVER_ANSWERS[fault]
    async with drill(
        services, tmp_path, fault, VOXLINE_BACKEND_TIMEOUT=CALL_TIMEOUT, VOXLINE_HTTP_PORT="0"
    ) as run:
        feeder, member = await under_way(run)
        began, ended = await outage(
            run, feeder, [(on, opened(member, 2), "the breaker to open and a probe to fail")], off
        )
        stats = await finish(run, feeder, member, capsys, began, ended)
        assert cut_off(stats) >= 5, "the calls were not cut off by the deadline"


async def test_a_day_long_retry_after_is_held_not_dead_lettered(
    services: Services, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """429 with ``Retry-After: 86400``, then 503 with an HTTP-date a day away: the backend is
    unavailable for everyone, so its requests wait (the breaker opens), none is
    dead-lettered, and all succeed after the fake recovers."""
    async with drill(services, tmp_path, "retry-after", VOXLINE_HTTP_PORT="0") as run:
        feeder, member = await under_way(run)
        tomorrow = email.utils.format_datetime(
            dt.datetime.now(dt.UTC) + dt.timedelta(days=1), usegmt=True
        )

        async def refused(status: int, times: int, opens: int) -> bool:
            if answered(await run.fake.stats(), status) < times:
                return False
            return breaker_opened(await member.scrape(), "openai") >= opens

        began, ended = await outage(
            run,
            feeder,
            [
                (
                    {"fail_status": 429, "retry_after": "86400"},
                    lambda: refused(429, 5, 1),
                    "429s with a day-long Retry-After and the breaker open",
                ),
                (
                    {"fail_status": 503, "retry_after": tomorrow},
                    lambda: refused(503, 1, 2),
                    "a probe answered 503 until tomorrow",
                ),
            ],
            {"fail_status": None, "retry_after": None},
        )
        stats = await finish(run, feeder, member, capsys, began, ended)
        assert answered(stats, 429) >= 5
        assert answered(stats, 503) >= 1


# -- reference audio ------------------------------------------------------------------------------

REFS_BUCKET = "voxline-refs"


@pytest.fixture
async def refs(services: Services) -> AsyncIterator[str]:
    """A unique prefix in the reference bucket holding ``voice.wav`` (1 s, 24 kHz); removed
    after the test."""
    prefix = f"faults/refs-{uuid.uuid4().hex[:8]}/"
    async with aioboto3.Session().client(
        "s3", endpoint_url=services.s3_endpoint_url, region_name="us-east-1"
    ) as s3:
        try:
            await s3.head_bucket(Bucket=REFS_BUCKET)
        except botocore.exceptions.ClientError:
            await s3.create_bucket(Bucket=REFS_BUCKET)
        voice = wav_bytes(tone(1000, 24000, 400), 24000)
        await s3.put_object(Bucket=REFS_BUCKET, Key=f"{prefix}voice.wav", Body=voice)
        try:
            yield f"s3://{REFS_BUCKET}/{prefix}"
        finally:
            await s3.delete_object(Bucket=REFS_BUCKET, Key=f"{prefix}voice.wav")


async def test_a_missing_reference_object_fails_only_its_request(
    services: Services, tmp_path: Path, capsys: pytest.CaptureFixture[str], refs: str
) -> None:
    """Fish Speech with reference audio: requests naming an object that does not exist in an
    allowed bucket are dead-lettered ``invalid_input``; every other request of the backend
    (with the reference that exists, or none) succeeds; the breaker never opens."""
    async with drill(
        services,
        tmp_path,
        "missing-ref",
        family="fish",
        VOXLINE_REFERENCE_BUCKETS=REFS_BUCKET,
        VOXLINE_HTTP_PORT="0",
    ) as run:
        records, missing = [], set()
        for i in range(40):
            rid = f"{run.name}-{i:03d}"
            body: dict[str, Any] = {"request_id": rid, "text": f"Cloned voice, request {i}."}
            if i % 10 == 3:
                body["voice"] = {
                    "reference": {"audio_uri": f"{refs}missing-{i}.wav", "text": "Hi."}
                }
                missing.add(rid)
            elif i % 2:
                body["voice"] = {"reference": {"audio_uri": f"{refs}voice.wav", "text": "Hi."}}
            records.append((rid.encode(), json.dumps(body).encode()))
        await produce(run.settings, records)
        ids = {k.decode() for k, _ in records}
        member = await run.fleet.start()
        await run.completions.wait_all(ids, timeout=240)
        opened_times = breaker_opened(await member.scrape(), "fish")
        report = await run.account(ids)
        letters = await read_dead_letters(run.settings.kafka)
        report_and_check(run, report, capsys, breaker_opened=opened_times, recovery_s=None)
        assert set(report.failed_ids) == missing
        assert dict(report.failed_reasons) == {"invalid_input": len(missing)}
        assert {d.header("dlq.error.type") for d in letters} == {"reference_not_found"}
        assert report.succeeded == len(ids) - len(missing)
        assert opened_times == 0, "a request's missing reference opened the backend's breaker"
