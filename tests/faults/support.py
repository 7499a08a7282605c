"""The fault suite's machinery: the fake backend and ``voxline run`` as subprocesses, a live view
of the completion topic, control of the local broker and store, hostile records, figures."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import random
import signal
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from processor.errors import InvalidInput
from processor.kafka.records import end_offsets
from processor.kafka.topics import ensure_topics
from processor.ops.reconcile import Report, reconcile
from processor.request import parse_request
from processor.settings import Settings
from tests.integration.harness import unique_settings
from tests.integration.services import Services

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
PARTITIONS = 4
#: Fake speech server defaults: quick, a little jittery, short audio (small objects).
FAKE_ARGS = ("--latency-ms", "30", "--jitter-ms", "15", "--ms-per-char", "5")


def results_path() -> Path:
    """Where each scenario's figures are appended, one JSON line per scenario."""
    configured = os.environ.get("VOXLINE_FAULTS_RESULTS")
    if configured:
        return Path(configured)
    state = Path(os.environ.get("VOXLINE_INFRA_DIR", ROOT / ".infra"))
    return state / "faults.jsonl"


# -- the fake backend ---------------------------------------------------------------------------


@dataclasses.dataclass
class FakeBackend:
    """``python -m tests.fakes.openai_server`` in its own process, driven over HTTP."""

    proc: asyncio.subprocess.Process
    url: str

    @classmethod
    async def start(cls, log: Path, *args: str) -> FakeBackend:
        with log.open("ab") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.fakes.openai_server",
                "--port",
                "0",
                *args,
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        if not line.startswith(b"LISTENING "):
            proc.kill()
            await proc.wait()
            raise AssertionError(f"fake backend did not start: {line!r} {_tail(log)}")
        return cls(proc, f"http://127.0.0.1:{int(line.split()[1])}")

    async def control(self, **switches: Any) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            response = await client.post("/control", json=switches)
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    async def stats(self) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            response = await client.get("/stats")
        stats: dict[str, Any] = response.json()
        return stats

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout=10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def _tail(log: Path, chars: int = 2000) -> str:
    return log.read_text(encoding="utf-8", errors="replace")[-chars:]


# -- processors ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Processor:
    name: str
    proc: asyncio.subprocess.Process
    log: Path
    started: float

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@dataclasses.dataclass
class Fleet:
    """``voxline run`` processes of one consumer group, started and ended by the test."""

    settings: Settings
    env: dict[str, str]
    log_dir: Path
    members: list[Processor] = dataclasses.field(default_factory=list)

    async def start(self, name: str | None = None) -> Processor:
        name = name or f"p{len(self.members) + 1}"
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "processor",
                "run",
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=out,
            )
        member = Processor(name, proc, log, time.time())
        self.members.append(member)
        return member

    async def kill(self, member: Processor) -> None:
        """SIGKILL: no drain, no commit, no goodbye to the group."""
        member.proc.send_signal(signal.SIGKILL)
        await member.proc.wait()

    async def terminate(self, member: Processor, timeout: float = 60) -> int:
        member.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(member.proc.wait(), timeout=timeout)

    async def stop_all(self, timeout: float = 60) -> dict[str, int]:
        """SIGTERM to every live member; SIGKILL for any that outstays ``timeout``."""
        live = [m for m in self.members if m.running]
        for member in live:
            member.proc.send_signal(signal.SIGTERM)
        codes: dict[str, int] = {}
        for member in live:
            try:
                codes[member.name] = await asyncio.wait_for(member.proc.wait(), timeout=timeout)
            except TimeoutError:
                member.proc.kill()
                codes[member.name] = await member.proc.wait()
        return codes

    def errors_logged(self) -> int:
        return sum(m.log_text().count('"level": "error"') for m in self.members)

    def tails(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {m.name} ---\n{m.log_text()[-chars:]}" for m in self.members)


def processor_env(settings: Settings, backend_url: str, **extra: str | None) -> dict[str, str]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "VOXLINE_GROUP_ID": settings.kafka.group_id,
        "VOXLINE_REQUEST_TOPIC": settings.kafka.request_topic,
        "VOXLINE_COMPLETION_TOPIC": settings.kafka.completion_topic,
        "VOXLINE_DLQ_TOPIC": settings.kafka.dlq_topic,
        "S3_ENDPOINT_URL": settings.store.endpoint_url or "",
        "S3_BUCKET": settings.store.bucket,
        "S3_PREFIX": settings.store.prefix,
        "AWS_REGION": settings.store.region or "us-east-1",
        "VOXLINE_BACKEND": "openai",
        "VOXLINE_BACKEND_URL": backend_url,
        "VOXLINE_MAX_IN_FLIGHT": "8",
        "VOXLINE_DRAIN_TIMEOUT": "10",
        "VOXLINE_HTTP_PORT": "-1",
        "VOXLINE_LOG_LEVEL": "info",
        "VOXLINE_LOG_FORMAT": "json",
    }
    env.pop("VOXLINE_CONFIG", None)  # unless the drill passes one in ``extra``
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


