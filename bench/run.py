"""Benchmark Voxline on the real broker and store against a fake GPU TTS server, and against
the peers (``bench/peers/``): ``python -m bench.run [--smoke] [--scenarios ...] [--profile]``.

Scenarios (every one with the same variable-length texts; the backend's service time grows with
the text, so head-of-line blocking shows):

    ideal     C=16, L=250 ms, window 16: throughput / (C/L)            (bench/scenarios.py)
    overhead  L=0: records/s end to end and CPU seconds per 1,000 records
    adaptive  C=12, knee hidden at 18, overloading three ways (fails the excess, queues and
              thrashes, crashes and restarts): fixed windows vs the adaptive window from 4
              (ceiling 32), while C drops to 6 and comes back to 12     (bench/shapes.py)
    backlog   100,000 requests waiting: peak RSS while draining
    cache     a book rendered, then again with 1 % of its sentences edited, and a dead-letter
              replay of a long chapter: backend calls and wall time   (bench/cache_scenario.py)
    lanes     a backlog on the low lane, then a burst of urgent requests on theirs: urgent
              p50/p99 against an idle processor, backlog throughput during the burst
              (bench/lanes_scenario.py)
    instances 1, 2, 3 processors in one group against the adaptive scenario's fail server:
              goodput vs the best fixed window, failed calls, each one's share
              (bench/instances_scenario.py)
    quality   1,000 chunks, 2 % bad in the fakes' failure modes: caught, regenerated and
              fixed, false positives, gate CPU per second of audio (bench/quality_scenario.py)
    peers     runs the two peers in each scenario above too (against the first overload
              shape in adaptive), with the same requests (their own consumer group and
              completion topic), window and backend, and reports Voxline/peer ratios

Each scenario gets its own request topic (8 partitions); each processor run its own group,
completion topic, dead-letter topic and S3 prefix. Figures come from the completion topic's
timestamps, /proc and ``psutil`` (CPU, VmHWM), Voxline's ``/metrics`` (window limit) and the
fake backend's per-second counters and crash times. A full run writes
``bench/results/latest.md`` and ``adaptive-<shape>.png`` (``--profile`` always writes
``profile-overhead.txt`` there); ``--smoke`` and partial runs write them under
``bench/results/raw/<run>/``, with every run's logs and samples.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import (
    cache_scenario,
    instances_scenario,
    lanes_scenario,
    quality_scenario,
    report,
    scenarios,
    service_scenario,
    shapes,
)
from bench.harness import (
    ROOT,
    Fake,
    Kafka,
    Processor,
    delete_prefix,
    ensure_services,
    free_port,
    service_env,
)
from bench.measure import Result
from bench.report import Row
from bench.scenarios import JITTER_MS, LATENCY_MS
from bench.workload import mean_text_chars, requests

SCENARIOS = (
    "ideal", "service", "overhead", "adaptive", "backlog", "cache", "lanes", "instances",
    "quality", "peers",
)  # fmt: skip
PARTITIONS = 8
RESULTS = ROOT / "bench" / "results"


@dataclasses.dataclass(frozen=True)
class Box:
    """A scenario's requests, and how long each processor may run on them (seconds after its
    first completion) when it does not finish them first."""

    records: int
    timebox_s: float


@dataclasses.dataclass(frozen=True)
class Sizes:
    ideal: Box
    overhead: Box
    #: Every processor drains the backlog for ``timebox_s`` (at most).
    backlog: Box
    adaptive_records: int
    sweep: tuple[int, ...]
    sweep_s: float
    #: Seconds at C=12, then at C=6, then at C=12 again.
    phases: tuple[float, float, float]
    #: How long a crashed backend refuses connections.
    restart_s: float
    #: service: the backend's service time L (2 s; the smoke's is shorter, so it stays
    #: tiny), requests paced at half the capacity (latency), then seconds of a backlog
    #: measured past its ramp (throughput).
    service_s: float
    service_paced: int
    service_span_s: float
    #: instances: each fleet's and each fixed window's time box, and the fixed windows swept.
    instances_box_s: float
    instances_sweep: tuple[int, ...]


FULL = Sizes(
    ideal=Box(2000, 12), overhead=Box(6000, 10), backlog=Box(100_000, 15),
    adaptive_records=4000, sweep=(12, 16, 24), sweep_s=6, phases=(20, 10, 20),
    restart_s=5, service_s=2.0, service_paced=80, service_span_s=10, instances_box_s=20,
    instances_sweep=(12, 16, 18),
)  # fmt: skip
SMOKE = Sizes(
    ideal=Box(80, 8), overhead=Box(300, 8), backlog=Box(2000, 5),
    adaptive_records=600, sweep=(16,), sweep_s=3, phases=(3, 2, 2), restart_s=1,
    service_s=0.5, service_paced=16, service_span_s=1, instances_box_s=6, instances_sweep=(12,),
)  # fmt: skip


class Bench:
    def __init__(self, kafka: Kafka, args: argparse.Namespace) -> None:
        self.kafka = kafka
        self.smoke: bool = args.smoke
        self.sizes = SMOKE if self.smoke else FULL
        self.peers = "peers" in args.chosen
        self.run_id = dt.datetime.now().strftime("%m%d%H%M") + "-" + uuid.uuid4().hex[:4]
        #: Every run's logs and samples.
        self.raw = RESULTS / "raw" / self.run_id
        self.raw.mkdir(parents=True, exist_ok=True)
        # Only a full run replaces the table the README quotes.
        full = not self.smoke and set(args.chosen) == set(SCENARIOS)
        self.out = RESULTS if full else self.raw
        self.results = RESULTS
        self.topics: list[str] = []
        self.rows: list[Row] = []
        self.verdicts: list[shapes.Verdict] = []
        self.sweeps: dict[str, list[tuple[int, float, float, int, int]]] = {}
        self.timelines: dict[str, report.Timeline] = {}
        self.notes: list[str] = []
        self.dump: dict[str, Any] = {}
        self.env = service_env()
        self.load_at_start = os.getloadavg()[0]
        #: (scenario, seconds it took, 1-minute load average at its start)
        self.spans: list[tuple[str, float, float]] = []

    def kinds(self) -> tuple[str, ...]:
        return ("voxline", *report.PEERS) if self.peers else ("voxline",)

    def say(self, text: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)

    async def request_topic(self, scenario: str, n: int) -> tuple[str, float]:
        """A fresh topic holding ``n`` requests; returns it and the mean text length."""
        topic = f"bench.{self.run_id}.{scenario}.requests"
        await self.kafka.create([topic], PARTITIONS)
        self.topics.append(topic)
        records = requests(f"{scenario}-{self.run_id}", n)
        started = time.monotonic()
        await self.kafka.produce(topic, records)
        self.say(f"{scenario}: {n:,} requests produced in {time.monotonic() - started:.1f} s")
        return topic, mean_text_chars(records)

    @contextlib.asynccontextmanager
    async def fake(self, scenario: str, *args: str) -> AsyncIterator[Fake]:
        async with Fake(args, self.raw / f"{scenario}.fake.log") as fake:
            yield fake

    async def run(
        self,
        scenario: str,
        topic: str,
        n: int,
        label: str,
        kind: str,
        fake: Fake,
        *,
        window: int,
        timebox_s: float,
        adaptive: bool = False,
        until_all: bool = True,
        backend: Mapping[str, Any] | None = None,
        schedule: Sequence[tuple[float, dict[str, Any]]] = (),
        interval: float = 1.0,
        profile_to: Path | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> Result:
        """One processor over ``topic`` until all ``n`` requests completed (or ``timebox_s``
        after the first completion), applying ``schedule`` (seconds after the first
        completion, backend changes) on the way."""
        done = await self.completion_topic(scenario, label)
        await fake.control(reset=True, **(backend or {}))
        metrics_port = free_port() if kind == "voxline" else None
        env = self.processor_env(
            scenario, label, topic, fake.url, window, adaptive=adaptive, metrics_port=metrics_port
        ) | dict(extra_env or {})
        changes: list[tuple[float, dict[str, Any]]] = []
        pending = list(schedule)
        first_seen: float | None = None
        self.say(f"{scenario}: {label} (window {window}{', adaptive' if adaptive else ''})")
        proc = Processor(
            kind,
            env,
            self.raw / f"{scenario}.{label}.log",
            metrics_port=metrics_port,
            interval=interval,
            profile_to=profile_to,
        )
        async with proc:
            started = time.time()
            while proc.alive:
                await asyncio.sleep(0.25)
                count = await self.kafka.count(done)
                now = time.time()
                if first_seen is None:
                    if count == 0:
                        if now - started > 120:
                            raise RuntimeError(f"{label}: nothing completed in 120 s")
                        continue
                    first_seen = now
                while pending and now >= first_seen + pending[0][0]:
                    change = pending.pop(0)[1]
                    await fake.control(**change)
                    changes.append((time.time(), change))
                if (until_all and count >= n) or now >= first_seen + timebox_s:
                    break
            stopped_at = time.time()
            backend_stats = await fake.stats()
        exited_at = time.time()
        if proc.returncode not in (0, None):
            self.notes.append(f"{scenario}/{label} exited with {proc.returncode}")
        events = await self.kafka.read(done)
        result = Result(
            label=label, kind=kind, window=window, produced=n, events=events, changes=changes,
            cpu=proc.cpu, limits=proc.limits, peak_rss_mb=proc.peak_rss_mb, backend=backend_stats,
            started_at=started, first_seen=first_seen, stopped_at=stopped_at, exited_at=exited_at,
            returncode=proc.returncode,
        )  # fmt: skip
        summary = result.summary()
        self.dump.setdefault(scenario, {})[label] = summary | {
            "limits": proc.limits,
            "rss_mib": [(round(t - started, 1), round(v, 1)) for t, v in proc.rss],
            "backend_series": backend_stats.get("series"),
            "changes": changes,
        }
        self.say(
            f"{scenario}: {label}: {summary['succeeded']:,} ok, {summary['failed']:,} failed, "
            f"{summary['throughput']:.1f}/s, {summary['cpu_per_1000']:.2f} CPU s/1000, "
            f"peak RSS {summary['peak_rss_mb']:.0f} MiB; started in {summary['startup_s']:.1f} s, "
            f"stopped in {summary['stop_s']:.1f} s"
        )
        return result

    async def completion_topic(
        self, scenario: str, label: str, configs: Mapping[str, str] | None = None
    ) -> str:
        """A fresh completion topic (and dead-letter topic) for one processor run."""
        name = f"bench.{self.run_id}.{scenario}.{label}"
        done, dlq = f"{name}.completions", f"{name}.dlq"
        await self.kafka.create([done, dlq], PARTITIONS, configs)
        self.topics += [done, dlq]
        return done

    def processor_env(
        self,
        scenario: str,
        label: str,
        topic: str,
        url: str,
        window: int,
        *,
        adaptive: bool = False,
        metrics_port: int | None = None,
    ) -> dict[str, str]:
        """What every processor (Voxline or a peer) reads: its own group, completion and
        dead-letter topics (:meth:`completion_topic`) and S3 prefix, the backend and window."""
        name = f"bench.{self.run_id}.{scenario}.{label}"
        return self.env | {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap,
            "VOXLINE_GROUP_ID": name,
            "VOXLINE_REQUEST_TOPIC": topic,
            "VOXLINE_COMPLETION_TOPIC": f"{name}.completions",
            "VOXLINE_DLQ_TOPIC": f"{name}.dlq",
            "VOXLINE_TOPIC_PARTITIONS": str(PARTITIONS),
            "VOXLINE_BACKEND": "openai",
            "VOXLINE_BACKEND_URL": url,
            "VOXLINE_MAX_IN_FLIGHT": str(window),
            "VOXLINE_ADAPTIVE": "true" if adaptive else "false",
            "VOXLINE_HTTP_PORT": str(metrics_port or -1),
            "S3_PREFIX": f"bench/{self.run_id}/{scenario}/{label}/",
        }

    async def each_kind(
        self, scenario: str, topic: str, n: int, fake: Fake, kinds: Sequence[str], **options: Any
    ) -> dict[str, Result]:
        """``run`` for each processor in ``kinds`` in turn, labelled by its kind."""
        return {
            kind: await self.run(scenario, topic, n, kind, kind, fake, **options) for kind in kinds
        }

    def row(
        self, scenario: str, figure: str, values: Mapping[str, float | None], **kw: Any
    ) -> None:
        self.rows.append(Row(scenario, figure, dict(values), **kw))

    # -- output ----------------------------------------------------------------------------

    def write(self, started: float) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        md = self.out / "latest.md"
        md.write_text(self.markdown(time.monotonic() - started), encoding="utf-8")
        (self.raw / "figures.json").write_text(
            json.dumps(self.dump, default=str, indent=1), encoding="utf-8"
        )
        for name, timeline in self.timelines.items():
            shape = next(s for s in shapes.SHAPES if s.name == name)
            title = f"Adaptive window, backend C=12 that {shape.title} past 18, C→6 and back"
            report.plot(timeline, self.out / f"adaptive-{name}.png", title)
        return md

    def markdown(self, wall_s: float) -> str:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        lines = [
            "# Voxline benchmark" + (" (smoke)" if self.smoke else ""),
            "",
            f"Run `{self.run_id}`, {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}, commit "
            f"`{commit}` (working tree), {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, Kafka and SeaweedFS S3 on 127.0.0.1, "
            f"{wall_s / 60:.1f} min in all; 1-minute load average {self.load_at_start:.1f} at the "
            f"start, {os.getloadavg()[0]:.1f} at the end (other work on the machine competes for "
            "the same 2 cores). `python -m bench.run"
            + (" --smoke" if self.smoke else "")
            + "` reproduces it.",
            "",
            "Each scenario's minutes and the load at its start: "
            + ", ".join(f"{n} {s / 60:.1f} ({load:.1f})" for n, s, load in self.spans)
            + ".",
            "",
            "Backend: `bench/fake_tts.py`, FIFO queue (or processor sharing) past its capacity C, "
            "service time "
            f"L={LATENCY_MS:g} ms ± {JITTER_MS:g} ms scaled by text length (mean text = L; the "
            f"service scenario: {self.sizes.service_s:g} s ± 10 % a sentence), no Retry-After; "
            "the body is speech-like audio as long as the text takes to speak, 8 kHz mono "
            "(about 100 KB at the median text). Texts: log-normal lengths, median 120 "
            "characters, 12 to 900. "
            f"{PARTITIONS} partitions. Peers get the same requests, backend, store, broker "
            "and window; `✓` marks a ratio where Voxline is ahead. Throughput is counted from the "
            "first to the last completion event; backlog runs are time-boxed "
            f"({self.sizes.backlog.timebox_s:g} s of draining each).",
            "",
            report.table(self.rows, self.peers),
        ]
        best = report.against_best(self.rows)
        if best:
            lines += ["", "Against the best peer (issue 17's targets):", "", *best]
        if self.verdicts:
            lines += ["", *shapes.summary(self.verdicts, self.sweeps), ""]
            lines += [f"![adaptive window, {n}](adaptive-{n}.png)" for n in self.timelines]
        if self.notes:
            lines += ["", "Notes:", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    async def cleanup(self) -> None:
        """Delete the run's topics and audio objects."""
        await self.kafka.delete(self.topics)
        deleted = await delete_prefix(self.env, f"bench/{self.run_id}/")
        self.say(f"deleted {len(self.topics)} topics and {deleted:,} audio objects")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="every scenario tiny (CI)")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, of {', '.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also profile Voxline in overhead (pyinstrument)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the run's topics and audio objects"
    )
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    args.chosen = chosen
    return args


