"""The scenarios that measure the processor itself against a fake backend that keeps up: ideal
(C=16, L=250 ms, window 16: throughput / (C/L)), overhead (L=0: records/s and CPU per record)
and backlog (100,000 waiting: peak memory while draining). Each runs Voxline and the peers."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from bench import measure
from bench.harness import PYTHON

if TYPE_CHECKING:
    from bench.run import Bench

LATENCY_MS = 250.0
JITTER_MS = 25.0
#: A backend that answers at once whatever the load.
FAST = ("--capacity", "100000", "--latency-ms", "0")


async def ideal(self: Bench) -> None:
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


async def overhead(self: Bench, profile: bool) -> None:
    n, timebox_s = dataclasses.astuple(self.sizes.overhead)
    topic, _ = await self.request_topic("overhead", n)
    async with self.fake("overhead", *FAST) as fake:
        results = await self.each_kind(
            "overhead", topic, n, fake, self.kinds(), window=64, timebox_s=timebox_s
        )
        if profile:
            session = self.raw / "profile-overhead.pyisession"
            await self.run(
                "overhead", topic, n, "voxline-profiled", "voxline", fake,
                window=64, timebox_s=timebox_s, profile_to=session,
            )  # fmt: skip
            render_profile(self, session)
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


def render_profile(self: Bench, session: Path) -> None:
    if not session.exists():
        self.notes.append("profile: pyinstrument wrote no session")
        return
    base = [PYTHON, "-m", "pyinstrument", "--load", str(session)]
    text = self.results / "profile-overhead.txt"
    html = self.raw / "profile-overhead.html"
    options = ["-p", "processor_options.filter_threshold=0.005", "--no-color", "--unicode"]
    subprocess.run([*base, "-r", "text", *options, "-o", str(text)], check=False)
    subprocess.run([*base, "-r", "html", "-o", str(html)], check=False)
    self.say(f"profile: {text} and {html}")


async def backlog(self: Bench) -> None:
    n, timebox_s = dataclasses.astuple(self.sizes.backlog)
    topic, _ = await self.request_topic("backlog", n)
    async with self.fake("backlog", *FAST) as fake:
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
