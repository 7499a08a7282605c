"""The ``instances`` scenario: 1, 2 and 3 processors in one group share one backend.

The fake is the adaptive scenario's ``fail`` server (C=12, L=250 ms, the knee hidden at 18
calls, a call past it fails): each processor's adaptive window (from 4, ceiling 32) must find
its part of the capacity without the others telling it. For each fleet size, over the same
time box from its first completion: total goodput against the best fixed total window (one
processor with a fixed window, swept), the failed-call rate (the fake's own counts), and each
instance's share of the records finished in the box (from its ``/metrics``; the box starts
once every instance has finished a record, so the group's start-up is left out), and its window
limit in the box (mean, min, max of ``/metrics`` sampled every 0.5 s). Targets:
goodput >= 0.9 of the best fixed window, failed calls <= 1 %, no instance below half of a fair
share.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import httpx

from bench import measure
from bench.harness import Fake, Processor, free_port
from bench.shapes import CAPACITY, KNEE

if TYPE_CHECKING:
    from bench.run import Bench

LATENCY_MS = 250
FAKE = (
    "--capacity", str(CAPACITY), "--latency-ms", str(LATENCY_MS), "--jitter-ms", "25",
    "--knee", str(KNEE), "--queue", "fifo", "--overload", "fail",
)  # fmt: skip
FLEETS = (1, 2, 3)


async def succeeded(port: int) -> float:
    """``voxline_succeeded_total`` of one processor (0 when it does not answer)."""
    with contextlib.suppress(httpx.HTTPError):
        async with httpx.AsyncClient(timeout=3) as http:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("voxline_succeeded_total{")
        )
    return 0.0


async def fleet(self: Bench, fake: Fake, topic: str, size: int, box_s: float) -> dict[str, Any]:
    """``size`` processors (adaptive) over ``topic`` for ``box_s`` after the first completion."""
    name = f"bench.{self.run_id}.instances.x{size}"
    done, dlq = f"{name}.completions", f"{name}.dlq"
    await self.kafka.create([done, dlq], 8)
    self.topics += [done, dlq, f"{topic}.retry"]
    await fake.control(reset=True, capacity=CAPACITY)
    ports = [free_port() for _ in range(size)]
    base = self.env | {
        "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap,
        "VOXLINE_GROUP_ID": name,
        "VOXLINE_REQUEST_TOPIC": topic,
        "VOXLINE_COMPLETION_TOPIC": done,
        "VOXLINE_DLQ_TOPIC": dlq,
        "VOXLINE_BACKEND": "openai",
        "VOXLINE_BACKEND_URL": fake.url,
        "VOXLINE_MAX_IN_FLIGHT": "32",
        "VOXLINE_ADAPTIVE": "true",
        "S3_PREFIX": f"bench/{self.run_id}/instances/x{size}/",
    }
    processors: list[Processor] = []
    async with contextlib.AsyncExitStack() as stack:
        for i, port in enumerate(ports):
            env = base | {"VOXLINE_HTTP_PORT": str(port)}
            log = self.raw / f"instances.x{size}.p{i + 1}.log"
            processors.append(Processor("voxline", env, log, metrics_port=port))
            await stack.enter_async_context(processors[-1])
        started = time.time()
        # Measured once every instance has finished records (the group has settled).
        while not all([await succeeded(port) for port in ports]):
            if time.time() - started > 120:
                raise RuntimeError(f"instances/x{size}: not every instance worked in 120 s")
            await asyncio.sleep(0.25)
        first = time.time()
        before = [await succeeded(port) for port in ports]
        await asyncio.sleep(box_s)
        shares = [await succeeded(port) - b for port, b in zip(ports, before, strict=True)]
        stats = await fake.stats()
    ok = [e.at for e in await self.kafka.read(done) if e.ok]
    good, bad = measure.calls_between(stats.get("series", []), first, first + box_s)
    total = sum(shares) or 1.0
    return {
        "goodput": round(measure.rate_between(ok, first, first + box_s), 1),
        "failed_pct": round(100 * measure.share(bad, good + bad), 2),
        "shares": [round(s / total, 3) for s in shares],
        "windows": [window_span(p.limits, first, first + box_s) for p in processors],
    }


def window_span(limits: list[tuple[float, float]], start: float, end: float) -> list[float]:
    """Mean, lowest and highest window limit sampled between ``start`` and ``end``."""
    seen = [limit for at, limit in limits if start <= at < end] or [0.0]
    return [round(sum(seen) / len(seen), 1), min(seen), max(seen)]


async def instances(self: Bench) -> None:
    box_s, sweep = self.sizes.instances_box_s, self.sizes.instances_sweep  # set in bench/run.py
    topic, chars = await self.request_topic("instances", int(CAPACITY / 0.25 * box_s * 8))
    # Service time in proportion to the text, as the adaptive scenario's (L at the mean length).
    async with self.fake("instances", *FAKE, "--per-char", f"{chars:.3f}") as fake:
        best, best_window = 0.0, 0
        for window in sweep:
            fixed = await self.run(
                "instances", topic, 10**9, f"fixed-w{window}", "voxline", fake,
                window=window, timebox_s=box_s, until_all=False, backend={"capacity": CAPACITY},
            )  # fmt: skip
            rate = measure.rate_between(fixed.ok, fixed.t0, fixed.t0 + box_s)
            if rate > best:
                best, best_window = rate, window
        found = {size: await fleet(self, fake, topic, size, box_s) for size in FLEETS}
    self.dump["instances"] = {"best_fixed": [best_window, best], "fleets": found}
    for size, f in found.items():
        lowest = min(f["shares"]) * size
        self.say(
            f"instances: x{size}: {f['goodput']}/s vs best fixed {best:.1f}/s (w={best_window}), "
            f"{f['failed_pct']} % failed calls, shares {f['shares']}, "
            f"windows (mean, min, max) {f['windows']}"
        )
        rows = (
            (f"x{size}: goodput / best fixed window", f["goodput"] / best if best else 0, ">= 0.9"),
            (f"x{size}: failed calls (%)", f["failed_pct"], "<= 1"),
            (f"x{size}: lowest share / fair share", lowest, ">= 0.5"),
        )
        for figure, value, goal in rows:
            self.row("instances", figure, {"voxline": value}, better="", target=goal, digits=2)
