"""The results: a markdown table (Voxline, each peer, Voxline/peer ratios) and the adaptive
scenario's plot."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

PEERS = ("gather", "faststream")
NAMES = {"voxline": "Voxline", "gather": "gather-batch", "faststream": "FastStream"}
Better = Literal["higher", "lower", ""]


@dataclasses.dataclass(frozen=True)
class Row:
    """One figure of one scenario, for Voxline and (where they ran) the peers."""

    scenario: str
    figure: str
    values: Mapping[str, float | None]
    #: Which way is better; "" for figures that are not compared.
    better: Better = "higher"
    target: str = ""
    digits: int = 1


def _fmt(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:,.{digits}f}"


def _ratio(row: Row, peer: str) -> str:
    ours, theirs = row.values.get("voxline"), row.values.get(peer)
    if not row.better or ours is None or theirs is None or math.isnan(ours) or math.isnan(theirs):
        return "—"
    if theirs == 0:
        return "∞" if ours > 0 else "—"
    ratio = ours / theirs
    ahead = ratio > 1 if row.better == "higher" else ratio < 1
    return f"{ratio:.2f}" + (" ✓" if ahead else " ✗")


def table(rows: Sequence[Row], peers: bool) -> str:
    head = ["scenario", "figure", "Voxline"]
    if peers:
        head += [NAMES[p] for p in PEERS] + [f"Voxline/{NAMES[p]}" for p in PEERS]
    head.append("target")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.scenario, row.figure, _fmt(row.values.get("voxline"), row.digits)]
        if peers:
            cells += [_fmt(row.values.get(p), row.digits) for p in PEERS]
            cells += [_ratio(row, p) for p in PEERS]
        cells.append(row.target)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: Issue 17's targets against the best peer: (scenario, start of the figure, better, bound),
#: Voxline / best peer within ``bound`` (at most for "lower", at least for "higher").
AGAINST_BEST = (
    ("overhead", "CPU seconds per 1,000 records", "lower", 0.7),
    ("overhead", "records/s end to end", "higher", 1.0),
    ("backlog", "peak RSS", "lower", 1.0),
    ("backlog", "drain rate", "higher", 1.0),
)


def against_best(rows: Sequence[Row]) -> list[str]:
    """Markdown lines: each figure of :data:`AGAINST_BEST` for every processor, the best
    peer's value, Voxline's ratio to it and the target; nothing without the peers."""
    lines = [
        "| figure | Voxline | gather-batch | FastStream | Voxline / best peer | target | |",
        "|---|---|---|---|---|---|---|",
    ]
    for scenario, start, better, bound in AGAINST_BEST:
        row = next((r for r in rows if r.scenario == scenario and r.figure.startswith(start)), None)
        if row is None:
            continue
        peers = [v for p in PEERS if (v := row.values.get(p)) is not None and not math.isnan(v)]
        ours = row.values.get("voxline")
        if not peers or ours is None or math.isnan(ours):
            continue
        best = min(peers) if better == "lower" else max(peers)
        ratio = ours / best if best else math.inf
        met = ratio <= bound if better == "lower" else ratio >= bound
        sign = "≤" if better == "lower" else "≥"
        cells = [_fmt(row.values.get(k), row.digits) for k in ("voxline", *PEERS)]
        lines.append(
            f"| {scenario}: {row.figure} | {' | '.join(cells)} | {ratio:.2f} | {sign} {bound:g} "
            f"| {'met' if met else 'missed'} |"
        )
    return lines if len(lines) > 2 else []


@dataclasses.dataclass(frozen=True)
class Timeline:
    """The adaptive run, relative to its first completion."""

    goodput: Sequence[int]  # succeeded records per second
    limits: Sequence[tuple[float, float]]  # (seconds, window limit)
    capacity: Sequence[tuple[float, float]]  # (seconds, backend capacity C), steps
    knee: float
    failed_calls: Sequence[tuple[float, int]]  # (seconds, failed backend calls that second)
    in_server: Sequence[tuple[float, int]]  # (seconds, most calls in the backend)
    latency_s: float
    best_fixed: float | None
    #: When the backend crashed (seconds).
    crashes: Sequence[float] = ()
    peers: Mapping[str, Sequence[int]] = dataclasses.field(default_factory=dict)


def plot(timeline: Timeline, path: Path, title: str) -> None:
    fig, (top, bottom) = _panels(sharex=True)
    seconds = [i + 0.5 for i in range(len(timeline.goodput))]
    top.plot(seconds, timeline.goodput, label="Voxline adaptive: succeeded records/s", color="C0")
    for i, (peer, series) in enumerate(timeline.peers.items()):
        top.plot(
            [s + 0.5 for s in range(len(series))],
            series,
            label=f"{NAMES[peer]} (window 32): succeeded records/s",
            color=f"C{i + 2}",
            alpha=0.6,
            linewidth=1,
        )
    cap_t, cap_v = _steps(timeline.capacity, len(timeline.goodput))
    top.plot(cap_t, [c / timeline.latency_s for c in cap_v], "k--", label="C / L (ideal)")
    if timeline.best_fixed:
        top.axhline(timeline.best_fixed, color="grey", linestyle=":", label="best fixed window")
    if timeline.failed_calls:
        top.bar(
            [t + 0.5 for t, _ in timeline.failed_calls],
            [n for _, n in timeline.failed_calls],
            width=0.9,
            color="C3",
            alpha=0.5,
            label="failed backend calls/s (Voxline)",
        )
    for axis in (top, bottom):
        for i, at in enumerate(timeline.crashes):
            label = "backend crash (restarting)" if i == 0 and axis is bottom else None
            axis.axvline(at, color="C3", linewidth=2, alpha=0.8, label=label)
    top.set_ylabel("per second")
    top.legend(loc="lower left", fontsize=8)
    top.set_title(title)
    bottom.step(
        [t for t, _ in timeline.limits],
        [v for _, v in timeline.limits],
        where="post",
        label="window limit",
        color="C0",
    )
    bottom.plot(cap_t, cap_v, "k--", label="backend capacity C")
    bottom.plot(
        cap_t, [math.floor(c * timeline.knee) for c in cap_v], "r:", label="knee (fails past)"
    )
    if timeline.in_server:
        bottom.plot(
            [t + 0.5 for t, _ in timeline.in_server],
            [n for _, n in timeline.in_server],
            color="C1",
            alpha=0.5,
            linewidth=1,
            label="most calls in backend",
        )
    bottom.set_ylabel("concurrent calls")
    bottom.set_xlabel("seconds since the first completion")
    bottom.legend(loc="upper right", fontsize=8)
    _save(fig, path)


def _panels(*, sharex: bool) -> tuple[Any, tuple[Any, Any]]:
    """A figure of two panels, one above the other (matplotlib without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=sharex)
    return fig, (top, bottom)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _steps(changes: Sequence[tuple[float, float]], end: float) -> tuple[list[float], list[float]]:
    times: list[float] = []
    values: list[float] = []
    for i, (t, v) in enumerate(changes):
        until = changes[i + 1][0] if i + 1 < len(changes) else end
        times += [t, until]
        values += [v, v]
    return times, values


