"""Figures from what a run left behind: completion timestamps, samples of the processor's CPU
time and window limit, the backend's per-second counters. Pure functions; times are epoch
seconds throughout, so the processor's, the broker's and the backend's clocks line up."""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.harness import Completion

Series = Sequence[tuple[float, float]]


def throughput(stamps: Sequence[float]) -> float:
    """Events per second from the first to the last (sorted) timestamp."""
    if len(stamps) < 2 or stamps[-1] <= stamps[0]:
        return 0.0
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def count_between(stamps: Sequence[float], start: float, end: float) -> int:
    """Sorted timestamps in ``[start, end)``."""
    return bisect.bisect_left(stamps, end) - bisect.bisect_left(stamps, start)


def rate_between(stamps: Sequence[float], start: float, end: float) -> float:
    return count_between(stamps, start, end) / (end - start) if end > start else 0.0


def per_second(stamps: Sequence[float], start: float, seconds: int) -> list[int]:
    """Counts in each whole second after ``start``."""
    return [count_between(stamps, start + i, start + i + 1) for i in range(seconds)]


def interpolate(series: Series, t: float) -> float:
    """Piecewise-linear value of a sampled, time-sorted series at ``t`` (clamped at the ends)."""
    if not series:
        raise ValueError("empty series")
    times = [p[0] for p in series]
    i = bisect.bisect_left(times, t)
    if i == 0:
        return series[0][1]
    if i == len(series):
        return series[-1][1]
    (t0, v0), (t1, v1) = series[i - 1], series[i]
    return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)


def cpu_per_1000(cpu: Series, stamps: Sequence[float]) -> float:
    """CPU seconds the process spent per 1,000 events between the first and the last one."""
    if len(stamps) < 2 or not cpu:
        return 0.0
    spent = interpolate(cpu, stamps[-1]) - interpolate(cpu, stamps[0])
    return 1000 * spent / (len(stamps) - 1)


def settle_time(series: Series, start: float, end: float, low: float, high: float) -> float | None:
    """Seconds after ``start`` from which every sample up to ``end`` lies in ``[low, high]``;
    None if the last sample is still outside."""
    points = [(t, v) for t, v in series if start <= t < end]
    if not points:
        return None
    outside = [i for i, (_, v) in enumerate(points) if not low <= v <= high]
    if not outside:
        return 0.0
    last = outside[-1]
    if last == len(points) - 1:
        return None
    return points[last + 1][0] - start


def calls_between(
    seconds: Sequence[Mapping[str, int]], start: float, end: float
) -> tuple[int, int]:
    """(ok, failed) backend calls in the backend's per-second series within ``[start, end)``."""
    ok = failed = 0
    for second in seconds:
        if start <= second["t"] < end:
            ok += second["ok"]
            failed += second["failed"]
    return ok, failed


def share(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


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
            "throughput": throughput(ok),
            "cpu_per_1000": cpu_per_1000(self.cpu, ok),
            "peak_rss_mb": self.peak_rss_mb,
            "backend_calls": self.backend.get("calls"),
            "backend_failed": self.backend.get("failed"),
            "returncode": self.returncode,
            "startup_s": (self.first_seen or math.nan) - self.started_at,
            "stop_s": self.exited_at - self.stopped_at,
        }
