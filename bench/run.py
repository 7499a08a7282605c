"""Benchmark Voxline on the real broker and store against a fake GPU TTS server, and against
the peers (``bench/peers/``): ``python -m bench.run [--smoke] [--scenarios ...] [--profile]``.

Scenarios (every one with the same variable-length texts; the backend's service time grows with
the text, so head-of-line blocking shows):

    ideal     C=16, L=250 ms, window 16: throughput / (C/L)
    overhead  L=0: records/s end to end and CPU seconds per 1,000 records
    adaptive  C=12, fails past 1.5*C, knee hidden: fixed windows 4..32 vs the adaptive window
              from 4 (ceiling 32); then C drops to 6 and comes back to 12
    backlog   100,000 requests waiting: peak RSS while draining
    peers     runs the two peers in each scenario above too, with the same requests (their own
              consumer group and completion topic), window and backend, and reports
              Voxline/peer ratios

Each scenario gets its own request topic (8 partitions); each processor run its own group,
completion topic, dead-letter topic and S3 prefix. Figures come from the completion topic's
timestamps, /proc and ``psutil`` (CPU, VmHWM), Voxline's ``/metrics`` (window limit) and the
fake backend's per-second counters. A full run writes ``bench/results/latest.md`` and
``adaptive.png`` (``--profile`` always writes ``profile-overhead.txt`` there); ``--smoke`` and
partial runs write them under ``bench/results/raw/<run>/``, with every run's logs and samples.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import measure, report
from bench.harness import (
    PYTHON,
    ROOT,
    Completion,
    Fake,
    Kafka,
    Processor,
    delete_prefix,
    ensure_services,
    free_port,
    service_env,
)
from bench.report import Row
from bench.workload import mean_text_chars, requests

SCENARIOS = ("ideal", "overhead", "adaptive", "backlog", "peers")
PARTITIONS = 8
LATENCY_MS = 250.0
JITTER_MS = 25.0
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


FULL = Sizes(
    ideal=Box(2400, 40), overhead=Box(6000, 25), backlog=Box(100_000, 50),
    adaptive_records=6000, sweep=(4, 8, 12, 16, 24, 32), sweep_s=20, phases=(30, 20, 20),
)  # fmt: skip
SMOKE = Sizes(
    ideal=Box(80, 8), overhead=Box(300, 8), backlog=Box(2000, 5),
    adaptive_records=600, sweep=(4, 16), sweep_s=4, phases=(5, 3, 3),
)  # fmt: skip


@dataclasses.dataclass
class Result:
    """What one processor run left behind."""

    label: str
    kind: str
    window: int
    produced: int
    events: list[Completion]
    cpu: list[tuple[float, float]]
    limits: list[tuple[float, float]]
    peak_rss_mb: float
    backend: dict[str, Any]
    started_at: float
    first_seen: float | None
    stopped_at: float
    changes: list[tuple[float, dict[str, Any]]]
    returncode: int | None
    exited_at: float

    @property
    def ok(self) -> list[float]:
        return [e.at for e in self.events if e.ok]

    @property
    def failed(self) -> int:
        return sum(1 for e in self.events if not e.ok)

    @property
    def t0(self) -> float:
        """The first completion (any outcome)."""
        return self.events[0].at if self.events else math.nan

    def ok_before_stop(self) -> list[float]:
        return [t for t in self.ok if t <= self.stopped_at]

    def summary(self) -> dict[str, Any]:
        ok = self.ok_before_stop()
        return {
            "label": self.label,
            "window": self.window,
            "produced": self.produced,
            "completed": len(self.events),
            "succeeded": len(self.ok),
            "failed": self.failed,
            "throughput": measure.throughput(ok),
            "cpu_per_1000": measure.cpu_per_1000(self.cpu, ok),
            "peak_rss_mb": self.peak_rss_mb,
            "backend_calls": self.backend.get("calls"),
            "backend_failed": self.backend.get("failed"),
            "returncode": self.returncode,
            "startup_s": (self.first_seen or math.nan) - self.started_at,
            "stop_s": self.exited_at - self.stopped_at,
        }


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
        self.topics: list[str] = []
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.dump: dict[str, Any] = {}
        self.env = service_env()
        self.load_at_start = os.getloadavg()[0]

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
    ) -> Result:
        """One processor over ``topic`` until all ``n`` requests completed (or ``timebox_s``
        after the first completion), applying ``schedule`` (seconds after the first
        completion, backend changes) on the way."""
        name = f"bench.{self.run_id}.{scenario}.{label}"
        done, dlq = f"{name}.completions", f"{name}.dlq"
        await self.kafka.create([done, dlq], PARTITIONS)
        self.topics += [done, dlq]
        await fake.control(reset=True, **(backend or {}))
        metrics_port = free_port() if kind == "voxline" else None
        env = self.env | {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap,
            "VOXLINE_GROUP_ID": name,
            "VOXLINE_REQUEST_TOPIC": topic,
            "VOXLINE_COMPLETION_TOPIC": done,
            "VOXLINE_DLQ_TOPIC": dlq,
            "VOXLINE_TOPIC_PARTITIONS": str(PARTITIONS),
            "VOXLINE_BACKEND": "openai",
            "VOXLINE_BACKEND_URL": fake.url,
            "VOXLINE_MAX_IN_FLIGHT": str(window),
            "VOXLINE_ADAPTIVE": "true" if adaptive else "false",
            "VOXLINE_HTTP_PORT": str(metrics_port or -1),
            "S3_PREFIX": f"bench/{self.run_id}/{scenario}/{label}/",
        }
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

    # -- scenarios -------------------------------------------------------------------------

    async def ideal(self) -> None:
        box = self.sizes.ideal
        topic, chars = await self.request_topic("ideal", box.records)
        args = ("--capacity", "16", "--latency-ms", str(LATENCY_MS), "--jitter-ms", str(JITTER_MS))
        async with self.fake("ideal", *args, "--per-char", f"{chars:.3f}") as fake:
            results = await self.each_kind(
                "ideal", topic, box.records, fake, self.kinds(), window=16, timebox_s=box.timebox_s
            )
        ideal = 16 / (LATENCY_MS / 1000)
        thr = {k: measure.throughput(r.ok_before_stop()) for k, r in results.items()}
        self.row("ideal", "throughput, records/s (C=16, L=250 ms, window 16)", thr)
        self.row(
            "ideal", "throughput / (C/L)", {k: v / ideal for k, v in thr.items()},
            target="≥ 0.95", digits=3,
        )  # fmt: skip

    async def overhead(self, profile: bool) -> None:
        n, timebox_s = dataclasses.astuple(self.sizes.overhead)
        topic, _ = await self.request_topic("overhead", n)
        async with self.fake("overhead", *_FAST) as fake:
            results = await self.each_kind(
                "overhead", topic, n, fake, self.kinds(), window=64, timebox_s=timebox_s
            )
            if profile:
                session = self.raw / "profile-overhead.pyisession"
                await self.run(
                    "overhead", topic, n, "voxline-profiled", "voxline", fake,
                    window=64, timebox_s=timebox_s, profile_to=session,
                )  # fmt: skip
                self.render_profile(session)
        self.row(
            "overhead",
            "records/s end to end (L≈0, window 64)",
            {k: measure.throughput(r.ok_before_stop()) for k, r in results.items()},
        )
        self.row(
            "overhead",
            "CPU seconds per 1,000 records",
            {k: measure.cpu_per_1000(r.cpu, r.ok_before_stop()) for k, r in results.items()},
            better="lower",
            digits=2,
        )

    def render_profile(self, session: Path) -> None:
        if not session.exists():
            self.notes.append("profile: pyinstrument wrote no session")
            return
        base = [PYTHON, "-m", "pyinstrument", "--load", str(session)]
        text = RESULTS / "profile-overhead.txt"
        html = self.raw / "profile-overhead.html"
        options = ["-p", "processor_options.filter_threshold=0.005", "--no-color", "--unicode"]
        subprocess.run([*base, "-r", "text", *options, "-o", str(text)], check=False)
        subprocess.run([*base, "-r", "html", "-o", str(html)], check=False)
        self.say(f"profile: {text} and {html}")

    async def backlog(self) -> None:
        n, timebox_s = dataclasses.astuple(self.sizes.backlog)
        topic, _ = await self.request_topic("backlog", n)
        async with self.fake("backlog", *_FAST) as fake:
            results = await self.each_kind(
                "backlog", topic, n, fake, self.kinds(), window=64, timebox_s=timebox_s
            )
        self.row(
            "backlog",
            f"peak RSS, MiB, draining {n:,} waiting requests",
            {k: r.peak_rss_mb for k, r in results.items()},
            better="lower",
            target="≤ 150 (Voxline)",
            digits=0,
        )
        self.row(
            "backlog",
            "records drained",
            {k: float(len(r.ok)) for k, r in results.items()},
            better="",
            digits=0,
        )
        self.row(
            "backlog",
            "drain rate, records/s",
            {k: measure.throughput(r.ok_before_stop()) for k, r in results.items()},
        )

    async def adaptive(self) -> None:
        s = self.sizes
        n = s.adaptive_records
        topic, chars = await self.request_topic("adaptive", n)
        capacity, knee = 12, 1.5
        args = (
            "--capacity", str(capacity), "--latency-ms", str(LATENCY_MS),
            "--jitter-ms", str(JITTER_MS), "--per-char", f"{chars:.3f}", "--knee", str(knee),
        )  # fmt: skip
        base = {"capacity": capacity}
        p1, p2, p3 = s.phases
        schedule = [(p1, {"capacity": 6}), (p1 + p2, {"capacity": capacity})]
        fixed: dict[int, Result] = {}
        async with self.fake("adaptive", *args) as fake:
            for window in s.sweep:
                fixed[window] = await self.run(
                    "adaptive", topic, n, f"voxline-w{window}", "voxline", fake,
                    window=window, timebox_s=s.sweep_s, until_all=False, backend=base,
                )  # fmt: skip
            ours = await self.run(
                "adaptive", topic, n, "voxline-adaptive", "voxline", fake,
                window=32, adaptive=True, timebox_s=p1 + p2 + p3, until_all=False,
                backend=base, schedule=schedule, interval=0.5,
            )  # fmt: skip
            peers = await self.each_kind(
                "adaptive", topic, n, fake, self.kinds()[1:],
                window=32, timebox_s=p1 + p2 + p3, until_all=False, backend=base, schedule=schedule,
            )  # fmt: skip
        self.adaptive_figures(fixed, ours, peers, capacity, knee)

    def adaptive_figures(
        self,
        fixed: Mapping[int, Result],
        ours: Result,
        peers: Mapping[str, Result],
        capacity: int,
        knee: float,
    ) -> None:
        s = self.sizes
        span = s.sweep_s

        def goodput(r: Result) -> float:
            return measure.rate_between(r.ok, r.t0, r.t0 + span)

        def failed_share(r: Result, start: float, end: float) -> float:
            ok, failed = measure.calls_between(r.backend.get("series", []), start, end)
            return 100 * measure.share(failed, ok + failed)

        sweep = {w: goodput(r) for w, r in fixed.items()}
        best_window = max(sweep, key=lambda w: sweep[w])
        best = sweep[best_window]
        self.sweep_rows = [
            (w, sweep[w], failed_share(r, r.t0, r.t0 + span), r.failed) for w, r in fixed.items()
        ]
        end = ours.stopped_at
        drop_at = ours.changes[0][0] if ours.changes else math.nan
        rise_at = ours.changes[1][0] if len(ours.changes) > 1 else math.nan
        all_runs = {"voxline": ours, **peers}
        self.row(
            "adaptive",
            f"goodput, records/s, first {span:g} s (best fixed: window {best_window}, "
            f"{best:.1f}/s; peers at window 32)",
            {k: goodput(r) for k, r in all_runs.items()},
        )
        self.row(
            "adaptive",
            "goodput / best fixed window",
            {k: goodput(r) / best if best else None for k, r in all_runs.items()},
            target="≥ 0.90",
            digits=3,
        )
        self.row(
            "adaptive",
            "failed backend calls, % (whole run, all phases)",
            {k: failed_share(r, r.t0 - 5, r.stopped_at + 5) for k, r in all_runs.items()},
            better="lower",
            target="≤ 1 %",
            digits=2,
        )
        self.row(
            "adaptive",
            "records failed (dead-lettered), whole run",
            {k: float(r.failed) for k, r in all_runs.items()},
            better="",
            digits=0,
        )
        phases = (("C=12", capacity), ("C=6", capacity // 2), ("C=12 again", capacity))
        for index, (name, c) in enumerate(phases):
            ideal = c / (LATENCY_MS / 1000)
            self.row(
                "adaptive",
                f"goodput / (C/L), phase {name}",
                {
                    k: measure.rate_between(r.ok, *_phase(r, index)) / ideal
                    for k, r in all_runs.items()
                },
                digits=3,
            )
        bands = [
            ("converge from 4 (C=12)", ours.t0, drop_at, capacity),
            ("follow C 12→6", drop_at, rise_at, capacity // 2),
            ("follow C 6→12", rise_at, end, capacity),
        ]
        for name, start, stop, c in bands:
            low, high = 0.9 * c, math.floor(knee * c)
            settled = measure.settle_time(ours.limits, start, stop, low, high)
            self.row(
                "adaptive",
                f"seconds to {name}: window stays in [{low:g}, {high}]",
                {"voxline": settled},
                better="",
                target="≤ 30 s" if name.startswith("converge") else "",
            )
        self.timeline = report.Timeline(
            goodput=measure.per_second(ours.ok, ours.t0, math.ceil(end - ours.t0)),
            limits=[(t - ours.t0, v) for t, v in ours.limits],
            capacity=[(0.0, float(capacity))]
            + [(t - ours.t0, float(ch["capacity"])) for t, ch in ours.changes],
            knee=knee,
            failed_calls=[(x["t"] - ours.t0, x["failed"]) for x in ours.backend.get("series", [])],
            in_server=[
                (x["t"] - ours.t0, x["in_server_max"]) for x in ours.backend.get("series", [])
            ],
            latency_s=LATENCY_MS / 1000,
            best_fixed=best,
            peers={
                k: measure.per_second(r.ok, r.t0, math.ceil(r.stopped_at - r.t0))
                for k, r in peers.items()
            },
        )

    # -- output ----------------------------------------------------------------------------

    def write(self, started: float) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        md = self.out / "latest.md"
        md.write_text(self.markdown(time.monotonic() - started), encoding="utf-8")
        (self.raw / "figures.json").write_text(
            json.dumps(self.dump, default=str, indent=1), encoding="utf-8"
        )
        timeline = getattr(self, "timeline", None)
        if timeline is not None:
            report.plot(
                timeline,
                self.out / "adaptive.png",
                "Adaptive window, backend C=12 failing past 18, C→6 and back (hidden from Voxline)",
            )
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
            "Backend: `bench/fake_tts.py`, FIFO queue past its capacity C, service time "
            f"L={LATENCY_MS:g} ms ± {JITTER_MS:g} ms scaled by text length (mean text = L), "
            "no Retry-After. Texts: log-normal lengths, median 120 characters, 12 to 900. "
            f"{PARTITIONS} partitions. Peers get the same requests, backend, store, broker "
            "and window; `✓` marks a ratio where Voxline is ahead. Throughput is counted from the "
            "first to the last completion event; backlog runs are time-boxed "
            f"({self.sizes.backlog.timebox_s:g} s of draining each).",
            "",
            report.table(self.rows, self.peers),
        ]
        sweep = getattr(self, "sweep_rows", None)
        if sweep:
            lines += [
                "",
                "Fixed windows against the hidden knee (C=12, fails past 18), first "
                f"{self.sizes.sweep_s:g} s:",
                "",
                "| window | goodput, records/s | failed backend calls, % | records failed |",
                "|---|---|---|---|",
            ]
            lines += [f"| {w} | {g:.1f} | {f:.2f} | {n} |" for w, g, f, n in sweep]
            lines += ["", "![adaptive window](adaptive.png)"]
        if self.notes:
            lines += ["", "Notes:", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    async def cleanup(self) -> None:
        """Delete the run's topics and audio objects."""
        await self.kafka.delete(self.topics)
        deleted = await delete_prefix(self.env, f"bench/{self.run_id}/")
        self.say(f"deleted {len(self.topics)} topics and {deleted:,} audio objects")


_FAST = ("--capacity", "100000", "--latency-ms", "0")


def _phase(run: Result, index: int) -> tuple[float, float]:
    """Start and end of the ``index``-th backend phase of ``run`` (split by its changes)."""
    bounds = [run.t0] + [t for t, _ in run.changes] + [run.stopped_at]
    if index + 1 >= len(bounds):
        return math.nan, math.nan
    return bounds[index], bounds[index + 1]


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
        try:
            if "ideal" in args.chosen:
                await bench.ideal()
            if "overhead" in args.chosen or args.profile:
                await bench.overhead(args.profile)
            if "adaptive" in args.chosen:
                await bench.adaptive()
            if "backlog" in args.chosen:
                await bench.backlog()
        finally:
            if not args.keep:
                await bench.cleanup()
        md = bench.write(started)
    print(md.read_text(encoding="utf-8"))
    bench.say(f"done in {time.monotonic() - started:.0f} s: {md}")
    return 1 if bench.notes else 0  # a processor that did not exit cleanly fails the run


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
