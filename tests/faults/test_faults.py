"""Nothing lost under faults: ``voxline run`` processes against the real broker and store, a
fake backend in its own process, a fault per scenario, and the accounting check at the end.

Every scenario ends with ``processor.ops.reconcile.reconcile`` (content verified: every object
downloaded and hashed) and asserts that no request was lost, none has conflicting outcomes,
every succeeded event has its whole object and every failed one its dead letter. The figures
go to the results file (``support.results_path()``) and to the terminal. See README.md.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import signal
import time
from pathlib import Path

import pytest

from processor.ops.client import read_dead_letters
from processor.ops.reconcile import reconcile
from tests.faults import support
from tests.faults.kills import Crash
from tests.faults.support import (
    check_after_outage,
    drill,
    infra,
    logged,
    produce,
    reached,
    report_and_check,
    seconds,
    send,
    under_way,
    valid_requests,
)
from tests.integration.services import Services

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

OUTAGE_S = 30.0


# -- (a) kill -9 -------------------------------------------------------------------------------


@pytest.mark.parametrize("membership", ["dynamic", "static"])
async def test_kill_9_at_random_moments_loses_nothing(
    services: Services, tmp_path: Path, capsys: pytest.CaptureFixture[str], membership: str
) -> None:
    """11 SIGKILLs at seeded random moments, restarting at once: with dynamic membership (the
    restarted process waits out the dead member's session) and with static membership
    (VOXLINE_GROUP_INSTANCE_ID: the restarted process takes its place). Requests are fed so
    that a backlog is always waiting, however fast the machine (the run cannot end before the
    kills do). Each kill may cost duplicates only for the records it stranded (see kills.py):
    in flight, or finished after the last commit that landed."""
    rng = random.Random(20261121)
    kills = 11
    instance = f"kill9-{time.time_ns()}" if membership == "static" else None
    async with (
        drill(
            services,
            tmp_path,
            f"kill9-{membership}",
            VOXLINE_GROUP_INSTANCE_ID=instance,
            VOXLINE_HTTP_PORT="0",
        ) as run,
        support.GroupCommits(run.settings) as commits,
    ):
        feeder = support.Feeder(run, backlog=150, tail=100)
        member = first = await run.fleet.start()
        crashes: list[Crash] = []
        for number in range(1, kills + 1):
            # A random amount of work by this process, then a random instant.
            work = support.worked(run, member, rng.randint(20, 60))
            await feeder.step(work, what=f"progress before kill {number}")
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            in_flight = (await member.scrape()).value("voxline_records_in_flight")
            await run.fleet.kill(member)
            crashes.append(await support.crashed(run, member, number, commits, int(in_flight)))
            member = await run.fleet.start()
        window = support.record_window(first)
        ids = await feeder.finish()
        report = await run.account(ids)
        resumes = [run.completions.resumed_after(c.died_ms / 1000) for c in crashes]
        known = [r for r in resumes if r is not None]
        per_kill, uncharged = await support.crash_costs(run, crashes, feeder.where)
        report_and_check(
            run,
            report,
            capsys,
            kills=kills,
            membership=membership,
            duplicates_allowed=sum(c.allowed for c in per_kill),
            recovery_s=seconds(max(known, default=None)),
            resume_after_kill_s=support.summary(known),
            drain_s=seconds(run.completions.drained_after(crashes[-1].died_ms / 1000, ids)),
            per_kill=[c.to_json() for c in per_kill],
        )
        with capsys.disabled():
            print(support.crash_table(per_kill))
        assert len(known) == kills, "a kill was not followed by progress"
        assert report.failed == report.dead_letter_records == 0
        support.check_crash_costs(per_kill, uncharged, window)
        assert report.duplicates == sum(c.duplicates for c in per_kill)


# -- (b) instances joining and leaving ---------------------------------------------------------


async def test_instances_joining_and_leaving_lose_nothing(
    services: Services, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second and a third instance join mid-run; the first leaves with SIGTERM. Requests
    are fed as the run goes (a backlog of 40, then a last 150), so every change happens while
    there is work however slow the machine."""
    slower = ("--latency-ms", "100", "--jitter-ms", "50", "--ms-per-char", "60")
    async with drill(services, tmp_path, "scale", fake_args=slower) as run:
        feeder = support.Feeder(run)
        first = await run.fleet.start()
        await feeder.step(reached(run, 50), what="the first outcomes")
        for _ in range(2):
            joiner = await run.fleet.start()
            await feeder.step(logged(joiner, "partitions assigned"), what=f"{joiner.name} to join")
            await feeder.step(reached(run, len(run.completions.first) + 40), what="progress")
        code = await run.fleet.terminate(first)
        left = time.time()
        assert code == 0, first.log_text()[-3000:]
        ids = await feeder.finish()
        report = await run.account(ids)
        report_and_check(
            run,
            report,
            capsys,
            membership_changes=3,
            recovery_s=seconds(run.completions.resumed_after(left)),
            drain_s=seconds(run.completions.drained_after(left, ids)),
        )


# -- (c) backend down --------------------------------------------------------------------------


async def test_backend_down_for_30_s_dead_letters_nothing(
    services: Services, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 400
    async with drill(services, tmp_path, "backend-down") as run:
        ids = await under_way(run, n)
        await run.fake.control(down=True)
        began = time.time()
        await asyncio.sleep(OUTAGE_S)  # the fault window
        dropped = (await run.fake.control(down=False))["statuses"].get("0", 0)
        ended = time.time()
        assert dropped > 0, "the outage never reached the processor"
        await check_after_outage(run, ids, capsys, (began, ended), calls_dropped=dropped)


# -- (d) store down ----------------------------------------------------------------------------


async def test_store_down_for_30_s_dead_letters_nothing(
    services: Services, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 400
    await infra(services, "s3.sh", "status")
    async with drill(services, tmp_path, "store-down") as run:
        ids = await under_way(run, n)
        try:
            await infra(services, "s3.sh", "stop")
            began = time.time()
            await asyncio.sleep(OUTAGE_S)  # the fault window
        finally:
            await infra(services, "s3.sh", "start")
        ended = time.time()
        await check_after_outage(run, ids, capsys, (began, ended))


# -- (e) broker restart ------------------------------------------------------------------------


async def test_broker_restart_mid_run_loses_nothing(
    services: Services, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 400
    await infra(services, "kafka.sh", "status")
    async with drill(services, tmp_path, "broker-restart") as run:
        ids = await under_way(run, n)
        await run.completions.close()  # our own reader, not the processor's
        try:
            await infra(services, "kafka.sh", "stop")
            began = time.time()
        finally:
            await infra(services, "kafka.sh", "start")
        ended = time.time()
        await run.completions.open()
        await check_after_outage(run, ids, capsys, (began, ended), timeout=180)


# -- (e2) SIGTERM while the broker is down ----------------------------------------------------

#: Seconds a processor may take to exit past its drain timeout: the signal's delivery and the
#: interpreter's own exit (closing clients is part of the drain budget).
EXIT_MARGIN_S = 2.0


async def test_sigterm_during_a_broker_outage_exits_within_the_drain_timeout(
    services: Services, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM while the broker is down, work in flight: the processor exits within
    VOXLINE_DRAIN_TIMEOUT (plus a margin for the interpreter to exit), having committed what it
    could. Once the broker is back a new processor redoes the rest; nothing is lost, and the
    only duplicates are records the shutdown stranded (see kills.py)."""
    drain = 10
    await infra(services, "kafka.sh", "status")
    slower = ("--latency-ms", "150", "--jitter-ms", "50", "--ms-per-char", "60")
    async with drill(
        services,
        tmp_path,
        "term-outage",
        fake_args=slower,
        VOXLINE_DRAIN_TIMEOUT=str(drain),
        VOXLINE_HTTP_PORT="0",
    ) as run:
        feeder = support.Feeder(run, backlog=60, tail=20)
        first = await run.fleet.start()
        await feeder.step(reached(run, 20), what="the first outcomes")
        in_flight = int((await first.scrape()).value("voxline_records_in_flight"))
        await run.completions.close()  # our own reader, not the processor's
        try:
            await infra(services, "kafka.sh", "stop")
            began = time.time()
            signalled = time.monotonic()
            first.proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(first.proc.wait(), timeout=drain + 120)
            exit_s = time.monotonic() - signalled
            exited = time.time()
        finally:
            await infra(services, "kafka.sh", "start")
        ended = time.time()
        await run.completions.open()
        async with support.GroupCommits(run.settings) as commits:
            crash = await support.crashed(run, first, 1, commits, in_flight, died=exited)
        await run.fleet.start()
        ids = await feeder.finish()
        report = await run.account(ids, timeout=240)
        (shutdown,), uncharged = await support.crash_costs(run, [crash], feeder.where)
        report_and_check(
            run,
            report,
            capsys,
            drain_timeout_s=drain,
            exit_s=round(exit_s, 1),
            exit_code=code,
            outage_s=round(ended - began, 1),
            duplicates_allowed=shutdown.allowed,
            shutdown=shutdown.to_json(),
            recovery_s=seconds(run.completions.resumed_after(ended)),
            drain_s=seconds(run.completions.drained_after(ended, ids)),
        )
        assert report.failed == report.dead_letter_records == 0
        support.check_crash_costs([shutdown], uncharged, support.record_window(first))
        assert exit_s <= drain + EXIT_MARGIN_S, f"exit took {exit_s:.1f} s for a {drain} s drain"


# -- (f) a flaky backend -----------------------------------------------------------------------

#: The adapter's read timeout is only configurable per backend in a config file.
FLAKY_CONFIG = """\
default_backend = "openai"
[backends.openai]
kind = "openai"
url = "{url}"
max_in_flight = 8
timeout_s = 2.0
retry_attempts = 8
retry_timeout_s = 120
"""


async def test_flaky_backend_dead_letters_nothing_with_enough_retries(
    services: Services, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """20% random 5xx and 5% calls held past the 2 s client timeout, all run long."""
    n = 400
    flaky = (*support.FAKE_ARGS, "--error-ratio", "0.2", "--timeout-ratio", "0.05", "--seed", "7")
    async with drill(
        services,
        tmp_path,
        "flaky",
        fake_args=flaky,
        config=FLAKY_CONFIG,
        VOXLINE_RETRY_ATTEMPTS="8",
    ) as run:
        ids = await send(run, n)
        await run.fleet.start()
        report = await run.account(ids)
        stats = await run.fake.stats()
        answered = sum(stats["statuses"].values())
        errors = sum(v for k, v in stats["statuses"].items() if k.startswith("5"))
        report_and_check(
            run,
            report,
            capsys,
            backend_calls=stats["requests"],
            backend_5xx=errors,
            backend_timeouts=stats["requests"] - answered,
            recovery_s=None,
        )
        assert errors > 0
        assert stats["requests"] > answered, "no call was held past the client timeout"
        assert report.failed == report.dead_letter_records == 0


# -- (g) hostile records -----------------------------------------------------------------------


async def test_hostile_records_are_dead_lettered_and_the_rest_succeed(
    services: Services, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """10% hostile records (random bytes, deep JSON, huge strings, control characters, wrong
    types, no usable id), seeded, shuffled in among valid ones."""
    rng = random.Random(7)
    n_valid, n_hostile = 360, 40
    async with drill(services, tmp_path, "hostile") as run:
        valid = valid_requests(run.name, n_valid)
        hostile = [support.hostile_record(rng, f"hostile-{i:03d}") for i in range(n_hostile)]
        mixed: list[tuple[bytes | None, bytes | None, support.Hostile | None]] = [
            (k, v, None) for k, v in valid
        ] + [(h.key, h.value, h) for h in hostile]
        rng.shuffle(mixed)
        where = await produce(run.settings, [(k, v) for k, v, _ in mixed])
        topic = run.settings.kafka.request_topic
        expected_failed: set[str] = set()
        originals: dict[tuple[int, int], tuple[bytes | None, bytes | None]] = {}
        for (key, value, h), (partition, offset) in zip(mixed, where, strict=True):
            if h is not None:
                expected_failed.add(h.expected_id or f"{topic}:{partition}:{offset}")
                originals[(partition, offset)] = (key, value)
        ids = {k.decode() for k, _ in valid} | expected_failed
        await run.fleet.start()
        report = await run.account(ids)
        letters = await read_dead_letters(run.settings.kafka)
        kinds: dict[str, int] = {}
        for h in hostile:
            kinds[h.kind] = kinds.get(h.kind, 0) + 1
        report_and_check(run, report, capsys, hostile_kinds=kinds, recovery_s=None)
        assert set(report.failed_ids) == expected_failed
        assert report.failed_reasons == (("invalid_input", n_hostile),)
        assert report.succeeded == n_valid
        # --since: the whole run is at or after its start, nothing is after its end.
        began = dt.datetime.fromtimestamp(run.began - 1, dt.UTC)
        scoped = await reconcile(run.settings.kafka, run.settings.store, since=began)
        assert (scoped.requests, scoped.succeeded, scoped.failed) == (len(ids), n_valid, n_hostile)
        assert scoped.ok
        later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
        nothing = await reconcile(run.settings.kafka, run.settings.store, since=later)
        assert (nothing.requests, nothing.orphans, nothing.ok) == (0, 0, True)
        # Dead letters are the original records, byte for byte.
        assert len(letters) == n_hostile
        for letter in letters:
            origin = (
                int(letter.header("dlq.original.partition") or -1),
                int(letter.header("dlq.original.offset") or -1),
            )
            assert (letter.key, letter.value) == originals[origin]
