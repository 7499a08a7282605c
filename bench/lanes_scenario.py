"""The ``lanes`` scenario: urgent requests on a lane of their own overtake a backlog.

A backlog of 20,000 requests (smoke: 600) waits on the low lane (the request topic, priority
0, share 0.25); once the processor is busy with it, 200 urgent requests (smoke: 20) arrive at
once on the urgent lane (priority 10). Reported: the urgent requests' end-to-end latency
(completion event time minus request time) p50/p99, against the same burst on an idle
processor (target: p99 <= 2x idle p99 + one service time), and the backlog's throughput
during the burst (from the burst to the last urgent completion) against before it.

The fake serves C=8 calls at once, L=200 ms each (no per-character scaling), and the window is
fixed at 8, so the figures measure admission order, not the window's search.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.harness import Processor
from processor.kafka.records import read_to_end

if TYPE_CHECKING:
    from bench.run import Bench

WINDOW = 8
SERVICE_MS = 200.0
FAKE = ("--capacity", str(WINDOW), "--latency-ms", str(SERVICE_MS), "--jitter-ms", "0")


def config(path: Path, url: str, urgent: str, low: str) -> Path:
    path.write_text(
        f'default_backend = "tts"\n[backends.tts]\nkind = "openai"\nurl = "{url}"\n'
        f"max_in_flight = {WINDOW}\nadaptive = false\n\n"
        f'[[lanes]]\ntopic = "{urgent}"\npriority = 10\n\n'
        f'[[lanes]]\ntopic = "{low}"\npriority = 0\nshare = 0.25\n',
        encoding="utf-8",
    )
    return path


def pairs(prefix: str, n: int) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(n):
        rid = f"{prefix}-{i:06d}"
        body = {"request_id": rid, "text": f"Request {i} of {prefix}."}
        out.append((rid.encode(), json.dumps(body).encode()))
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


async def completions(self: Bench, topic: str) -> dict[str, float]:
    """request_id -> when its (first) completion event was published (epoch s)."""
    found: dict[str, float] = {}
    for r in await read_to_end(self.kafka.settings, topic):
        found.setdefault(json.loads(r.value or b"{}").get("request_id", "?"), r.timestamp_ms / 1000)
    return found


async def sent_at(self: Bench, topic: str) -> dict[str, float]:
    return {
        (r.key or b"").decode(): r.timestamp_ms / 1000
        for r in await read_to_end(self.kafka.settings, topic)
    }


async def one_run(self: Bench, label: str, url: str, n_low: int, n_urgent: int) -> dict[str, Any]:
    """A processor over a backlog of ``n_low`` (0: idle), then ``n_urgent`` urgent at once."""
    name = f"bench.{self.run_id}.lanes.{label}"
    low, urgent, done, dlq = (f"{name}.{t}" for t in ("low", "urgent", "completions", "dlq"))
    await self.kafka.create([low, urgent, done, dlq], 8)
    self.topics += [low, urgent, done, dlq, f"{low}.retry"]
    await self.kafka.produce(low, pairs(f"{label}-low", n_low))
    env = self.env | {
        "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap,
        "VOXLINE_GROUP_ID": name,
        "VOXLINE_REQUEST_TOPIC": low,
        "VOXLINE_COMPLETION_TOPIC": done,
        "VOXLINE_DLQ_TOPIC": dlq,
        "VOXLINE_HTTP_PORT": "-1",
        "S3_PREFIX": f"bench/{self.run_id}/lanes/{label}/",
        "VOXLINE_CONFIG": str(config(self.raw / f"lanes.{label}.toml", url, urgent, low)),
    }
    backlog_s = 3.0 if self.smoke else 15.0
    async with Processor("voxline", env, self.raw / f"lanes.{label}.log"):
        ready = time.time()
        while n_low and not await self.kafka.count(done):  # busy with the backlog
            if time.time() - ready > 120:
                raise RuntimeError(f"lanes/{label}: nothing completed in 120 s")
            await asyncio.sleep(0.25)
        if not n_low:
            await asyncio.sleep(5.0)  # the idle processor has joined its group
        await asyncio.sleep(backlog_s if n_low else 0.0)
        burst = time.time()
        await self.kafka.produce(urgent, pairs(f"{label}-urgent", n_urgent))
        give_up = time.time() + 300
        while True:
            got = await completions(self, done)
            if sum(1 for r in got if "-urgent-" in r) >= n_urgent or time.time() > give_up:
                break
            await asyncio.sleep(0.5)
    sent = await sent_at(self, urgent)
    latencies = [got[r] - t for r, t in sent.items() if r in got]
    urgent_end = max((got[r] for r in sent if r in got), default=burst)
    low_done = [t for r, t in got.items() if "-low-" in r]
    before = sum(burst - backlog_s <= t < burst for t in low_done) / backlog_s if n_low else 0
    during = sum(burst <= t <= urgent_end for t in low_done) / max(1e-9, urgent_end - burst)
    return {
        "urgent_done": len(latencies),
        "p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "p99_s": round(percentile(latencies, 0.99), 3),
        "backlog_per_s_before": round(before, 1),
        "backlog_per_s_during": round(during, 1),
    }


async def lanes(self: Bench) -> None:
    n_low, n_urgent = (600, 20) if self.smoke else (20_000, 200)
    async with self.fake("lanes", *FAKE) as fake:
        idle = await one_run(self, "idle", fake.url, 0, n_urgent)
        await fake.control(reset=True)
        busy = await one_run(self, "backlog", fake.url, n_low, n_urgent)
    target = 2 * idle["p99_s"] + SERVICE_MS / 1000
    verdict = "met" if busy["p99_s"] <= target else "MISSED"
    self.say(f"lanes: idle {idle}; with a backlog of {n_low:,}: {busy}; p99 target {target:.2f} s")
    self.dump["lanes"] = {"idle": idle, "backlog": busy, "p99_target_s": round(target, 3)}
    self.say(f"lanes: urgent p99 target (2x idle + one service time) {verdict}")
    rows = (
        ("urgent p50 (s) behind the backlog", busy["p50_s"], "lower", ""),
        ("urgent p99 (s) behind the backlog", busy["p99_s"], "lower", f"<= {target:.2f}"),
        ("urgent p99 (s) on an idle processor", idle["p99_s"], "", ""),
        ("backlog records/s before the burst", busy["backlog_per_s_before"], "", ""),
        ("backlog records/s during the burst", busy["backlog_per_s_during"], "higher", ""),
    )
    for figure, value, better, goal in rows:
        self.row("lanes", figure, {"voxline": value}, better=better, target=goal, digits=2)
