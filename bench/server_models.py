"""How the benchmark's fake GPU server shares itself among the calls in it: a FIFO queue past
its capacity, or processor sharing (every call slows), which can also thrash past a knee."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from typing import Protocol


class Server(Protocol):
    capacity: int
    #: Calls past which a processor-sharing server thrashes (``overload="queue"``).
    thrash_past: float

    async def serve(self, service_s: float) -> None: ...

    def set_capacity(self, capacity: int) -> None: ...


class FifoServer:
    """``capacity`` calls in service; the rest wait in arrival order."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.thrash_past = math.inf  # applied on arrival, in FakeTTS
        self.busy = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def serve(self, service_s: float) -> None:
        if self.busy < self.capacity and not self._waiters:
            self.busy += 1
        else:
            slot = asyncio.get_running_loop().create_future()
            self._waiters.append(slot)
            try:
                await slot
            except asyncio.CancelledError:
                if slot.done() and not slot.cancelled():
                    self._release()  # handed a slot, then cancelled: give it on
                raise
        try:
            if service_s > 0:
                await asyncio.sleep(service_s)
        finally:
            self._release()

    def set_capacity(self, capacity: int) -> None:
        self.capacity = capacity
        self._wake()

    def _release(self) -> None:
        self.busy -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.busy < self.capacity:
            slot = self._waiters.popleft()
            if not slot.done():
                self.busy += 1
                slot.set_result(None)


class SharedServer:
    """Processor sharing: with ``n`` calls in the server each runs at ``min(1, C/n)`` speed,
    times ``min(1, thrash_past/n)``."""

    def __init__(self, capacity: int, thrash_past: float = math.inf) -> None:
        self.capacity = capacity
        self.thrash_past = thrash_past
        self._jobs: dict[asyncio.Future[None], float] = {}
        self._last = time.monotonic()
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def serve(self, service_s: float) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._schedule())
        self._advance()
        done = asyncio.get_running_loop().create_future()
        self._jobs[done] = service_s
        self._kick.set()
        try:
            await done
        finally:
            self._advance()
            self._jobs.pop(done, None)
            self._kick.set()

    def set_capacity(self, capacity: int) -> None:
        self._advance()
        self.capacity = capacity
        self._kick.set()

    def _rate(self) -> float:
        n = max(1, len(self._jobs))
        return min(1.0, self.capacity / n) * min(1.0, self.thrash_past / n)

    def _advance(self) -> None:
        now = time.monotonic()
        progress = (now - self._last) * self._rate()
        self._last = now
        for job in self._jobs:
            self._jobs[job] -= progress

    async def _schedule(self) -> None:
        while True:
            self._advance()
            for job, left in list(self._jobs.items()):
                if left <= 1e-6:
                    del self._jobs[job]
                    if not job.done():
                        job.set_result(None)
            self._kick.clear()
            wait = min(self._jobs.values(), default=math.inf) / self._rate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), None if math.isinf(wait) else wait)
