"""The fault suite's machinery: the fake backend and ``voxline run`` as subprocesses, a live view
of the completion topic, control of the local broker and store, hostile records, figures."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import itertools
import json
import os
import random
import signal
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.client import AIOKafkaClient, ConnectionGroup, CoordinationType
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.commit import OffsetFetchRequest
from prometheus_client.parser import text_string_to_metric_families

from processor.errors import InvalidInput
from processor.kafka.consumer import Committed
from processor.kafka.records import end_offsets
from processor.kafka.topics import ensure_topics
from processor.ops.reconcile import Report, reconcile
from processor.request import parse_request
from processor.settings import Settings
from tests.faults.kills import (
    Crash,
    CrashCost,
    PartitionCommit,
    acknowledged,
    costs,
    event_stamps,
)
from tests.integration.harness import unique_settings
from tests.integration.services import Services

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
PARTITIONS = 4
#: Fake speech server defaults: quick, a little jittery, short audio (small objects).
#: 60 ms a character: a voice's pace, which the quality gate (on by default) checks.
FAKE_ARGS = ("--latency-ms", "30", "--jitter-ms", "15", "--ms-per-char", "60")


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
    """``python -m tests.fakes.<family>_server`` in its own process, driven over HTTP."""

    proc: asyncio.subprocess.Process
    url: str

    @classmethod
    async def start(cls, log: Path, *args: str, family: str = "openai") -> FakeBackend:
        with log.open("ab") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                f"tests.fakes.{family}_server",
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


#: The line ``voxline run`` logs once /healthz, /readyz and /metrics are served.
SERVING = "serving /healthz, /readyz, /metrics"


@dataclasses.dataclass
class Processor:
    name: str
    proc: asyncio.subprocess.Process
    log: Path
    started: float
    #: Where it serves /metrics (``VOXLINE_HTTP_PORT=0``: a free port, read from its log).
    port: int | None = None

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def logged(self) -> list[dict[str, Any]]:
        """Its JSON log lines so far (a line a kill cut short is left out)."""
        entries = []
        for line in self.log_text().splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                entries.append(entry)
        return entries

    async def http_port(self, timeout: float = 60) -> int:
        """The port it serves /metrics on, once it does (run it with VOXLINE_HTTP_PORT=0)."""
        give_up = time.monotonic() + timeout
        while self.port is None:
            for entry in self.logged():
                if entry.get("event") == SERVING:
                    self.port = int(entry["port"])
            if self.port is not None:
                break
            if not self.running or time.monotonic() > give_up:
                tail = self.log_text()[-2000:]
                raise AssertionError(f"{self.name} never served /metrics: {tail}")
            await asyncio.sleep(0.1)
        return self.port

    async def scrape(self) -> Scrape:
        """Its /metrics now."""
        port = await self.http_port()
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(f"http://127.0.0.1:{port}/metrics")
        response.raise_for_status()
        return Scrape.parse(response.text)


@dataclasses.dataclass(frozen=True, slots=True)
class Scrape:
    """One read of a processor's /metrics: (sample name, labels, value) each."""

    samples: tuple[tuple[str, Mapping[str, str], float], ...]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        return cls(
            tuple(
                (sample.name, dict(sample.labels), float(sample.value))
                for family in text_string_to_metric_families(text)
                for sample in family.samples
            )
        )

    def value(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples carrying ``labels`` (0 when there are none)."""
        return sum(
            value
            for sample, have, value in self.samples
            if sample == name and all(have.get(k) == v for k, v in labels.items())
        )


def breaker_opened(scrape: Scrape, backend: str) -> int:
    """How many times ``backend``'s circuit breaker opened (a failed probe opens it again)."""
    return int(scrape.value("voxline_breaker_transitions_total", backend=backend, to="open"))


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

    def published_since(self, moment: float) -> int:
        """Events stamped at or after ``moment`` (wall clock): the work of processes started
        since."""
        return sum(e.timestamp_ms >= moment * 1000 for e in self.events)

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


#: Kafka headers as a producer writes them (a value may be null).
HeaderList = Sequence[tuple[str, bytes | None]]


async def produce(
    settings: Settings,
    records: Sequence[tuple[bytes | None, bytes | None]],
    *,
    headers: Sequence[HeaderList] | None = None,
) -> list[tuple[int, int]]:
    """Send in order (``headers``: each record's); returns each record's (partition, offset)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        max_request_size=2 * 2**20,
    )
    each = [list(h) for h in headers] if headers is not None else [[] for _ in records]
    await producer.start()
    try:
        futures = [
            await producer.send(settings.kafka.request_topic, key=k, value=v, headers=h)
            for (k, v), h in zip(records, each, strict=True)
        ]
        metas = [await f for f in futures]
    finally:
        await producer.stop()
    return [(int(m.partition), int(m.offset)) for m in metas]


#: A condition a scenario waits for: plain, or one that has to ask (a processor's /metrics).
Condition = Callable[[], bool | Awaitable[bool]]


async def holds(condition: Condition) -> bool:
    answer = condition()
    return await answer if inspect.isawaitable(answer) else bool(answer)


class Feeder:
    """Sends requests as the run needs them: while the scenario's steps take place it keeps
    ``backlog`` requests outstanding, making more as long as the steps last (so the run cannot
    end before they do); ``finish`` then sends a last ``tail`` of them."""

    def __init__(self, run: Drill, *, backlog: int = 40, tail: int = 150) -> None:
        self.run = run
        self.backlog = backlog
        self.tail = tail
        self.ids: set[str] = set()
        #: Where each request landed: (partition, offset).
        self.where: dict[str, tuple[int, int]] = {}

    async def send(self, count: int) -> None:
        start = len(self.ids)
        batch = [valid_request(f"{self.run.name}-{i:05d}", i) for i in range(start, start + count)]
        placed = await produce(self.run.settings, batch)
        for (key, _), at in zip(batch, placed, strict=True):
            self.ids.add(key.decode())
            self.where[key.decode()] = at

    async def step(self, done: Condition, *, what: str, timeout: float = 120) -> float:
        """Keep the backlog topped up until ``done()``; returns when (wall clock)."""
        give_up = time.monotonic() + timeout
        while True:
            await self.run.completions.refresh()
            if await holds(done):
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


# -- the group's commits ------------------------------------------------------------------------


class GroupCommits:
    """What the drill's consumer group has committed on the request topic, with the commit
    metadata: what the next owner of each partition inherits. Reads only (it never joins).

    Asks the group coordinator itself: aiokafka's own ``committed`` ignores OffsetFetch's
    top-level error, so while a restarted broker is still loading the group it reads "nothing
    committed" (a group member only asks after joining, by which time the group is loaded)."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.kafka.request_topic
        self.group = settings.kafka.group_id
        self._client = AIOKafkaClient(bootstrap_servers=settings.kafka.bootstrap_servers)

    async def __aenter__(self) -> GroupCommits:
        await self._client.bootstrap()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.close()

    async def read(self, timeout: float = 60) -> dict[int, Committed | None]:
        """Per partition: offset and metadata, or None where nothing was committed (asked
        again while the coordinator is not ready, for instance just after a restart)."""
        give_up = time.monotonic() + timeout
        while True:
            try:
                return await self._read()
            except KafkaError as exc:
                if not exc.retriable or time.monotonic() > give_up:
                    raise
                await asyncio.sleep(0.5)

    async def _read(self) -> dict[int, Committed | None]:
        node = await self._client.coordinator_lookup(CoordinationType.GROUP, self.group)
        request = OffsetFetchRequest(self.group, [(self.topic, list(range(PARTITIONS)))])
        response: Any = await self._client.send(node, request, group=ConnectionGroup.COORDINATION)
        top = getattr(response, "error_code", 0)
        if top:
            raise for_code(top)()
        out: dict[int, Committed | None] = dict.fromkeys(range(PARTITIONS))
        for _, parts in response.topics:
            for partition, offset, metadata, error in parts:
                if error:
                    raise for_code(error)()
                if offset >= 0:
                    out[partition] = Committed(offset, metadata or "")
        return out


async def stalled(settings: Settings) -> dict[int, tuple[int | None, int]]:
    """Partitions of the request topic whose committed offset is short of their end (a record
    that never finished holds its partition back): partition -> (committed, end)."""
    async with GroupCommits(settings) as commits:
        committed = await commits.read()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    try:
        ends = await end_offsets(consumer, settings.kafka.request_topic)
    finally:
        await consumer.stop()
    out = {}
    for tp, end in ends.items():
        at = committed.get(tp.partition)
        if (at.offset if at else 0) < end:
            out[tp.partition] = (at.offset if at else None, end)
    return out


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
        behind = await stalled(self.settings)
        report = await reconcile(self.settings.kafka, self.settings.store, verify_content=True)
        self.figures.update(
            scenario=self.name,
            topics=self.settings.kafka.request_topic.removesuffix(".requests"),
            requests=report.requests,
            succeeded=report.succeeded,
            dead_lettered=report.failed,
            dead_lettered_by_reason=dict(report.failed_reasons),
            dead_letter_records=report.dead_letter_records,
            lost=report.lost,
            duplicates=report.duplicates,
            duplicates_allowed=self.figures.get("duplicates_allowed", 0),
            conflicts=report.conflicts,
            missing_objects=report.missing_objects,
            bad_objects=report.bad_objects,
            orphans=report.orphans,
            objects_hashed=report.objects_downloaded,
            longest_pause_s=round(self.completions.longest_gap(), 2),
            wall_s=round(time.time() - self.began, 1),
            all_outcomes_seen=complete,
            stalled_partitions={str(p): list(at) for p, at in behind.items()},
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
    family: str = "openai",
    config: str | None = None,
    **env: str | None,
) -> AsyncIterator[Drill]:
    """Fresh topics, group and prefix; the fake backend (``family``: its module under
    tests/fakes/ and the processor's VOXLINE_BACKEND); an empty fleet. ``config``: a TOML
    backends file (``{url}`` is replaced by the fake's URL) passed as VOXLINE_CONFIG."""
    settings = unique_settings(services, f"fault-{name}-{uuid.uuid4().hex[:4]}")
    k = settings.kafka
    await ensure_topics(k, [k.request_topic, k.completion_topic, k.dlq_topic], PARTITIONS)
    fake = await FakeBackend.start(tmp / "fake.log", *fake_args, family=family)
    if config is not None:
        path = tmp / "backends.toml"
        path.write_text(config.replace("{url}", fake.url), encoding="utf-8")
        env["VOXLINE_CONFIG"] = str(path)
    env.setdefault("VOXLINE_BACKEND", family)
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


# -- what every scenario shares ------------------------------------------------------------------


async def send(run: Drill, n: int) -> set[str]:
    """``n`` valid requests of the drill, at once; returns their ids."""
    records = valid_requests(run.name, n)
    await produce(run.settings, records)
    return {k.decode() for k, _ in records}


def report_and_check(
    run: Drill, report: Report, capsys: pytest.CaptureFixture[str], **extra: Any
) -> None:
    """Record and print the figures, then assert the delivery promise held."""
    run.figures.update(extra)
    line = record_figures(run.figures)
    with capsys.disabled():
        print(f"\n[fault figures] {line}")
    problems = {k: v for k, v in report.to_json().items() if k.endswith("_ids") and v}
    detail = f"{run.figures}\nproblem ids (first 10 each): " + str(
        {k: v[:10] for k, v in problems.items() if k not in ("failed_ids", "duplicate_ids")}
    )
    assert report.lost == 0, detail
    assert report.conflicts == 0, detail
    assert report.missing_objects == 0, detail
    assert report.bad_objects == 0, detail
    assert report.missing_dead_letters == 0, detail
    assert report.bad_dead_letters == 0, detail
    assert report.orphans == 0, detail
    assert report.unreadable_events == 0, detail
    assert not run.figures["stalled_partitions"], f"partitions left behind; {detail}"
    assert report.ok


def seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


async def under_way(run: Drill, n: int, *, outcomes: int = 100) -> set[str]:
    """Send ``n`` requests, start the fleet and wait for the first ``outcomes``: the state in
    which an outage scenario begins its fault."""
    ids = await send(run, n)
    await run.fleet.start()
    await run.completions.wait_count(outcomes, timeout=120)
    return ids


async def check_after_outage(
    run: Drill,
    ids: set[str],
    capsys: pytest.CaptureFixture[str],
    outage: tuple[float, float],
    *,
    timeout: float = 240,
    **extra: Any,
) -> Report:
    """Account for every request after an outage (``began``, ``ended``: wall clock), record
    its figures (how long, recovery, drain) and check the delivery promise; nothing may have
    been dead-lettered for it."""
    began, ended = outage
    report = await run.account(ids, timeout=timeout)
    report_and_check(
        run,
        report,
        capsys,
        outage_s=round(ended - began, 1),
        **extra,
        recovery_s=seconds(run.completions.resumed_after(ended)),
        drain_s=seconds(run.completions.drained_after(ended, ids)),
    )
    assert report.failed == report.dead_letter_records == 0
    return report


def reached(run: Drill, count: int) -> Callable[[], bool]:
    """Whether ``count`` requests have an outcome."""
    return lambda: len(run.completions.first) >= count


def worked(run: Drill, member: Processor, count: int) -> Callable[[], bool]:
    """Whether ``count`` events were published since ``member`` started."""
    return lambda: run.completions.published_since(member.started) >= count


def logged(member: Processor, text: str) -> Callable[[], bool]:
    return lambda: text in member.log_text()


# -- crashes: what each one cost ------------------------------------------------------------------


async def crashed(
    run: Drill,
    member: Processor,
    number: int,
    commits: GroupCommits,
    in_flight: int | None,
    *,
    died: float | None = None,
) -> Crash:
    """``member`` has ended without handing over (``died``: when it was seen gone, wall clock;
    default now): what it leaves the next process (read before one starts)."""
    assert not member.running, f"{member.name} is still running"
    died_ms = int((time.time() if died is None else died) * 1000)
    read = await commits.read()
    return Crash(
        number,
        died_ms,
        died_ms - int(member.started * 1000),
        in_flight,
        {p: PartitionCommit.of(c) for p, c in read.items()},
        acknowledged(member.logged(), run.settings.kafka.request_topic),
    )


def record_window(member: Processor) -> int:
    """The record window a processor logged at start-up (the most it ever holds)."""
    for entry in member.logged():
        if entry.get("event") == "processor starting":
            return int(entry["record_window"])
    raise AssertionError(f"{member.name} logged no start-up line")


async def crash_costs(
    run: Drill, crashes: Sequence[Crash], where: Mapping[str, tuple[int, int]]
) -> tuple[list[CrashCost], list[str]]:
    """Each crash's figures (once the run is over and every event is in), and the duplicates
    no crash explains."""
    await run.completions.refresh()
    stamps = event_stamps((e.request_id, e.timestamp_ms) for e in run.completions.events)
    return costs(crashes, int(run.began * 1000), stamps, where)


def check_crash_costs(figures: Sequence[CrashCost], uncharged: Sequence[str], window: int) -> None:
    """Every duplicate is a record the crash stranded: in flight (at most the record window)
    or finished after the last commit that landed; the commit was a snapshot."""
    for c in figures:
        detail = f"crash {c.number}: {c.to_json()}"
        assert not c.unexplained, f"records the commit covered were redone; {detail}"
        assert not c.out_of_order, f"a commit that is not a snapshot; {detail}"
        assert c.unacknowledged <= window, detail
        assert c.duplicates <= c.allowed, detail
    assert not uncharged, f"duplicates no crash explains: {sorted(set(uncharged))[:10]}"


def crash_table(figures: Sequence[CrashCost]) -> str:
    """Per crash: in flight (gauge), stranded (unacknowledged + finished after the last
    commit), duplicates, and what a bare offset would have left to redo."""
    head = (
        f"{'crash':>5} {'lived_ms':>8} {'in_flight':>9} {'unacked':>7} {'after_commit':>12} "
        f"{'(ms)':>6} {'allowed':>7} {'duplicates':>10} {'bare_offset':>11}"
    )
    rows = [
        f"{c.number:>5} {c.lived_ms:>8} {c.in_flight if c.in_flight is not None else '-':>9} "
        f"{c.unacknowledged:>7} {c.finished_after_commit:>12} "
        f"{c.finished_after_commit_ms if c.finished_after_commit_ms is not None else '-':>6} "
        f"{c.allowed:>7} {c.duplicates:>10} {c.without_metadata:>11}"
        for c in figures
    ]
    return "\n".join([head, *rows])