async def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Fresh topics answer NotLeaderForPartition for a moment; the producer retries.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    started = time.monotonic()
    env = service_env()
    ensure_services(env)
    async with Kafka(env["KAFKA_BOOTSTRAP_SERVERS"]) as kafka:
        bench = Bench(kafka, args)
        steps: dict[str, Callable[[Bench], Awaitable[None]]] = {
            "ideal": scenarios.ideal,
            "service": service_scenario.service,
            "overhead": lambda b: scenarios.overhead(b, args.profile),
            "adaptive": shapes.adaptive,
            "backlog": scenarios.backlog,
            "cache": cache_scenario.cache,
            "lanes": lanes_scenario.lanes,
            "instances": instances_scenario.instances,
            "quality": quality_scenario.quality,
        }
        try:
            for name, step in steps.items():
                if name in args.chosen or (name == "overhead" and args.profile):
                    load, began = os.getloadavg()[0], time.monotonic()
                    await step(bench)
                    bench.spans.append((name, time.monotonic() - began, load))
        finally:
            if not args.keep:
                await bench.cleanup()
        md = bench.write(started)
    print(md.read_text(encoding="utf-8"))
    bench.say(f"done in {time.monotonic() - started:.0f} s: {md}")
    return 1 if bench.notes else 0  # a processor that did not exit cleanly fails the run


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
