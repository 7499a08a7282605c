"""The ``service`` scenario: a GPU server at a realistic service time, L = 2 s a sentence
(± 0.2 s, uniform), C = 16 calls at once, FIFO past that; every processor at window 16. (The
smoke run's L is 0.5 s, so that it stays tiny; its figures only show the harness works.)

Each processor (Voxline, then the peers) gets a request topic of its own and one process, and
goes through three steps:

1. Warm-up: C requests at once, waited for (the group has joined, the connections are open).
2. Latency: ``service_paced`` requests, one every 0.25 s (half the capacity C/L = 8/s). A call
   lasts at most 2.2 s, so at most 10 are ever in the server: with a window of 16 no request
   waits for a slot, by design, and none queues in the server (the fake counts any that do).
   A request's end-to-end latency is the completion event's broker time minus the request's
   (both topics stamp records with the broker's append time, ``LogAppendTime``); the backend's
   service time is what the fake logged for that call, from its handler's first line to the end
   of its service (each text starts with a tag the fake logs). Added latency = end-to-end minus
   service time: fetching the request, everything before and after the call, the upload and the
   publication; the processor's own cost, without queueing.
3. Throughput: a backlog that outlasts the measurement, produced at once. Measured from 2 L
   after its first call reached the server (the ramp: the first C calls start together) for
   ``service_span_s``: the share of the C slots' time the server spent serving,
   ``sum(|[arrived, done] ∩ [a, b]|) / (C (b - a))``, which is records/s over C/L̄ for the calls
   served (L̄ their mean service time), without the ±C records a count of completions over a
   finite interval has at its edges when calls end in step.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import string
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bench import report
from bench.harness import Fake, Processor
from bench.lanes_scenario import completions, percentile, sent_at
from bench.report import Row
from processor.kafka.records import read_to_end

if TYPE_CHECKING:
    from bench.run import Bench

CAPACITY = WINDOW = 16
#: The jitter of a service time, as a share of L.
JITTER = 0.1
BROKER_TIME = {"message.timestamp.type": "LogAppendTime"}
#: A peer still finishing its batch when measured is stopped after this long.
PEER_STOP_S = 5.0
Calls = Sequence[tuple[str, float, float]]


def tag(i: int) -> str:
    """A word of letters only (no text normalisation changes it), unique per request."""
    letters = ""
    while True:
        i, digit = divmod(i, 26)
        letters = string.ascii_lowercase[digit] + letters
        if i == 0:
            return "tag" + letters


def sentences(prefix: str, start: int, n: int) -> list[tuple[bytes, bytes]]:
    """``n`` one-sentence requests, ids ``{prefix}-{i}``, texts starting with ``tag(i)``."""
    out = []
    for i in range(start, start + n):
        rid = f"{prefix}-{i:05d}"
        text = f"{tag(i)} is sentence {i} of a chapter read aloud at an even pace."
        out.append((rid.encode(), json.dumps({"request_id": rid, "text": text}).encode()))
    return out


def busy_share(calls: Calls, start: float, end: float, capacity: int) -> float:
    """Share of ``capacity`` slots' time in ``[start, end]`` spent serving ``calls``."""
    served = sum(max(0.0, min(done, end) - max(arrived, start)) for _, arrived, done in calls)
    return served / (capacity * (end - start)) if end > start else 0.0


def added_latency(
    sent: Mapping[str, float], done: Mapping[str, float], calls: Mapping[str, tuple[float, float]]
) -> list[tuple[float, float, float, str]]:
    """(added, before the call, after it, request id) in seconds for every request with all
    three times: ``sent`` and ``done`` by request id, ``calls`` (arrived, done) by request id."""
    out = []
    for rid, at in sent.items():
        if rid in done and rid in calls:
            arrived, served = calls[rid]
            before, after = arrived - at, done[rid] - served
            out.append((before + after, before, after, rid))
    return sorted(out)


async def until(what: str, check: Any, timeout_s: float) -> None:
    """Poll ``await check()`` every 0.1 s until true; fail after ``timeout_s``."""
    give_up = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > give_up:
            raise RuntimeError(f"service: {what} not seen in {timeout_s:g} s")
        await asyncio.sleep(0.1)


