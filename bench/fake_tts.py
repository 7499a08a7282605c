"""A benchmark TTS backend: one self-hosted GPU server, as seen through its OpenAI-compatible
``POST /v1/audio/speech`` route.

    capacity C    calls served at once; more wait in a FIFO queue (``fifo``), or all of them
                  share the server, each at ``C/n`` of full speed (``ps``, processor sharing)
    latency_ms L  service time of one call alone, +- ``jitter_ms`` (uniform)
    per_char N    when set, service time is ``L * len(input) / N`` (so ``L`` at ``N`` characters)
    knee K        past ``floor(K * C)`` calls in the server (queued or served) it overloads,
                  the way ``overload`` says. No 429, no Retry-After: the client must find C.
    overload      ``fail``: a call past the knee fails after ``fail_ms`` (HTTP 500 or a dropped
                  connection, as ``fail_mode`` says) and the rest are served;
                  ``queue``: every call is kept, and past the knee the server thrashes (each call
                  slows a further ``in_server / knee`` with ``ps``; a call arriving past it is
                  slowed so with ``fifo``);
                  ``crash``: the call past the knee brings the server down, out of GPU memory:
                  every call in it fails (``fail_mode``), connections are refused and dropped for
                  ``restart_s``, then it serves again, empty.

The shared switches of :mod:`tests.fakes.common` work too (``fail_first_n`` fails as past the
knee; ``down``, ``error_ratio``, ``timeout_ratio``: a held call keeps its place ``hang_ms``;
``drip_ms``: the body trickles out after the call has left the server).

The body is speech-like audio (``processor.testing.speechlike``: syllables and gaps, which pass
Voxline's quality gate) as long as a voice takes over the text, at the middle of the gate's pace
bounds for its script (English: about 78 ms a spoken character), 8 kHz 16-bit mono: about 16 KB a
second of speech, so a median text of 120 characters is about 120 KB (a real server's 24 kHz
would be three times the bytes). Clips are cached by length (to 0.1 s), so the fake spends its
CPU on serving, not on making audio. ``GET /stats`` returns totals and a per-second series (epoch
seconds: calls ok, calls failed, most calls in the server, crashes) and the crash times;
``POST /control`` takes a JSON object of switches to change at run time (``{"capacity": 6}``;
``{"reset": true}`` zeroes the counters and ends a restart). With ``log_calls`` on, ``GET
/calls`` returns every served call as ``[tag, arrived, done]``: the first word of its input, when
its request reached the handler and when its service ended (epoch seconds), and ``queued``, the
calls that found the server full.

``python -m bench.fake_tts --port 0 --capacity 16 --latency-ms 250`` prints ``LISTENING <port>
<admin port>`` once bound to 127.0.0.1 and stops on SIGTERM. Both ports serve every route; only
the first goes away while the server restarts, so the harness watches through the second.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import math
import signal
import socket
import time
import weakref
from typing import Any, Literal, Protocol

from aiohttp import web

from bench.server_models import FifoServer, Server, SharedServer
from processor.quality import Thresholds, pace_bounds, spoken_length
from processor.testing import speechlike
from tests.fakes import common

RATE = 8000
FailMode = Literal["500", "drop"]
QueueMode = Literal["fifo", "ps"]
Overload = Literal["fail", "queue", "crash"]
OUT_OF_MEMORY = "CUDA out of memory"
PACE = Thresholds()


@functools.lru_cache(maxsize=256)
def _clip(tenths: int) -> bytes:
    return common.wav_bytes(speechlike(100 * tenths, RATE, seed=tenths), RATE)


def audio(text: str) -> bytes:
    """A WAV of speech-like audio as long as a voice takes over ``text``."""
    low, high = pace_bounds(PACE, "auto", text)
    return _clip(max(1, round(10 * spoken_length(text) * math.sqrt(low * high))))


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
    overload: Overload = "fail"
    #: How long a crashed server refuses connections (process restart and model load).
    restart_s: float = 5.0
    #: Keep every served call's tag and times for ``GET /calls`` (the service scenario).
    log_calls: bool = False

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError("capacity must be >= 1")
        if self.knee < 1.0:
            raise ValueError("knee must be >= 1")
        if self.fail_mode not in ("500", "drop") or self.queue not in ("fifo", "ps"):
            raise ValueError("fail_mode is 500|drop, queue is fifo|ps")
        if self.overload not in ("fail", "queue", "crash") or self.restart_s < 0:
            raise ValueError("overload is fail|queue|crash, restart_s >= 0")

    @property
    def knee_calls(self) -> float:
        """Calls the server holds before a new one fails."""
        return math.floor(self.knee * self.capacity) if math.isfinite(self.knee) else math.inf

    def service_ms(self, chars: int, in_server: int) -> float:
        base = self.latency_ms
        if self.per_char:
            base *= chars / self.per_char
        if self.overload == "queue" and self.queue == "fifo":
            base *= max(1.0, in_server / self.knee_calls)  # thrashing when it arrived
        return self.jittered_ms(base)

    def fail_s(self) -> float:
        return (self.latency_ms / 5 if self.fail_ms is None else self.fail_ms) / 1000


@dataclasses.dataclass
class _Second:
    ok: int = 0
    failed: int = 0
    in_server_max: int = 0
    crashes: int = 0


class Listener(Protocol):
    """The API port, closed while a crashed server restarts (connections are refused)."""

    async def close(self) -> None: ...

    async def open(self) -> None: ...


class FakeTTS(common.FakeServer[Switches]):
    """The aiohttp application, its server model and its counters."""

    def __init__(self, switches: Switches | None = None) -> None:
        switches = switches or Switches()
        self.server = self._model(switches)
        #: Set when the server crashes: every call in it fails.
        self._fall: asyncio.Event = asyncio.Event()
        self._restart: asyncio.Task[None] | None = None
        self._connections: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()
        self.listener: Listener | None = None
        super().__init__(switches)
        self.api_route("/v1/audio/speech", self._speech)
        self.app.router.add_get("/calls", self._calls)

    @staticmethod
    def _model(switches: Switches) -> Server:
        if switches.queue == "ps":
            thrash = switches.knee_calls if switches.overload == "queue" else math.inf
            return SharedServer(switches.capacity, thrash)
        return FifoServer(switches.capacity)

    def reset(self) -> None:
        super().reset()
        self.calls = 0
        self.ok = 0
        self.failed = 0
        self.series: dict[int, _Second] = {}
        self.crashes: list[float] = []
        self.call_log: list[tuple[str, float, float]] = []
        self.queued = 0

    def set(self, **changes: Any) -> None:
        if changes.get("queue", self.switches.queue) != self.switches.queue:
            raise ValueError("queue cannot change at run time")
        if changes.get("reset") and self._restart is not None:
            self._restart.cancel()  # a fresh run starts on a healthy server
            changes["down"] = False
        super().set(**changes)
        self.server.set_capacity(self.switches.capacity)
        if isinstance(self.server, SharedServer) and self.switches.overload == "queue":
            self.server.thrash_past = self.switches.knee_calls

    def stats(self) -> dict[str, object]:
        return {
            **super().stats(),
            "calls": self.calls,
            "ok": self.ok,
            "failed": self.failed,
            "in_server": self.in_flight,  # calls in the server: queued, served or about to fail
            "in_server_max": self.in_flight_max,
            "crashes": self.crashes,
            "series": [
                {"t": t, **dataclasses.asdict(second)} for t, second in sorted(self.series.items())
            ],
        }

    def _second(self) -> _Second:
        now = int(time.time())
        second = self.series.get(now)
        if second is None:
            second = self.series[now] = _Second()
        return second

    async def _calls(self, request: web.Request) -> web.Response:
        return web.json_response({"calls": self.call_log, "queued": self.queued})

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        arrived = time.time()
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
        if request.transport is not None:
            self._connections.add(request.transport)
        with self.serving():
            second = self._second()
            second.in_server_max = max(second.in_server_max, self.in_flight)
            past_knee = self.in_flight > switches.knee_calls
            if self._restart is not None:  # got in as it fell: goes down with it
                return self._fail(request, switches.fail_mode)
            if past_knee and switches.overload == "crash":
                self._crash()
                return self._fail(request, switches.fail_mode)
            if (past_knee and switches.overload == "fail") or self.take_first_failure():
                await asyncio.sleep(switches.fail_s())
                return self._fail(request, switches.fail_mode)
            fault = self.draw()
            if fault.status is not None:
                return self._fail(request, "500", fault.status, fault.message)
            seconds = fault.wait_ms(switches.service_ms(len(text), self.in_flight)) / 1000
            self.queued += self.in_flight > self.server.capacity
            if switches.overload != "crash":
                await self.server.serve(seconds)
            elif not await self._survived(seconds):
                return self._fail(request, switches.fail_mode)
        self.ok += 1
        self._second().ok += 1
        if switches.log_calls:
            self.call_log.append((text.split(" ", 1)[0], arrived, time.time()))
        return await common.send(request, audio(text), "audio/wav", switches)

    async def _survived(self, seconds: float) -> bool:
        """Serve a call; False if the server crashed under it."""
        fall = self._fall
        serving = asyncio.ensure_future(self.server.serve(seconds))
        falling = asyncio.ensure_future(fall.wait())
        try:
            await asyncio.wait((serving, falling), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (serving, falling):
                task.cancel()
        return serving.done() and not serving.cancelled() and serving.exception() is None

    def _crash(self) -> None:
        """Out of memory: every call in the server fails, then the process restarts."""
        self.crashes.append(time.time())
        self._second().crashes += 1
        self._fall.set()
        self._fall = asyncio.Event()
        self.switches = dataclasses.replace(self.switches, down=True)
        self._restart = asyncio.create_task(self._restarting(self.switches.restart_s))

    async def _restarting(self, seconds: float) -> None:
        listener = self.listener
        try:
            await asyncio.sleep(0.05)  # the victims' answers go out; then the process is gone
            for connection in list(self._connections):
                connection.close()
            if listener is not None:
                await listener.close()
            await asyncio.sleep(seconds)
        finally:
            self.server = self._model(self.switches)  # back, empty
            self.switches = dataclasses.replace(self.switches, down=False)
            self._restart = None
            if listener is not None:
                await listener.open()

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


class Port:
    """One listening port of the app on 127.0.0.1 (0: a free one), that can close and reopen."""

    def __init__(self, runner: web.AppRunner, port: int = 0) -> None:
        self.runner, self.port = runner, port
        self.site: web.SockSite | None = None

    async def open(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((common.HOST, self.port))
        self.port = sock.getsockname()[1]
        self.site = web.SockSite(self.runner, sock, backlog=1024)
        await self.site.start()

    async def close(self) -> None:
        if self.site is not None:
            await self.site.stop()  # refuses new connections; the open ones are closed apart
            self.site = None


async def _listen(switches: Switches, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    fake = FakeTTS(switches)
    runner = web.AppRunner(
        fake.app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
    )
    await runner.setup()
    api, admin = Port(runner, port), Port(runner)
    fake.listener = api
    try:
        await api.open()
        await admin.open()
        print(f"LISTENING {api.port} {admin.port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    port, switches = common.command_line(Switches, None, __doc__)
    asyncio.run(_listen(switches, port))