def plot_service(found: Mapping[str, Any], service_s: float, capacity: int, path: Path) -> None:
    """The service scenario: calls in the server from the backlog's first call (each
    processor), and every paced request's added latency, sorted (a CDF)."""
    fig, (top, bottom) = _panels(sharex=False)
    for i, (kind, f) in enumerate(found.items()):
        start = f["backlog_at"]
        grid = [start + 0.05 * k for k in range(int((f["span_s"][1] - start) / 0.05) + 1)]
        busy = [sum(1 for _, a, d in f["calls"] if a <= t < d) for t in grid]
        top.step([t - start for t in grid], busy, where="post", label=NAMES[kind], color=f"C{i}")
        added = f["added_ms"]
        shares = [(k + 1) / len(added) for k in range(len(added))]
        bottom.step(added, shares, where="post", label=NAMES[kind], color=f"C{i}")
    top.axhline(capacity, color="k", linestyle="--", label=f"capacity C = {capacity}")
    top.axvline(2 * service_s, color="grey", linestyle=":", label="measured from here (2 L)")
    top.set_xlabel("seconds since the backlog's first call")
    top.set_ylabel("calls in the server")
    top.set_title(f"Backend L = {service_s:g} s, C = {capacity}, window {capacity}: a backlog")
    top.legend(loc="lower right", fontsize=8)
    bottom.axvline(50, color="C3", linestyle="--", label="target p99 ≤ 50 ms (Voxline)")
    bottom.set_xscale("log")
    bottom.set_xlabel("added latency, ms (end-to-end minus the backend's service time)")
    bottom.set_ylabel("share of requests")
    bottom.set_title("Requests paced at half the capacity (none waits for a slot)")
    bottom.legend(loc="lower right", fontsize=8)
    _save(fig, path)