def pace(service_s: float) -> float:
    """Paced arrivals, requests/s: half of C/L."""
    return CAPACITY / service_s / 2


async def paced(
    bench: Bench, topic: str, records: Sequence[tuple[bytes, bytes]], rate: float
) -> None:
    """One record every ``1/rate`` seconds, each acknowledged before the next is due."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, (key, value) in enumerate(records):
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        await bench.kafka.producer.send_and_wait(topic, value, key=key)


async def timings(bench: Bench, topic: str) -> dict[str, Any]:
    """request_id -> the ``timings`` of its completion event (Voxline's; the peers send none)."""
    found = {}
    for r in await read_to_end(bench.kafka.settings, topic):
        event = json.loads(r.value or b"{}")
        found[event.get("request_id", "?")] = event.get("timings")
    return found


async def calls_of(fake: Fake) -> tuple[list[tuple[str, float, float]], int]:
    response = await fake.http.get(f"{fake.admin}/calls")
    response.raise_for_status()
    body = response.json()
    return [tuple(c) for c in body["calls"]], int(body["queued"])


async def one(bench: Bench, kind: str, fake: Fake) -> dict[str, Any]:
    """Warm-up, paced requests, then a backlog, through one ``kind`` of processor."""
    sizes, run = bench.sizes, f"service-{bench.run_id}-{kind}"
    topic = f"bench.{bench.run_id}.service.{kind}.requests"
    await bench.kafka.create([topic], 8, BROKER_TIME)
    bench.topics.append(topic)
    done = await bench.completion_topic("service", kind, BROKER_TIME)
    await fake.control(reset=True)
    env = bench.processor_env("service", kind, topic, fake.url, WINDOW)
    warm, n, span, service_s = CAPACITY, sizes.service_paced, sizes.service_span_s, sizes.service_s
    backlog = round(CAPACITY / service_s * (2 * service_s + span) * 1.25) + CAPACITY
    rate = pace(service_s)
    bench.say(f"service: {kind}: warm-up {warm}, {n} paced at {rate:g}/s, backlog {backlog}")
    proc = Processor(kind, env, bench.raw / f"service.{kind}.log")
    async with proc:

        async def count_at_least(m: int) -> bool:
            return await bench.kafka.count(done) >= m

        await bench.kafka.produce(topic, sentences(run, 0, warm))
        await until(f"{kind}'s warm-up", lambda: count_at_least(warm), 120)
        await paced(bench, topic, sentences(run, warm, n), rate)
        await until(f"{kind}'s paced requests", lambda: count_at_least(warm + n), 60)
        paced_calls, queued = await calls_of(fake)
        await bench.kafka.produce(topic, sentences(run, warm + n, backlog))

        async def backlog_served() -> bool:
            return len((await calls_of(fake))[0]) > len(paced_calls)

        await until(f"{kind}'s backlog", backlog_served, 60)
        first = min(a for _, a, _ in (await calls_of(fake))[0][len(paced_calls) :])
        start, end = first + 2 * service_s, first + 2 * service_s + span
        # A call is logged when its service ends: wait for the last one that began by ``end``.
        await asyncio.sleep(max(0.0, end + service_s * (1 + JITTER) + 0.3 - time.time()))
        calls, _ = await calls_of(fake)
        await proc.stop(timeout=60.0 if kind == "voxline" else PEER_STOP_S)
    if kind == "voxline" and proc.returncode not in (0, None):
        bench.notes.append(f"service/{kind} exited with {proc.returncode}")
    tags = {tag(i): f"{run}-{i:05d}" for i in range(warm, warm + n)}
    by_rid = {tags[t]: (a, d) for t, a, d in paced_calls if t in tags}
    ends, spent = await completions(bench, done), await timings(bench, done)
    sent = {rid: at for rid, at in (await sent_at(bench, topic)).items() if rid in tags.values()}
    latencies = added_latency(sent, ends, by_rid)
    in_span = [c for c in calls[len(paced_calls) :] if c[2] > start and c[1] < end]
    mean_l = statistics.fmean(d - a for _, a, d in in_span) if in_span else service_s
    finished = sum(start <= at < end for rid, at in ends.items() if rid not in sent)
    return {
        "measured": len(latencies),
        "queued_calls_paced": queued,
        "added_p50_ms": 1000 * percentile([x[0] for x in latencies], 0.50),
        "added_p99_ms": 1000 * percentile([x[0] for x in latencies], 0.99),
        "before_p99_ms": 1000 * percentile([x[1] for x in latencies], 0.99),
        "after_p99_ms": 1000 * percentile([x[2] for x in latencies], 0.99),
        "e2e_p99_s": percentile([ends[rid] - sent[rid] for *_, rid in latencies], 0.99),
        # The slowest: added, before the call, after it (ms), and the event's own timings.
        "slowest": [
            [rid, *(round(1000 * x, 1) for x in parts), spent.get(rid)]
            for *parts, rid in latencies[-3:]
        ],
        **stages(latencies, spent, sent, ends),
        "busy_share": busy_share(in_span, start, end, CAPACITY),
        "mean_service_s": mean_l,
        "records_per_s": finished / span,
        "span_s": [round(start, 2), round(end, 2)],
        "calls": [(t, round(a, 4), round(d, 4)) for t, a, d in calls],
        "backlog_at": first,
        "added_ms": [round(1000 * x[0], 1) for x in latencies],
    }


def stages(
    latencies: Sequence[tuple[float, float, float, str]],
    spent: Mapping[str, Any],
    sent: Mapping[str, float],
    ends: Mapping[str, float],
) -> dict[str, float]:
    """p50 and p99 (ms) of the parts of the time after the call that Voxline's events report:
    the upload (``store_ms``) and the publication (the event's broker time minus the request's
    and ``total_ms``, which runs to the publication's start). Empty for the peers."""
    known = [(spent[rid], rid) for *_, rid in latencies if isinstance(spent.get(rid), dict)]
    if not known:
        return {}
    store = [float(t["store_ms"]) for t, _ in known]
    publish = [1000 * (ends[rid] - sent[rid]) - t["total_ms"] for t, rid in known]
    return {
        "store_p50_ms": percentile(store, 0.5),
        "store_p99_ms": percentile(store, 0.99),
        "publish_p50_ms": percentile(publish, 0.5),
        "publish_p99_ms": percentile(publish, 0.99),
    }


async def service(bench: Bench) -> None:
    service_s = bench.sizes.service_s
    fake_args = (
        "--capacity", str(CAPACITY), "--latency-ms", str(service_s * 1000),
        "--jitter-ms", str(service_s * JITTER * 1000), "--queue", "fifo", "--log-calls",
    )  # fmt: skip
    async with bench.fake("service", *fake_args) as fake:
        found = {kind: await one(bench, kind, fake) for kind in bench.kinds()}
    bench.dump["service"] = found
    report.plot_service(found, service_s, CAPACITY, bench.out / "service.png")
    for kind, f in found.items():
        bench.say(f"service: {kind}: {json.dumps({k: v for k, v in f.items() if k != 'calls'})}")

    def of(key: str, scale: float = 1.0) -> dict[str, float | None]:
        return {k: f[key] * scale for k, f in found.items()}

    span = bench.sizes.service_span_s
    bench.rows += [
        Row("service", f"throughput / (C/L), backlog, {span:g} s past the ramp",
            of("busy_share"), "higher", "≥ 0.99 (Voxline)", 3),
        Row("service", f"records/s in that span (events; C/L = {CAPACITY / service_s:g})",
            of("records_per_s"), "higher", "", 2),
        Row("service", f"added latency p50, ms (paced at {pace(service_s):g}/s, never a wait)",
            of("added_p50_ms"), "lower", "", 1),
        Row("service", "added latency p99, ms", of("added_p99_ms"), "lower", "≤ 50 (Voxline)", 1),
        Row("service", "end-to-end p99, s (service time included)", of("e2e_p99_s"), "lower",
            "", 2),
    ]  # fmt: skip
    for key, figure in (("store", "upload"), ("publish", "publication")):
        values = {"voxline": found.get("voxline", {}).get(f"{key}_p99_ms")}
        if values["voxline"] is not None:
            bench.rows.append(
                Row("service", f"of it, Voxline's {figure} p99, ms", values, "", "", 1)
            )