# -- the completion topic, live -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Seen:
    request_id: str
    status: str
    timestamp_ms: int


class Completions:
    """Every completion event so far, read incrementally (``refresh``) from the beginning."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.events: list[Seen] = []
        self.first: dict[str, Seen] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._tps: list[TopicPartition] = []

    async def open(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        ends = await end_offsets(consumer, self.settings.kafka.completion_topic)
        self._tps = list(ends)
        consumer.assign(self._tps)
        await consumer.seek_to_beginning(*self._tps)
        self._consumer = consumer
        self.events.clear()
        self.first.clear()

    async def close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            self._consumer = None

    async def refresh(self) -> int:
        """Read up to the topic's current end; returns how many requests have an outcome."""
        consumer = self._consumer
        assert consumer is not None, "Completions used while closed"
        todo = {tp: end for tp, end in (await consumer.end_offsets(self._tps)).items()}
        for tp in list(todo):
            if await consumer.position(tp) >= todo[tp]:
                del todo[tp]
        while todo:
            batch = await consumer.getmany(*todo, timeout_ms=500)
            for messages in batch.values():
                for m in messages:
                    body = json.loads(m.value)
                    seen = Seen(body["request_id"], body["status"], m.timestamp)
                    self.events.append(seen)
                    self.first.setdefault(seen.request_id, seen)
            for tp in list(todo):
                if await consumer.position(tp) >= todo[tp]:
                    del todo[tp]
        return len(self.first)

    async def wait_count(self, count: int, *, timeout: float, every: float = 0.2) -> float:
        """Poll until ``count`` requests have an outcome; returns when (wall clock)."""
        give_up = time.monotonic() + timeout
        while await self.refresh() < count:
            if time.monotonic() > give_up:
                raise AssertionError(
                    f"timed out after {timeout:.0f} s waiting for {count} outcomes "
                    f"({len(self.first)} so far)"
                )
            await asyncio.sleep(every)
        return time.time()

    async def wait_all(self, ids: set[str], *, timeout: float) -> bool:
        """Poll until every id has an outcome; False (not an error) when time runs out, so
        the accounting that follows can say what is missing."""
        give_up = time.monotonic() + timeout
        while not ids <= set(self.first):
            if time.monotonic() > give_up:
                return False
            await asyncio.sleep(0.5)
            await self.refresh()
        return True

    def resumed_after(self, moment: float) -> float | None:
        """Seconds from ``moment`` (wall clock) to the first event published after it."""
        after = [e.timestamp_ms for e in self.events if e.timestamp_ms >= moment * 1000]
        return None if not after else (min(after) - moment * 1000) / 1000

    def drained_after(self, moment: float, ids: Iterable[str]) -> float | None:
        """Seconds from ``moment`` until the last of ``ids`` had its first outcome."""
        firsts = [self.first[i].timestamp_ms for i in ids if i in self.first]
        return None if not firsts else max(0.0, (max(firsts) - moment * 1000) / 1000)

    def longest_gap(self) -> float:
        """The longest pause between consecutive outcomes, seconds."""
        stamps = sorted(e.timestamp_ms for e in self.events)
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        return max(gaps, default=0) / 1000


