"""The adaptive scenario: Voxline's adaptive window against each way a GPU server overloads,
beside the best fixed window of a sweep against the same server.

Every shape is ``bench/fake_tts.py`` with C=12, L=250 ms and the knee at 1.5 C (18 calls),
hidden from Voxline; past it the server fails the excess (``fail``), keeps everything and
thrashes (``queue``), or crashes with every call in it and refuses connections while it restarts
(``crash``). The sweep runs fixed windows for ``sweep_s`` each; the adaptive run starts from 4
(ceiling 32) and the capacity halves to 6 (knee 9) after the first phase and comes back after the
second. The peers (window 32) run against the first shape.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bench import measure, report
from bench.scenarios import JITTER_MS, LATENCY_MS

if TYPE_CHECKING:
    from bench.measure import Result
    from bench.run import Bench

CAPACITY, KNEE = 12, 1.5
#: Crashes later than this many seconds after the capacity comes back (the last change) count
#: against the "none after" target.
SETTLED_S = 10.0


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    title: str
    args: tuple[str, ...]


SHAPES = (
    Shape("fail", "fails the excess", ("--queue", "fifo", "--overload", "fail")),
    Shape("queue", "queues and thrashes", ("--queue", "ps", "--overload", "queue")),
    Shape("crash", "crashes and restarts", ("--queue", "ps", "--overload", "crash")),
)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One shape's figures against the targets."""

    shape: Shape
    best_window: int
    best: float
    ratio: float
    failed_pct: float
    crashes: int
    crashes_late: int
    follow: tuple[float | None, float | None]
    dead_lettered: int

    @property
    def met(self) -> bool:
        followed = all(s is not None and s <= 10.0 for s in self.follow)
        calm = self.shape.name != "crash" or (self.crashes <= 2 and self.crashes_late == 0)
        return self.ratio >= 0.9 and followed and calm


def crash_times(run: Result) -> list[float]:
    """The backend's crashes, in seconds since the run's first completion."""
    return [t - run.t0 for t in run.backend.get("crashes", [])]


def failed_pct(run: Result, start: float, end: float) -> float:
    ok, failed = measure.calls_between(run.backend.get("series", []), start, end)
    return 100 * measure.share(failed, ok + failed)


async def adaptive(bench: Bench) -> None:
    s = bench.sizes
    topic, chars = await bench.request_topic("adaptive", s.adaptive_records)
    base = (
        "--capacity", str(CAPACITY), "--latency-ms", str(LATENCY_MS), "--jitter-ms",
        str(JITTER_MS), "--per-char", f"{chars:.3f}", "--knee", str(KNEE),
        "--restart-s", str(s.restart_s),
    )  # fmt: skip
    for index, shape in enumerate(SHAPES):
        scenario = f"adaptive-{shape.name}"
        kinds = bench.kinds()[1:] if index == 0 else ()
        async with bench.fake(scenario, *base, *shape.args) as fake:
            fixed, ours, peers = await _runs(bench, scenario, topic, fake, kinds)
        figures(bench, shape, fixed, ours, peers)


