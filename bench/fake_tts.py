"""A benchmark TTS backend: one self-hosted GPU server, as seen through its OpenAI-compatible
``POST /v1/audio/speech`` route.

    capacity C    calls served at once; more wait in a FIFO queue (``fifo``), or all of them
                  share the server, each at ``C/n`` of full speed (``ps``, processor sharing)
    latency_ms L  service time of one call alone, +- ``jitter_ms`` (uniform)
    per_char N    when set, service time is ``L * len(input) / N`` (so ``L`` at ``N`` characters)
    knee K        with more than ``floor(K * C)`` calls in the server (queued or served), a new
                  one fails after ``fail_ms``: HTTP 500 or a dropped connection, as a GPU server
                  out of memory does. No 429, no Retry-After: the client must find C itself.

The shared switches of :mod:`tests.fakes.common` work too (``fail_first_n`` fails as past the
knee; ``down``, ``error_ratio``, ``timeout_ratio``: a held call keeps its place ``hang_ms``;
``drip_ms``: the body trickles out after the call has left the server).

The body is a small valid WAV (8 kHz mono, 80 ms) whatever the text, so neither the store nor
the network is the bottleneck. ``GET /stats`` returns totals and a per-second series (epoch
seconds: calls ok, calls failed, most calls in the server); ``POST /control`` takes a JSON object
of switches to change at run time (``{"capacity": 6}``; ``{"reset": true}`` zeroes the counters).

``python -m bench.fake_tts --port 0 --capacity 16 --latency-ms 250`` prints ``LISTENING <port>``
once bound to 127.0.0.1 and stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import math
import time
from typing import Any, Literal, Protocol

from aiohttp import web

from tests.fakes import common

RATE = 8000
FailMode = Literal["500", "drop"]
QueueMode = Literal["fifo", "ps"]
OUT_OF_MEMORY = "CUDA out of memory"
WAV = common.wav_bytes(common.tone(80, RATE, 400), RATE)


@dataclasses.dataclass
class Switches(common.Switches):
    """How the server behaves; changed at run time through ``/control``."""

    capacity: int = 16
    latency_ms: float = 250.0
    per_char: float | None = None
    knee: float = math.inf
    fail_mode: FailMode = "500"
    #: How long a call past the knee lives before it fails; None: a fifth of ``latency_ms``.
    fail_ms: float | None = None
    queue: QueueMode = "fifo"

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError("capacity must be >= 1")
        if self.knee < 1.0:
            raise ValueError("knee must be >= 1")
        if self.fail_mode not in ("500", "drop") or self.queue not in ("fifo", "ps"):
            raise ValueError("fail_mode is 500|drop, queue is fifo|ps")

    @property
    def knee_calls(self) -> float:
        """Calls the server holds before a new one fails."""
        return math.floor(self.knee * self.capacity) if math.isfinite(self.knee) else math.inf

    def service_ms(self, chars: int) -> float:
        base = self.latency_ms
        if self.per_char:
            base *= chars / self.per_char
        return self.jittered_ms(base)

    def fail_s(self) -> float:
        return (self.latency_ms / 5 if self.fail_ms is None else self.fail_ms) / 1000


class Server(Protocol):
    capacity: int

    async def serve(self, service_s: float) -> None: ...

    def set_capacity(self, capacity: int) -> None: ...


class FifoServer:
    """``capacity`` calls in service; the rest wait in arrival order."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
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
    """Processor sharing: with ``n`` calls in the server each runs at ``min(1, C/n)`` speed."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
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
        return min(1.0, self.capacity / max(1, len(self._jobs)))

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


@dataclasses.dataclass
class _Second:
    ok: int = 0
    failed: int = 0
    in_server_max: int = 0


class FakeTTS(common.FakeServer[Switches]):
    """The aiohttp application, its server model and its counters."""

    def __init__(self, switches: Switches | None = None) -> None:
        switches = switches or Switches()
        self.server = self._model(switches)
        super().__init__(switches)
        self.api_route("/v1/audio/speech", self._speech)

    @staticmethod
    def _model(switches: Switches) -> Server:
        if switches.queue == "ps":
            return SharedServer(switches.capacity)
        return FifoServer(switches.capacity)

    def reset(self) -> None:
        super().reset()
        self.calls = 0
        self.ok = 0
        self.failed = 0
        self.series: dict[int, _Second] = {}

    def set(self, **changes: Any) -> None:
        if changes.get("queue", self.switches.queue) != self.switches.queue:
            raise ValueError("queue cannot change at run time")
        super().set(**changes)
        self.server.set_capacity(self.switches.capacity)

    def stats(self) -> dict[str, object]:
        return {
            **super().stats(),
            "calls": self.calls,
            "ok": self.ok,
            "failed": self.failed,
            "in_server": self.in_flight,  # calls in the server: queued, served or about to fail
            "in_server_max": self.in_flight_max,
            "series": [
                {"t": t, "ok": s.ok, "failed": s.failed, "in_server_max": s.in_server_max}
                for t, s in sorted(self.series.items())
            ],
        }

    def _second(self) -> _Second:
        now = int(time.time())
        second = self.series.get(now)
        if second is None:
            second = self.series[now] = _Second()
        return second

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not JSON")
        text = body.get("input") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text:
            return _error(400, "'input' must be a non-empty string")
        if body.get("response_format", "wav") != "wav":
            return _error(400, "this fake answers wav only")
        self.calls += 1
        switches = self.switches
        with self.serving():
            second = self._second()
            second.in_server_max = max(second.in_server_max, self.in_flight)
            if self.in_flight > switches.knee_calls or self.take_first_failure():
                await asyncio.sleep(switches.fail_s())
                return self._fail(request, switches.fail_mode)
            fault = self.draw()
            if fault.status is not None:
                return self._fail(request, "500", fault.status, fault.message)
            await self.server.serve(fault.wait_ms(switches.service_ms(len(text))) / 1000)
        self.ok += 1
        self._second().ok += 1
        return await common.send(request, WAV, "audio/wav", switches)

    def _fail(
        self,
        request: web.Request,
        mode: FailMode,
        status: int = 500,
        message: str = OUT_OF_MEMORY,
    ) -> web.Response:
        self.failed += 1
        self._second().failed += 1
        if mode == "drop":
            common.drop(request)
        return _error(status, message)


def _error(status: int, message: str) -> web.Response:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return web.Response(text=json.dumps(body), status=status, content_type="application/json")


if __name__ == "__main__":
    common.main(FakeTTS, Switches, __doc__)
