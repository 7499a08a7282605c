"""A fake OpenAI-compatible speech server (``POST /v1/audio/speech``) for tests and benchmarks.

It follows the real contract (JSON in; audio out; errors as ``{"error": {message, type, param,
code}}``) and answers with a real 24 kHz mono 16-bit WAV (or headerless pcm) of a quiet tone
whose length grows with the text. Switches make it misbehave the ways real servers do:

    latency_ms, jitter_ms   each admitted request waits latency +- uniform jitter
    capacity                requests in flight past this answer 429 with ``Retry-After: 1``
    fail_first_n            the next N requests answer 503, then it recovers
    fail_status             every request answers this status (e.g. 422, 500)
    truncate                headers promise the whole body; half is sent, then the socket closes
    empty_body              200 with no body
    corrupt                 200 with a body that is not audio
    streamed_wav            wav with placeholder sizes (0xFFFFFFFF), as servers that stream write
    ms_per_char             audio length per character of input (at speed 1)
    api_key                 when set, ``Authorization: Bearer <key>`` is required (else 401)
    down                    every speech request has its connection closed without an answer,
                            as a server that is restarting or gone (the client sees a transport
                            error; /stats and /control keep working)
    error_ratio             this share of requests answers a random 500/502/503/504, no Retry-After
    timeout_ratio           this share of requests holds its answer for ``hang_ms`` (longer than
                            the client's read timeout, so the client times out)
    hang_ms                 how long a held request waits before answering anyway
    seed                    seeds the random choices of error_ratio/timeout_ratio (setting it
                            again reseeds); None: unseeded

``GET /stats`` returns counters and the last request's JSON body; ``POST /control`` takes a JSON
object of switches to change at run time (``{"reset": true}`` zeroes the counters).

In-process: ``async with running_fake(latency_ms=50) as fake: fake.url, fake.stats(), fake.set()``.
Out of process: ``python -m tests.fakes.openai_server --port 0 --latency-ms 250 --capacity 16``
prints ``LISTENING <port>`` once bound to 127.0.0.1 and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import math
import random
import signal
import socket
import struct
import sys
import wave
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiohttp import web

RATE = 24000
TONE_HZ = 400  # a whole number of samples per period at 24 kHz
FORMATS = ("wav", "pcm")


@dataclasses.dataclass
class Switches:
    """How the fake behaves; changed at run time through ``/control`` or ``FakeHandle.set``."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    capacity: int | None = None
    fail_first_n: int = 0
    fail_status: int | None = None
    truncate: bool = False
    empty_body: bool = False
    corrupt: bool = False
    streamed_wav: bool = False
    ms_per_char: float = 60.0
    api_key: str | None = None
    down: bool = False
    error_ratio: float = 0.0
    timeout_ratio: float = 0.0
    hang_ms: float = 30_000.0
    seed: int | None = None


#: Random 5xx answers of ``error_ratio``: the statuses real servers and proxies send.
RANDOM_ERRORS = (500, 502, 503, 504)
#: ``statuses`` key counting requests dropped by ``down`` (no HTTP status was sent).
DROPPED = 0


def _tone(duration_ms: float) -> bytes:
    """Signed 16-bit mono samples of a quiet 400 Hz tone."""
    period = RATE // TONE_HZ
    cycle = b"".join(
        struct.pack("<h", round(3000 * math.sin(2 * math.pi * i / period))) for i in range(period)
    )
    frames = max(1, round(RATE * duration_ms / 1000))
    whole, rest = divmod(frames, period)
    return cycle * whole + cycle[: rest * 2]


def _wav(pcm: bytes) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(RATE)
        writer.writeframes(pcm)
    return buffer.getvalue()


def _error(status: int, message: str, *, param: str | None = None, **headers: str) -> web.Response:
    kind = {429: "rate_limit_error", 401: "authentication_error"}.get(
        status, "invalid_request_error"
    )
    if status >= 500:
        kind = "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return web.json_response(body, status=status, headers=headers)


