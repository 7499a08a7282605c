"""The moving parts of a benchmark run: the local services, Kafka topics, the fake backend
process and the processor processes (Voxline or a peer) with their CPU, memory and window
samples. Thin I/O; the figures are computed in :mod:`bench.measure`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import aioboto3
import httpx
import psutil
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from processor import s3
from processor.kafka import records
from processor.settings import KafkaSettings

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import ObjectIdentifierTypeDef

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

#: What infra/env.sh exports: the local services infra/up.sh starts.
SERVICE_DEFAULTS = {
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
    "S3_ENDPOINT_URL": "http://127.0.0.1:8333",
    "S3_BUCKET": "voxline-audio",
    "AWS_ACCESS_KEY_ID": "voxline",
    "AWS_SECRET_ACCESS_KEY": "voxline-secret",
    "AWS_REGION": "us-east-1",
}

#: How each processor is started (all read the same environment variables).
COMMANDS: Mapping[str, Sequence[str]] = {
    "voxline": ("-m", "processor", "run"),
    "gather": ("-m", "bench.peers.gather_batch"),
    "faststream": ("-m", "bench.peers.faststream_worker"),
}
SUCCEEDED = b'"status":"succeeded"'


def service_env() -> dict[str, str]:
    env = dict(os.environ)
    for key, value in SERVICE_DEFAULTS.items():
        env.setdefault(key, value)
    return env


def _answers(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=2):
        return True
    return False


def ensure_services(env: Mapping[str, str]) -> None:
    """Start the broker and the store with infra/up.sh unless both answer already."""
    kafka = env["KAFKA_BOOTSTRAP_SERVERS"].split(",")[0]
    store = env["S3_ENDPOINT_URL"].split("//", 1)[-1].rstrip("/")
    if not (_answers(kafka) and _answers(store)):
        subprocess.run([str(ROOT / "infra" / "up.sh")], check=True, env=dict(env))


async def delete_prefix(env: Mapping[str, str], prefix: str) -> int:
    """Delete every object under ``prefix`` in ``S3_BUCKET``; returns how many."""
    session = aioboto3.Session(
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
    )
    deletes = []
    bucket = env["S3_BUCKET"]
    async with s3.client(
        env.get("S3_ENDPOINT_URL"), env.get("AWS_REGION"), session=session
    ) as client:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        async for page in pages:
            keys: list[ObjectIdentifierTypeDef] = [
                {"Key": o["Key"]} for o in page.get("Contents", []) if "Key" in o
            ]
            if keys:
                delete = client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
                deletes.append(asyncio.ensure_future(delete))
        await asyncio.gather(*deletes)
    return sum(len(d.result().get("Deleted", [])) for d in deletes)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass(frozen=True)
class Completion:
    """One completion event: when it was published (epoch seconds), and whether it succeeded."""

    at: float
    ok: bool


class Kafka:
    """Topic admin, a fast producer for requests, and reads of completion topics."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.settings = KafkaSettings(bootstrap_servers=bootstrap)
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024, acks=1
        )
        self.consumer = records.reader(self.settings)

    async def __aenter__(self) -> Self:
        await self.admin.start()
        await self.producer.start()
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.consumer.stop()
        await self.producer.stop()
        await self.admin.close()

    async def create(
        self, topics: Sequence[str], partitions: int, configs: Mapping[str, str] | None = None
    ) -> None:
        await self.admin.create_topics(
            [
                NewTopic(t, num_partitions=partitions, replication_factor=1, topic_configs=configs)
                for t in topics
            ]
        )

    async def delete(self, topics: Sequence[str]) -> None:
        for start in range(0, len(topics), 50):
            with contextlib.suppress(Exception):
                await self.admin.delete_topics(list(topics[start : start + 50]))

    async def produce(self, topic: str, pairs: Sequence[tuple[bytes, bytes]]) -> None:
        pending = []
        for key, value in pairs:
            pending.append(await self.producer.send(topic, value=value, key=key))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)

    async def count(self, topic: str) -> int:
        """Records in ``topic`` (it only ever receives one event per request)."""
        return sum((await records.end_offsets(self.consumer, topic)).values())

    async def read(self, topic: str) -> list[Completion]:
        """Every completion event in ``topic``, oldest first."""
        events = [
            Completion(r.timestamp_ms / 1000, SUCCEEDED in (r.value or b""))
            for r in await records.read_to_end(self.settings, topic)
        ]
        events.sort(key=lambda e: e.at)
        return events


