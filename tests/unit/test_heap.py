"""processor.heap: the allocator's mmap threshold fixed once per process, on glibc only, and
never over the operator's own allocator settings."""

from __future__ import annotations

import ctypes

import pytest

from processor import heap
from processor import quality_signal as qs


class FakeLibc:
    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.answer


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_tuned", [])


def test_the_threshold_is_fixed_once_per_process() -> None:
    libc = FakeLibc()
    assert heap.tune({}, libc)
    assert heap.tune({}, libc)
    assert libc.calls == [
        (heap.M_MMAP_THRESHOLD, 264 * 1024),
        (heap.M_TRIM_THRESHOLD, 528 * 1024),
        (heap.M_ARENA_MAX, 2),
    ]
    assert heap.MMAP_THRESHOLD > 256 * 1024  # asyncio's socket read buffer stays in the heap


@pytest.mark.parametrize(
    "environ",
    [{"MALLOC_ARENA_MAX": "2"}, {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}],
)
def test_the_operators_own_allocator_settings_win(environ: dict[str, str]) -> None:
    libc = FakeLibc()
    assert not heap.tune(environ, libc)
    assert libc.calls == []


def test_a_refusal_is_reported_and_not_retried() -> None:
    libc = FakeLibc(answer=0)
    assert not heap.tune({}, libc)
    assert not heap.tune({}, libc)
    assert libc.calls == [(heap.M_MMAP_THRESHOLD, 264 * 1024)]


def test_this_machines_glibc_is_found_and_takes_the_setting() -> None:
    libc = heap.glibc()
    assert libc is not None  # CI runs on Debian (glibc)
    assert isinstance(libc, ctypes.CDLL)
    assert libc.mallopt(heap.M_MMAP_THRESHOLD, heap.MMAP_THRESHOLD) == 1
    assert libc.mallopt(heap.M_TRIM_THRESHOLD, heap.TRIM_THRESHOLD) == 1
    assert libc.mallopt(heap.M_ARENA_MAX, heap.ARENAS) == 1


def test_the_gates_temporaries_stay_below_the_threshold() -> None:
    """quality_signal's blocks (float samples, windowed frames, spectrum) are smaller than
    the threshold at every common rate, so they come from the heap, not a fresh mapping."""
    for rate in (8000, 16_000, 22_050, 24_000, 44_100, 48_000):
        size = qs.frame_size(rate)
        rows = max(1, qs.BLOCK_SAMPLES // size)
        samples = rows * size * 8
        spectrum = rows * (size // 2 + 1) * 16
        assert max(samples, spectrum) < heap.MMAP_THRESHOLD, rate