class FakeSpeechServer:
    """The aiohttp application and its counters."""

    def __init__(self, switches: Switches | None = None) -> None:
        self.switches = switches or Switches()
        self._fail_remaining = self.switches.fail_first_n
        self._rng = random.Random(self.switches.seed)
        self.app = web.Application()
        self.app.router.add_post("/v1/audio/speech", self._speech)
        self.app.router.add_get("/stats", self._stats)
        self.app.router.add_post("/control", self._control)
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.in_flight = 0
        self.in_flight_max = 0
        self.statuses: Counter[int] = Counter()
        self.last_request: object = None
        self.last_authorization: str | None = None

    def set(self, **changes: Any) -> None:
        """Change switches by name; unknown names raise ``TypeError``."""
        if changes.pop("reset", False):
            self.reset()
        self.switches = dataclasses.replace(self.switches, **changes)
        if "fail_first_n" in changes:
            self._fail_remaining = self.switches.fail_first_n
        if "seed" in changes:
            self._rng = random.Random(self.switches.seed)

    def stats(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "in_flight_max": self.in_flight_max,
            "statuses": {str(status): n for status, n in sorted(self.statuses.items())},
            "last_request": self.last_request,
            "last_authorization": self.last_authorization,
            "switches": dataclasses.asdict(self.switches),
        }

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _control(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise TypeError("the body must be a JSON object of switches")
            self.set(**changes)
        except (ValueError, TypeError) as exc:
            return _error(400, str(exc))
        return web.json_response(self.stats())

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.switches.down:
            self.statuses[DROPPED] += 1
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=503)  # never reaches the client: the socket is closed
        response = await self._answer(request)
        self.statuses[response.status] += 1
        return response

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        switches = self.switches
        self.last_authorization = request.headers.get("Authorization")
        if switches.api_key and self.last_authorization != f"Bearer {switches.api_key}":
            return _error(401, "Incorrect API key provided")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "We could not parse the JSON body of your request.")
        self.last_request = body
        invalid = _validate(body)
        if invalid is not None:
            return invalid
        if switches.fail_status is not None:
            return _error(switches.fail_status, f"fake failure {switches.fail_status}")
        if self._fail_remaining > 0:
            self._fail_remaining -= 1
            return _error(503, "model is loading")
        hang = False
        if switches.error_ratio or switches.timeout_ratio:
            draw = self._rng.random()
            if draw < switches.error_ratio:
                status = self._rng.choice(RANDOM_ERRORS)
                return _error(status, f"fake random failure {status}")
            hang = draw < switches.error_ratio + switches.timeout_ratio
        if switches.capacity is not None and self.in_flight >= switches.capacity:
            return _error(429, "too many concurrent requests", **{"Retry-After": "1"})
        self.in_flight += 1
        self.in_flight_max = max(self.in_flight_max, self.in_flight)
        try:
            await asyncio.sleep((switches.hang_ms if hang else _delay(switches)) / 1000)
            return await self._audio(request, body, switches)
        finally:
            self.in_flight -= 1

    async def _audio(
        self, request: web.Request, body: dict[str, Any], switches: Switches
    ) -> web.StreamResponse:
        fmt = body.get("response_format", "wav")
        content_type = "audio/wav" if fmt == "wav" else "audio/pcm"
        if switches.empty_body:
            return web.Response(body=b"", content_type=content_type)
        if switches.corrupt:
            return web.Response(body=b"<html>upstream error</html>", content_type=content_type)
        speed = float(body.get("speed", 1.0))
        pcm = _tone(len(body["input"]) * switches.ms_per_char / speed)
        audio = _wav(pcm) if fmt == "wav" else pcm
        if fmt == "wav" and switches.streamed_wav:
            unknown = b"\xff\xff\xff\xff"
            audio = audio[:4] + unknown + audio[8:40] + unknown + audio[44:]
        if not switches.truncate:
            return web.Response(body=audio, content_type=content_type)
        response = web.StreamResponse(headers={"Content-Type": content_type})
        response.content_length = len(audio)
        await response.prepare(request)
        await response.write(audio[: len(audio) // 2])
        if request.transport is not None:
            request.transport.close()
        return response


def _validate(body: object) -> web.Response | None:
    """The real API's 400s for a body it cannot use."""
    if not isinstance(body, dict):
        return _error(400, "The request body must be a JSON object.")
    text = body.get("input")
    if not isinstance(text, str) or not text:
        return _error(400, "'input' must be a non-empty string", param="input")
    if len(text) > 4096:
        return _error(400, "input is longer than 4096 characters", param="input")
    if not isinstance(body.get("model"), str):
        return _error(400, "you must provide a model parameter", param="model")
    if not isinstance(body.get("voice"), str):
        return _error(400, "you must provide a voice parameter", param="voice")
    fmt = body.get("response_format", "wav")
    if fmt not in FORMATS:
        return _error(400, f"this fake produces {'/'.join(FORMATS)}, not {fmt!r}", param="format")
    speed = body.get("speed", 1.0)
    if not isinstance(speed, int | float) or isinstance(speed, bool) or not 0.25 <= speed <= 4:
        return _error(400, f"{speed!r} is not a speed from 0.25 to 4.0", param="speed")
    return None


def _delay(switches: Switches) -> float:
    jitter = random.uniform(-switches.jitter_ms, switches.jitter_ms) if switches.jitter_ms else 0
    return max(0.0, switches.latency_ms + jitter)


@dataclasses.dataclass(frozen=True)
class FakeHandle:
    """A fake running in this process."""

    url: str
    server: FakeSpeechServer

    def stats(self) -> dict[str, object]:
        return self.server.stats()

    def set(self, **switches: Any) -> None:
        self.server.set(**switches)


@contextlib.asynccontextmanager
async def serve(server: FakeSpeechServer, port: int = 0) -> AsyncIterator[int]:
    """Serve ``server`` on 127.0.0.1 (port 0: any free one); yields the bound port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    # A client that gives up cancels its handler, as at a real server behind a proxy.
    runner = web.AppRunner(server.app, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        yield sock.getsockname()[1]
    finally:
        await runner.cleanup()
        sock.close()


@contextlib.asynccontextmanager
async def running_fake(**switches: Any) -> AsyncIterator[FakeHandle]:
    """A fake on a free port of 127.0.0.1 for the duration of the block."""
    server = FakeSpeechServer(Switches(**switches))
    async with serve(server) as port:
        yield FakeHandle(f"http://127.0.0.1:{port}", server)


def parse_args(argv: Sequence[str] | None = None) -> tuple[int, Switches]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--capacity", type=int, default=None)
    parser.add_argument("--fail-first-n", type=int, default=0)
    parser.add_argument("--fail-status", type=int, default=None)
    parser.add_argument("--truncate", action="store_true")
    parser.add_argument("--empty-body", action="store_true")
    parser.add_argument("--corrupt", action="store_true")
    parser.add_argument("--streamed-wav", action="store_true")
    parser.add_argument("--ms-per-char", type=float, default=60.0)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--down", action="store_true")
    parser.add_argument("--error-ratio", type=float, default=0.0)
    parser.add_argument("--timeout-ratio", type=float, default=0.0)
    parser.add_argument("--hang-ms", type=float, default=30_000.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    switches = Switches(
        latency_ms=args.latency_ms,
        jitter_ms=args.jitter_ms,
        capacity=args.capacity,
        fail_first_n=args.fail_first_n,
        fail_status=args.fail_status,
        truncate=args.truncate,
        empty_body=args.empty_body,
        corrupt=args.corrupt,
        streamed_wav=args.streamed_wav,
        ms_per_char=args.ms_per_char,
        api_key=args.api_key,
        down=args.down,
        error_ratio=args.error_ratio,
        timeout_ratio=args.timeout_ratio,
        hang_ms=args.hang_ms,
        seed=args.seed,
    )
    return args.port, switches


async def _main(port: int, switches: Switches) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with serve(FakeSpeechServer(switches), port) as bound:
        print(f"LISTENING {bound}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    port, switches = parse_args(argv)
    asyncio.run(_main(port, switches))


if __name__ == "__main__":
    main(sys.argv[1:])