async def _runs(
    bench: Bench, scenario: str, topic: str, fake: Any, kinds: Sequence[str]
) -> tuple[dict[int, Result], Result, dict[str, Result]]:
    s = bench.sizes
    n, p1, p2, p3 = s.adaptive_records, *s.phases
    normal = {"capacity": CAPACITY}
    schedule = [(p1, {"capacity": CAPACITY // 2}), (p1 + p2, normal)]
    fixed = {}
    for window in s.sweep:
        fixed[window] = await bench.run(
            scenario, topic, n, f"voxline-w{window}", "voxline", fake,
            window=window, timebox_s=s.sweep_s, until_all=False, backend=normal,
        )  # fmt: skip
    phased: dict[str, Any] = {
        "timebox_s": p1 + p2 + p3, "until_all": False, "backend": normal, "schedule": schedule,
    }  # fmt: skip
    ours = await bench.run(
        scenario, topic, n, "voxline-adaptive", "voxline", fake,
        window=32, adaptive=True, interval=0.5, **phased,
    )  # fmt: skip
    peers = await bench.each_kind(scenario, topic, n, fake, kinds, window=32, **phased)
    return fixed, ours, peers


def figures(
    bench: Bench,
    shape: Shape,
    fixed: Mapping[int, Result],
    ours: Result,
    peers: Mapping[str, Result],
) -> None:
    span, phase = bench.sizes.sweep_s, bench.sizes.phases[0]
    settled = sum(bench.sizes.phases[:2]) + SETTLED_S

    def goodput(r: Result, seconds: float = phase) -> float:
        """Records/s from the first completion: a fixed window's sweep span, or the first
        phase (C=12, the climb from 4 included) of a run with capacity changes."""
        return measure.rate_between(r.ok, r.t0, r.t0 + seconds)

    sweep = {w: goodput(r, span) for w, r in fixed.items()}
    best_window = max(sweep, key=lambda w: sweep[w])
    best = sweep[best_window]
    bench.sweeps[shape.name] = [
        (w, sweep[w], failed_pct(r, r.t0, r.t0 + span), len(crash_times(r)), r.failed)
        for w, r in fixed.items()
    ]
    runs = {"voxline": ours, **peers}
    scenario = f"adaptive ({shape.name})"
    ratio = {k: goodput(r) / best if best else math.nan for k, r in runs.items()}
    failed = {k: failed_pct(r, r.t0 - 5, r.stopped_at + 5) for k, r in runs.items()}
    crashes = {k: float(len(crash_times(r))) for k, r in runs.items()}
    late = {k: float(sum(t > settled for t in crash_times(r))) for k, r in runs.items()}
    bench.row(scenario, f"goodput / best fixed window (w{best_window}: {best:.1f}/s)", ratio,
              target="≥ 0.90", digits=3)  # fmt: skip
    bench.row(scenario, "failed backend calls, % (whole run)", failed, better="lower", digits=2)
    if shape.name == "crash":
        bench.row(scenario, "server crashes, whole run", crashes, better="lower",
                  target="≤ 2", digits=0)  # fmt: skip
        bench.row(scenario, f"server crashes after the first {settled:g} s", late,
                  better="lower", target="0", digits=0)  # fmt: skip
    bench.row(scenario, "records dead-lettered", {k: float(r.failed) for k, r in runs.items()},
              better="", digits=0)  # fmt: skip
    follow = _follow(bench, scenario, ours)
    ok = (ratio["voxline"], failed["voxline"], int(crashes["voxline"]), int(late["voxline"]))
    bench.verdicts.append(Verdict(shape, best_window, best, *ok, follow, ours.failed))
    bench.timelines[shape.name] = _timeline(ours, peers, best)


def _follow(bench: Bench, scenario: str, ours: Result) -> tuple[float | None, float | None]:
    """Seconds until the window stays in [0.9 C, knee] after each capacity change."""
    changes = [t for t, _ in ours.changes] + [math.nan, math.nan]
    drop_at, rise_at = changes[0], changes[1]
    bands = [
        ("converge from 4 (C=12)", ours.t0, drop_at, CAPACITY),
        ("follow C 12→6", drop_at, rise_at, CAPACITY // 2),
        ("follow C 6→12", rise_at, ours.stopped_at, CAPACITY),
    ]
    settled = []
    for name, start, stop, c in bands:
        low, high = 0.9 * c, math.floor(KNEE * c)
        seconds = measure.settle_time(ours.limits, start, stop, low, high)
        settled.append(seconds)
        target = "≤ 30 s" if name.startswith("converge") else "≤ 10 s"
        bench.row(scenario, f"seconds to {name}: window stays in [{low:g}, {high}]",
                  {"voxline": seconds}, better="", target=target)  # fmt: skip
    return settled[1], settled[2]


def _timeline(ours: Result, peers: Mapping[str, Result], best: float) -> report.Timeline:
    series = ours.backend.get("series", [])
    return report.Timeline(
        goodput=measure.per_second(ours.ok, ours.t0, math.ceil(ours.stopped_at - ours.t0)),
        limits=[(t - ours.t0, v) for t, v in ours.limits],
        capacity=[(0.0, float(CAPACITY))]
        + [(t - ours.t0, float(ch["capacity"])) for t, ch in ours.changes],
        knee=KNEE,
        failed_calls=[(x["t"] - ours.t0, x["failed"]) for x in series],
        in_server=[(x["t"] - ours.t0, x["in_server_max"]) for x in series],
        latency_s=LATENCY_MS / 1000,
        best_fixed=best,
        crashes=crash_times(ours),
        peers={
            k: measure.per_second(r.ok, r.t0, math.ceil(r.stopped_at - r.t0))
            for k, r in peers.items()
        },
    )


def summary(verdicts: Sequence[Verdict], sweeps: Mapping[str, Sequence[Any]]) -> list[str]:
    """The per-shape table against the targets, and each shape's sweep, as markdown lines."""

    def secs(value: float | None) -> str:
        return "never" if value is None else f"{value:.1f}"

    lines = [
        "Adaptive window per overload shape, against the targets (goodput over the first phase, "
        "C=12, its climb from 4 included, relative to the best fixed window of the sweep "
        "against the same server; failed calls as the server counted them, not counting the "
        "connections it refused while restarting):",
        "",
        "| overload shape | goodput / best fixed (≥ 0.90) | best fixed | failed calls, % | "
        "crashes, all / 10 s after C is back (≤ 2 / 0) | follow C 12→6 / 6→12, s (≤ 10) | "
        "dead-lettered | targets |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        lines.append(
            f"| {v.shape.name}: {v.shape.title} | {v.ratio:.3f} | w{v.best_window}, "
            f"{v.best:.1f}/s | {v.failed_pct:.2f} | {v.crashes} / {v.crashes_late} | "
            f"{secs(v.follow[0])} / {secs(v.follow[1])} | {v.dead_lettered} | "
            f"{'met' if v.met else 'missed'} |"
        )
    for name, rows in sweeps.items():
        lines += [
            "",
            f"Fixed windows against the `{name}` server (C=12, knee 18), first phase:",
            "",
            "| window | goodput, records/s | failed calls, % | crashes | dead-lettered |",
            "|---|---|---|---|---|",
        ]
        lines += [f"| {w} | {g:.1f} | {f:.2f} | {c} | {d} |" for w, g, f, c, d in rows]
    return lines