# -- requests -----------------------------------------------------------------------------------


def valid_request(rid: str, i: int) -> tuple[bytes, bytes]:
    text = f"Fault drill request {i}: nothing may be lost."
    return rid.encode(), json.dumps({"request_id": rid, "text": text}).encode()


def valid_requests(prefix: str, n: int) -> list[tuple[bytes, bytes]]:
    return [valid_request(f"{prefix}-{i:05d}", i) for i in range(n)]


async def produce(
    settings: Settings, records: Sequence[tuple[bytes | None, bytes | None]]
) -> list[tuple[int, int]]:
    """Send in order; returns each record's (partition, offset)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        max_request_size=2 * 2**20,
    )
    await producer.start()
    try:
        futures = [
            await producer.send(settings.kafka.request_topic, key=k, value=v) for k, v in records
        ]
        metas = [await f for f in futures]
    finally:
        await producer.stop()
    return [(int(m.partition), int(m.offset)) for m in metas]


class Feeder:
    """Sends requests as the run needs them: while the scenario's steps take place it keeps
    ``backlog`` requests outstanding, making more as long as the steps last (so the run cannot
    end before they do); ``finish`` then sends a last ``tail`` of them."""

    def __init__(self, run: Drill, *, backlog: int = 40, tail: int = 150) -> None:
        self.run = run
        self.backlog = backlog
        self.tail = tail
        self.ids: set[str] = set()

    async def send(self, count: int) -> None:
        start = len(self.ids)
        batch = [valid_request(f"{self.run.name}-{i:05d}", i) for i in range(start, start + count)]
        await produce(self.run.settings, batch)
        self.ids.update(k.decode() for k, _ in batch)

    async def step(self, done: Callable[[], bool], *, what: str, timeout: float = 120) -> float:
        """Keep the backlog topped up until ``done()``; returns when (wall clock)."""
        give_up = time.monotonic() + timeout
        while True:
            await self.run.completions.refresh()
            if done():
                return time.time()
            if time.monotonic() > give_up:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            outstanding = len(self.ids) - len(self.run.completions.first)
            if outstanding < self.backlog:
                await self.send(self.backlog - outstanding)
            await asyncio.sleep(0.2)

    async def finish(self) -> set[str]:
        await self.send(self.tail)
        return set(self.ids)


@dataclasses.dataclass(frozen=True, slots=True)
class Hostile:
    key: bytes | None
    value: bytes
    #: The request_id the processor will publish its failure under; None: the coordinates.
    expected_id: str | None
    kind: str


def hostile_record(rng: random.Random, hid: str) -> Hostile:
    """One record the processor must dead-letter as invalid_input (checked here, too)."""
    kind = rng.choice(HOSTILE_KINDS)
    record = _HOSTILE[kind](rng, hid)
    try:
        parse_request(record.value)
    except InvalidInput:
        return record
    raise AssertionError(f"hostile record of kind {kind} parses: {record.value[:200]!r}")


def _random_bytes(rng: random.Random, hid: str) -> Hostile:
    junk = bytes(rng.randrange(256) for _ in range(rng.randint(16, 300)))
    return Hostile(hid.encode(), junk + b"\xff\xfe", hid, "random_bytes")


def _deep_json(rng: random.Random, hid: str) -> Hostile:
    depth = rng.randint(2_000, 60_000)
    nest = "[" * depth + "]" * depth
    return Hostile(
        hid.encode(),
        f'{{"request_id": "{hid}", "text": "deep", "params": {nest}}}'.encode(),
        hid,
        "deep_json",
    )


def _deep_json_no_id(rng: random.Random, hid: str) -> Hostile:
    depth = rng.randint(2_000, 60_000)
    return Hostile(None, ("{" + '"a":{' * depth + "}" * (depth + 1)).encode(), None, "deep_no_id")


def _huge_text(rng: random.Random, hid: str) -> Hostile:
    text = rng.choice("abc ") * rng.randint(20_001, 400_000)
    return Hostile(
        hid.encode(), json.dumps({"request_id": hid, "text": text}).encode(), hid, "huge_text"
    )


def _huge_metadata(rng: random.Random, hid: str) -> Hostile:
    value = json.dumps({"request_id": hid, "text": "x", "metadata": {"k": "v" * 5_000}})
    return Hostile(hid.encode(), value.encode(), hid, "huge_metadata")


def _control_chars(rng: random.Random, hid: str) -> Hostile:
    raw = bytes(rng.choice([0, 1, 7, 8, 11, 27, 31]) for _ in range(rng.randint(1, 5)))
    if rng.random() < 0.5:  # raw control bytes inside a JSON string: not JSON
        value = b'{"request_id": "' + hid.encode() + b'", "text": "a' + raw + b'b"}'
        return Hostile(hid.encode(), value, hid, "control_in_text")
    bad_id = hid + raw.decode("ascii")  # escaped: valid JSON, an id the schema refuses
    value = json.dumps({"request_id": bad_id, "text": "x"}).encode()
    return Hostile(hid.encode(), value, hid, "control_in_id")


def _wrong_types(rng: random.Random, hid: str) -> Hostile:
    body = rng.choice(
        [
            {"request_id": hid, "text": 42},
            {"request_id": hid, "text": ["a", "b"]},
            {"request_id": hid, "text": "x", "format": 7},
            {"request_id": hid, "text": "x", "sample_rate": "fast"},
            {"request_id": hid, "text": "x", "metadata": {"a": 1}},
            {"request_id": hid, "text": "x", "voice": "alice"},
            {"request_id": hid, "text": "x", "deadline": "tomorrow"},
            {"request_id": hid, "text": ""},
            {"request_id": hid},
        ]
    )
    return Hostile(hid.encode(), json.dumps(body).encode(), hid, "wrong_types")


def _not_an_object(rng: random.Random, hid: str) -> Hostile:
    value = rng.choice([[hid], "request", None, 42, True, [{"request_id": hid, "text": "x"}]])
    return Hostile(hid.encode(), json.dumps(value).encode(), hid, "not_an_object")


def _garbage_key(rng: random.Random, hid: str) -> Hostile:
    key = b"\xff/" + bytes(rng.randrange(256) for _ in range(8))
    return Hostile(key, b"not json at all " + hid.encode(), None, "garbage_key")


_HOSTILE = {
    "random_bytes": _random_bytes,
    "deep_json": _deep_json,
    "deep_no_id": _deep_json_no_id,
    "huge_text": _huge_text,
    "huge_metadata": _huge_metadata,
    "control_chars": _control_chars,
    "wrong_types": _wrong_types,
    "not_an_object": _not_an_object,
    "garbage_key": _garbage_key,
}
HOSTILE_KINDS = tuple(_HOSTILE)


# -- the broker and the store -------------------------------------------------------------------


def infra_env(services: Services) -> dict[str, str]:
    """The environment infra/*.sh need to act on the services the tests use."""
    env = dict(os.environ)
    kafka_port = services.bootstrap_servers.split(",")[0].rsplit(":", 1)[1]
    env.setdefault("KAFKA_PORT", kafka_port)
    s3_port = urlsplit(services.s3_endpoint_url).port
    if s3_port is not None:
        env.setdefault("S3_PORT", str(s3_port))
    return env


async def infra(services: Services, script: str, command: str, *, timeout: float = 180) -> str:
    """Run ``infra/<script> <command>``; returns its output, fails the test on a non-zero exit
    (``status`` excepted: its exit code is the answer)."""
    proc = await asyncio.create_subprocess_exec(
        str(INFRA / script),
        command,
        cwd=ROOT,
        env=infra_env(services),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    text = out.decode(errors="replace")
    if command != "status":
        assert proc.returncode == 0, f"infra/{script} {command} failed:\n{text}"
    elif proc.returncode != 0:
        raise AssertionError(
            f"infra/{script} does not run the service these tests use ({text.strip()}); "
            "the broker/store faults need services started by infra/ (set VOXLINE_INFRA_DIR "
            "and the *_PORT variables to the instance the tests use)"
        )
    return text


# -- one drill: topics, the fake, the fleet, the accounting -------------------------------------


@dataclasses.dataclass
class Drill:
    name: str
    services: Services
    settings: Settings
    fake: FakeBackend
    fleet: Fleet
    completions: Completions
    tmp: Path
    began: float = dataclasses.field(default_factory=time.time)
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)

    async def account(self, ids: set[str], *, timeout: float = 240) -> Report:
        """Wait (bounded) for every outcome, stop the fleet, then reconcile everything."""
        complete = await self.completions.wait_all(ids, timeout=timeout)
        codes = await self.fleet.stop_all()
        report = await reconcile(self.settings.kafka, self.settings.store, verify_content=True)
        self.figures.update(
            scenario=self.name,
            topics=self.settings.kafka.request_topic.removesuffix(".requests"),
            requests=report.requests,
            succeeded=report.succeeded,
            dead_lettered=report.failed,
            dead_letter_records=report.dead_letter_records,
            lost=report.lost,
            duplicates=report.duplicates,
            conflicts=report.conflicts,
            missing_objects=report.missing_objects,
            bad_objects=report.bad_objects,
            orphans=report.orphans,
            objects_hashed=report.objects_downloaded,
            longest_pause_s=round(self.completions.longest_gap(), 2),
            wall_s=round(time.time() - self.began, 1),
            all_outcomes_seen=complete,
            exit_codes=codes,
            errors_logged=self.fleet.errors_logged(),
        )
        return report


@contextlib.asynccontextmanager
async def drill(
    services: Services,
    tmp: Path,
    name: str,
    *,
    fake_args: Sequence[str] = FAKE_ARGS,
    config: str | None = None,
    **env: str | None,
) -> AsyncIterator[Drill]:
    """Fresh topics, group and prefix; the fake backend; an empty fleet. ``config``: a TOML
    backends file (``{url}`` is replaced by the fake's URL) passed as VOXLINE_CONFIG."""
    settings = unique_settings(services, f"fault-{name}-{uuid.uuid4().hex[:4]}")
    k = settings.kafka
    await ensure_topics(k, [k.request_topic, k.completion_topic, k.dlq_topic], PARTITIONS)
    fake = await FakeBackend.start(tmp / "fake.log", *fake_args)
    if config is not None:
        path = tmp / "backends.toml"
        path.write_text(config.replace("{url}", fake.url), encoding="utf-8")
        env["VOXLINE_CONFIG"] = str(path)
    fleet = Fleet(settings, processor_env(settings, fake.url, **env), tmp)
    completions = Completions(settings)
    await completions.open()
    run = Drill(name, services, settings, fake, fleet, completions, tmp)
    try:
        yield run
    except BaseException:
        sys.stderr.write(f"\n=== {name}: processor logs ===\n{fleet.tails()}\n")
        raise
    finally:
        await fleet.stop_all(timeout=30)
        await completions.close()
        await fake.stop()


#: Figures of the scenarios run in this session, for the terminal summary.
RECORDED: list[dict[str, Any]] = []


def record_figures(figures: dict[str, Any]) -> str:
    """Append one JSON line to the results file; returns the line."""
    RECORDED.append(figures)
    line = json.dumps(figures, sort_keys=False)
    path = results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.write(line + "\n")
    return line


def summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "min": round(min(values), 2),
        "median": round(statistics.median(values), 2),
        "max": round(max(values), 2),
    }