class Fake:
    """The benchmark backend (:mod:`bench.fake_tts`) as a subprocess."""

    def __init__(self, args: Sequence[str], log_path: Path) -> None:
        self.args = list(args)
        self.log_path = log_path
        self.url = self.admin = ""
        self.process: asyncio.subprocess.Process | None = None
        self.http = httpx.AsyncClient(timeout=10)

    async def __aenter__(self) -> Self:
        self.log = self.log_path.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            PYTHON,
            "-m",
            "bench.fake_tts",
            "--port",
            "0",
            *self.args,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=self.log,
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout=30)
        if not line.startswith(b"LISTENING"):
            raise RuntimeError(f"fake backend did not start (see {self.log_path})")
        # The API port closes while a crashed fake restarts; the admin port stays.
        api, admin = (f"http://127.0.0.1:{int(port)}" for port in line.split()[1:3])
        self.url, self.admin = api, admin
        self.pid = self.process.pid
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.http.aclose()
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), timeout=10)
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
        self.log.close()

    async def control(self, **changes: Any) -> dict[str, Any]:
        response = await self.http.post(f"{self.admin}/control", json=changes)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    async def stats(self) -> dict[str, Any]:
        response = await self.http.get(f"{self.admin}/stats")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the most resident memory the process has had, in MiB."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def window_limit(metrics: str) -> float | None:
    """``voxline_backend_window_limit`` from a Prometheus text page (the first backend's)."""
    for line in metrics.splitlines():
        if line.startswith("voxline_backend_window_limit{"):
            return float(line.rsplit(" ", 1)[1])
    return None


class Processor:
    """Voxline or a peer as a subprocess, sampled every ``interval`` seconds: CPU seconds
    (user + system), RSS and, for Voxline, the backend window limit from ``/metrics``."""

    def __init__(
        self,
        kind: str,
        env: Mapping[str, str],
        log_path: Path,
        *,
        metrics_port: int | None = None,
        interval: float = 0.5,
        profile_to: Path | None = None,
    ) -> None:
        self.kind = kind
        self.env = dict(env)
        self.log_path = log_path
        self.metrics_port = metrics_port
        self.interval = interval
        self.profile_to = profile_to
        self.cpu: list[tuple[float, float]] = []
        self.rss: list[tuple[float, float]] = []
        self.limits: list[tuple[float, float]] = []
        self.peak_rss_mb = float("nan")
        self.returncode: int | None = None

    def _argv(self) -> list[str]:
        command = list(COMMANDS[self.kind])
        if self.profile_to is None:
            return [PYTHON, *command]
        profiler = [PYTHON, "-m", "pyinstrument", "-r", "pyisession", "-o", str(self.profile_to)]
        return [*profiler, *command]

    async def __aenter__(self) -> Self:
        self.log = self.log_path.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            *self._argv(), cwd=ROOT, env=self.env, stdout=self.log, stderr=self.log
        )
        self.ps = psutil.Process(self.process.pid)
        self._sampler = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def _sample(self) -> None:
        async with httpx.AsyncClient(timeout=2) as http:
            while self.alive:
                now = time.time()
                with contextlib.suppress(psutil.Error):
                    times = self.ps.cpu_times()
                    self.cpu.append((now, times.user + times.system))
                    self.rss.append((now, self.ps.memory_info().rss / 2**20))
                if self.metrics_port is not None:
                    with contextlib.suppress(httpx.HTTPError):
                        page = await http.get(f"http://127.0.0.1:{self.metrics_port}/metrics")
                        limit = window_limit(page.text)
                        if limit is not None:
                            self.limits.append((now, limit))
                await asyncio.sleep(self.interval)

    async def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (a clean drain), then SIGKILL after ``timeout``; returns the exit code."""
        if self.alive:
            self.peak_rss_mb = peak_rss_mb(self.process.pid)
            with contextlib.suppress(psutil.Error):
                times = self.ps.cpu_times()
                self.cpu.append((time.time(), times.user + times.system))
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout=timeout)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self._sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sampler
        self.log.close()
        self.returncode = self.process.returncode
        return self.returncode
