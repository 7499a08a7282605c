"""What every fake TTS server shares; a family's module keeps only its own routes, request
parsing, failure modes and bodies.

The switches every fake has (a family's ``Switches`` extends :class:`Switches`):

    latency_ms, jitter_ms   each admitted request waits latency +- uniform jitter
    fail_first_n            the next N requests fail the family's way, then it recovers
    down                    every API request has its connection closed without an answer,
                            as a server that is restarting or gone (the client sees a transport
                            error; /stats and /control keep working)
    error_ratio             this share of requests answers a random 500/502/503/504 (the family's
                            error body; Retry-After only where the family adds one)
    timeout_ratio           this share of requests holds its answer for ``hang_ms`` (longer than
                            the client's read timeout, so the client times out)
    hang_ms                 how long a held request waits before answering anyway
    drip_ms                 the audio goes out two bytes at a time, one pair every drip_ms (the
                            headers promise it all): no single read waits long, so only the
                            client's overall deadline ends the call
    seed                    seeds the random choices of error_ratio/timeout_ratio (setting it
                            again reseeds); None: unseeded

The fakes that answer with one audio body (OpenAI, Qwen, Fish) add :class:`SpeechSwitches`:

    ms_per_char             audio length per character of input (at speed 1)
    fail_status             every request answers this status (with ``fail_message``)
    fail_message            the message for ``fail_status``; None: "fake failure <status>"
    api_key                 ``Authorization: Bearer <key>`` required (else 401)
    truncate                headers promise the whole body; half is sent, then the socket closes
    empty_body              200 with no body
    corrupt                 200 with a body that is not audio

``GET /stats`` returns the counters (requests, statuses by code with dropped ones under ``0``,
in flight, the last request and Authorization header) and the switches; ``POST /control`` takes
a JSON object of switches to change at run time (``{"reset": true}`` zeroes the counters).

In-process: ``async with running_fake(latency_ms=50) as fake: fake.url, fake.stats(), fake.set()``.
Out of process: ``python -m tests.fakes.<family>_server --port 0 --latency-ms 250`` (a flag for
every switch) prints ``LISTENING <port>`` once bound to 127.0.0.1 and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import io
import math
import random
import signal
import socket
import struct
import typing
import wave
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Generic, Literal, TypeVar

from aiohttp import web

HOST = "127.0.0.1"
#: Random 5xx answers of ``error_ratio``: the statuses real servers and proxies send.
RANDOM_ERRORS = (500, 502, 503, 504)
#: ``statuses`` key counting requests dropped by ``down`` (no HTTP status was sent).
DROPPED = 0
#: Bytes a dripping body sends at a time.
DRIP_BYTES = 2

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@functools.lru_cache(maxsize=8)
def _tone_second(rate: int, tone_hz: int) -> bytes:
    """One second of a quiet tone: a whole number of periods, so copies join seamlessly."""
    step = 2 * math.pi * tone_hz / rate
    return struct.pack(f"<{rate}h", *(round(3000 * math.sin(step * i)) for i in range(rate)))


def tone(duration_ms: float, rate: int, tone_hz: int) -> bytes:
    """Signed 16-bit mono samples of a quiet ``tone_hz`` tone (at least one sample)."""
    frames = max(1, round(rate * duration_ms / 1000))
    whole, rest = divmod(frames, rate)
    second = _tone_second(rate, tone_hz)
    return second * whole + second[: rest * 2]


def wav_bytes(pcm: bytes, rate: int) -> bytes:
    """``pcm`` (16-bit mono) in a WAV container."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(pcm)
    return buffer.getvalue()


@dataclasses.dataclass
class Switches:
    """How a fake behaves; changed at run time through ``/control`` or ``FakeHandle.set``.

    Command-line flags are made from the fields: ``metadata`` is passed to ``add_argument``.
    """

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    fail_first_n: int = 0
    down: bool = False
    error_ratio: float = 0.0
    timeout_ratio: float = 0.0
    hang_ms: float = 30_000.0
    seed: int | None = None
    drip_ms: float = 0.0

    def jittered_ms(self, base_ms: float | None = None) -> float:
        """``base_ms`` (default ``latency_ms``) +- uniform ``jitter_ms``, never below 0."""
        base = self.latency_ms if base_ms is None else base_ms
        jitter = random.uniform(-self.jitter_ms, self.jitter_ms) if self.jitter_ms else 0.0
        return max(0.0, base + jitter)


@dataclasses.dataclass
class SpeechSwitches(Switches):
    """The switches of the fakes that answer a request with one audio body."""

    ms_per_char: float = 60.0
    fail_status: int | None = None
    fail_message: str | None = None
    api_key: str | None = None
    truncate: bool = False
    empty_body: bool = False
    corrupt: bool = False


@dataclasses.dataclass(frozen=True)
class Fault:
    """A failure chosen for one request: answer ``status`` with ``message``, or hold it."""

    status: int | None = None
    message: str = ""
    hang_ms: float | None = None

    def wait_ms(self, otherwise_ms: float) -> float:
        """How long the request waits: ``hang_ms`` when it is held, else ``otherwise_ms``."""
        return otherwise_ms if self.hang_ms is None else self.hang_ms


NO_FAULT = Fault()
S = TypeVar("S", bound=Switches)
SS = TypeVar("SS", bound=SpeechSwitches)


class FakeServer(Generic[S]):
    """The aiohttp application with ``/stats`` and ``/control``, the counters and the faults
    every fake shares. A family adds its routes with :meth:`api_route`."""

    def __init__(self, switches: S, *, client_max_size: int = 1024**2) -> None:
        self.switches = switches
        self._fail_remaining = switches.fail_first_n
        self._rng = random.Random(switches.seed)
        self.in_flight = 0
        self.app = web.Application(client_max_size=client_max_size)
        self.app.router.add_get("/stats", self._stats)
        self.app.router.add_post("/control", self._control)
        self.reset()

    def reset(self) -> None:
        """Zero the counters (not what is in flight now)."""
        self.requests = 0
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
            "switches": {
                name: None if isinstance(value, float) and math.isinf(value) else value
                for name, value in dataclasses.asdict(self.switches).items()
            },
        }

    def api_route(self, path: str, answer: Handler, methods: Sequence[str] = ("POST",)) -> None:
        """A route of the family's API: counted, and dropped while ``down``."""

        async def handle(request: web.Request) -> web.StreamResponse:
            self.requests += 1
            if self.switches.down:
                self.statuses[DROPPED] += 1
                drop(request)
                return web.Response(status=503)  # never reaches the client: the socket is closed
            self.last_authorization = request.headers.get("Authorization")
            response = await answer(request)
            self.statuses[response.status] += 1
            return response

        for method in methods:
            self.app.router.add_route(method, path, handle)

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Count a request in flight for the duration of the block."""
        self.in_flight += 1
        self.in_flight_max = max(self.in_flight_max, self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1

    def take_first_failure(self) -> bool:
        """Whether this request is one of the ``fail_first_n``."""
        if self._fail_remaining <= 0:
            return False
        self._fail_remaining -= 1
        return True

    def draw(self) -> Fault:
        """This request's random fault: a 5xx (``error_ratio``), a hold (``timeout_ratio``)."""
        switches = self.switches
        if not (switches.error_ratio or switches.timeout_ratio):
            return NO_FAULT
        draw = self._rng.random()
        if draw < switches.error_ratio:
            status = self._rng.choice(RANDOM_ERRORS)
            return Fault(status, f"fake random failure {status}")
        if draw < switches.error_ratio + switches.timeout_ratio:
            return Fault(hang_ms=switches.hang_ms)
        return NO_FAULT

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _control(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise TypeError("the body must be a JSON object of switches")
            self.set(**changes)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": {"message": str(exc)}}, status=400)
        return web.json_response(self.stats())


class SpeechServer(FakeServer[SS]):
    """A fake that answers with one audio body (see :func:`answer_audio`): its API key and its
    scripted failures."""

    def key_refused(self, request: web.Request) -> bool:
        """``api_key`` is set and the request does not carry it as a Bearer token."""
        key = self.switches.api_key
        return bool(key) and request.headers.get("Authorization") != f"Bearer {key}"

    def injected(self, first_status: int, first_message: str) -> Fault:
        """``fail_status``, else one of ``fail_first_n`` (answered ``first_status``), else
        :meth:`draw`."""
        switches = self.switches
        if switches.fail_status is not None:
            message = switches.fail_message or f"fake failure {switches.fail_status}"
            return Fault(switches.fail_status, message)
        if self.take_first_failure():
            return Fault(first_status, first_message)
        return self.draw()


async def answer_audio(
    request: web.Request,
    audio: bytes,
    content_type: str,
    switches: SpeechSwitches,
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """``audio`` as a 200, broken the ways ``empty_body``, ``corrupt``, ``truncate`` and
    ``drip_ms`` say (truncate: the headers promise the whole body; half is sent, then the socket
    closes)."""
    if switches.empty_body:
        return web.Response(body=b"", content_type=content_type)
    if switches.corrupt:
        return web.Response(body=b"<html>upstream error</html>", content_type=content_type)
    if not switches.truncate:
        return await send(request, audio, content_type, switches, headers)
    response = await _prepared(request, len(audio), content_type, headers)
    await response.write(audio[: len(audio) // 2])
    drop(request)
    return response


async def send(
    request: web.Request,
    body: bytes,
    content_type: str,
    switches: Switches,
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """``body`` as a 200: at once, or a drip at a time with ``drip_ms``."""
    if not switches.drip_ms:
        return web.Response(body=body, content_type=content_type, headers=headers)
    response = await _prepared(request, len(body), content_type, headers)
    await write(response, body, switches)
    await response.write_eof()
    return response


async def _prepared(
    request: web.Request, length: int, content_type: str, headers: Mapping[str, str] | None
) -> web.StreamResponse:
    """A 200 whose headers (promising ``length`` bytes) are sent."""
    response = web.StreamResponse(headers={"Content-Type": content_type, **(headers or {})})
    response.content_length = length
    await response.prepare(request)
    return response


async def write(response: web.StreamResponse, data: bytes, switches: Switches) -> None:
    """Write ``data`` at once, or a drip at a time with ``drip_ms``."""
    if not switches.drip_ms:
        await response.write(data)
        return
    for start in range(0, len(data), DRIP_BYTES):
        await response.write(data[start : start + DRIP_BYTES])
        await asyncio.sleep(switches.drip_ms / 1000)


def drop(request: web.Request) -> None:
    """Close the connection without (the rest of) an answer: the client sees a transport error."""
    if request.transport is not None:
        request.transport.close()


@dataclasses.dataclass(frozen=True)
class FakeHandle:
    """A fake running in this process."""

    url: str
    server: FakeServer[Any]

    def stats(self) -> dict[str, object]:
        return self.server.stats()

    def set(self, **switches: Any) -> None:
        self.server.set(**switches)


@contextlib.asynccontextmanager
async def serve(app: web.Application, port: int = 0) -> AsyncIterator[int]:
    """Serve ``app`` on 127.0.0.1 (port 0: any free one); yields the bound port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    # A client that gives up cancels its handler (and frees its place in a queue), as at a real
    # server behind a proxy. No access log: the benchmark's fake answers thousands a second.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.SockSite(runner, sock, backlog=1024).start()
        yield sock.getsockname()[1]
    finally:
        await runner.cleanup()
        sock.close()


@contextlib.asynccontextmanager
async def running(server: FakeServer[Any]) -> AsyncIterator[FakeHandle]:
    """``server`` on a free port of 127.0.0.1 for the duration of the block."""
    async with serve(server.app) as port:
        yield FakeHandle(f"http://{HOST}:{port}", server)


def command_line(
    switches_type: type[S], argv: Sequence[str] | None = None, doc: str | None = None
) -> tuple[int, S]:
    """The port and the switches from ``--port`` and a flag for each switch."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0] or None)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    hints = typing.get_type_hints(switches_type)
    for field in dataclasses.fields(switches_type):
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(flag, **_option(field, hints[field.name]))
    args = vars(parser.parse_args(argv))
    port: int = args.pop("port")
    return port, switches_type(**args)


def _option(field: dataclasses.Field[Any], hint: Any) -> dict[str, Any]:
    """``add_argument``'s options for a switch: bools are on/off flags, lists comma-separated."""
    if hint is bool:
        return {"action": "store_true", **field.metadata}
    factory = field.default_factory
    default = field.default if factory is dataclasses.MISSING else factory()
    options: dict[str, Any] = {"default": default}
    kinds = [kind for kind in typing.get_args(hint) if kind is not type(None)]
    if typing.get_origin(hint) is Literal:
        options["choices"] = kinds
    elif typing.get_origin(hint) is list:
        options["type"] = _comma_separated
    else:
        options["type"] = kinds[0] if kinds else hint
    return {**options, **field.metadata}


def _comma_separated(value: str) -> list[str]:
    return [item for item in value.split(",") if item]


def main(
    make: Callable[[S], FakeServer[S]],
    switches_type: type[S],
    doc: str | None,
    argv: Sequence[str] | None = None,
) -> None:
    """Serve ``make(switches)`` from the command line: print ``LISTENING <port>``, stop on
    SIGTERM or SIGINT."""
    port, switches = command_line(switches_type, argv, doc)
    asyncio.run(_listen(make, switches, port))


async def _listen(make: Callable[[S], FakeServer[S]], switches: S, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with serve(make(switches).app, port) as bound:
        print(f"LISTENING {bound}", flush=True)
        await stop.wait()
