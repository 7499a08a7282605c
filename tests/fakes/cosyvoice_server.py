"""A fake CosyVoice FastAPI server (``runtime/python/fastapi/server.py``) for tests and benchmarks.

It follows the real contract field by field: GET and POST on every route, all parameters as
form fields (url-encoded, or multipart with the file ``prompt_wav``), none in the query string:

    /inference_sft            tts_text, spk_id
    /inference_zero_shot      tts_text, prompt_text, file prompt_wav
    /inference_cross_lingual  tts_text, file prompt_wav
    /inference_instruct       tts_text, spk_id, instruct_text       (v1 model only)
    /inference_instruct2      tts_text, instruct_text, file prompt_wav  (v2/v3 models only)

Success is 200 with a chunked body of raw s16le mono PCM at 22050 Hz (version 1) or 24000 Hz
(versions 2 and 3): a quiet tone, one chunk per sentence, ``ms_per_char`` long per character.
(Starlette sends no Content-Type there; aiohttp adds ``application/octet-stream``.)

Failures are the real server's:

    missing or empty form field     422 {"detail": [{"type", "loc": ["body", name], "msg",
                                    "input"}]}, as FastAPI writes it
    route the model lacks           500 text "Internal Server Error" (v2/v3 raise
                                    NotImplementedError in inference_instruct; v1 has no
                                    inference_instruct2 at all)
    inside synthesis: unknown       200, headers sent, then the connection drops (the error
    spk_id, prompt WAV unreadable,  is raised inside the body generator); v3 fails so when
    below 16 kHz or over 30 s,      ``<|endofprompt|>`` is in none of its texts
    v3 without <|endofprompt|>

Switches make it misbehave the ways the real one does:

    version                 1, 2 or 3: the rate and which instruct route works
    latency_ms, jitter_ms   wait before the first chunk, latency +- uniform jitter
    ms_per_char             audio length per character of tts_text
    rtf                     synthesis time per second of audio, slept before each chunk
    capacity                past it, every wait grows with in_flight / capacity; past
                            ``knee`` x capacity in flight, bodies break off mid-way (OOM)
    knee                    1.5 by default
    fail_first_n            the next N requests break off mid-body, then it recovers
    malformed               the body has an odd number of bytes
    empty_body              200 with no body at all
    speakers                the spk_ids it knows (CosyVoice-300M-SFT's by default)

``GET /stats`` returns counters and the last request's route, method, form fields and prompt
WAV summary; ``POST /control`` takes a JSON object of switches (``{"reset": true}`` zeroes the
counters).

In-process: ``async with running_fake(version=3) as fake: fake.url, fake.stats(), fake.set()``.
Out of process: ``python -m tests.fakes.cosyvoice_server --port 0 --version 2 --capacity 4``
prints ``LISTENING <port>`` once bound to 127.0.0.1 and stops on SIGTERM.
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
import re
import signal
import socket
import struct
import sys
import wave
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiohttp import web

#: CosyVoice-300M-SFT's built-in speakers.
DEFAULT_SPEAKERS = ("中文女", "中文男", "日语男", "粤语女", "英文女", "英文男", "韩语女")
END_OF_PROMPT = "<|endofprompt|>"
TONE_HZ = 440
MAX_PROMPT_SECONDS = 30
MIN_PROMPT_RATE = 16000
#: Form fields per route, in the order FastAPI reports them; ``prompt_wav`` is a file.
ROUTES: dict[str, tuple[str, ...]] = {
    "inference_sft": ("tts_text", "spk_id"),
    "inference_zero_shot": ("tts_text", "prompt_text", "prompt_wav"),
    "inference_cross_lingual": ("tts_text", "prompt_wav"),
    "inference_instruct": ("tts_text", "spk_id", "instruct_text"),
    "inference_instruct2": ("tts_text", "instruct_text", "prompt_wav"),
}
_SENTENCE = re.compile(r"[^.!?;。！？；\n]+[.!?;。！？；\n]*")


@dataclasses.dataclass
class Switches:
    """How the fake behaves; changed at run time through ``/control`` or ``FakeHandle.set``."""

    version: int = 2
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    ms_per_char: float = 60.0
    rtf: float = 0.0
    capacity: int | None = None
    knee: float = 1.5
    fail_first_n: int = 0
    malformed: bool = False
    empty_body: bool = False
    speakers: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_SPEAKERS))

    @property
    def sample_rate(self) -> int:
        return 22050 if self.version == 1 else 24000

    def has_route(self, route: str) -> bool:
        if route == "inference_instruct":
            return self.version == 1
        if route == "inference_instruct2":
            return self.version != 1
        return True


class _Drop(Exception):
    """Synthesis failed after the headers went out: the connection is closed mid-body."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@functools.lru_cache(maxsize=4)
def _tone_second(rate: int) -> bytes:
    """One second of a quiet tone: a whole number of periods, so copies join seamlessly."""
    step = 2 * math.pi * TONE_HZ / rate
    return struct.pack(f"<{rate}h", *(round(3000 * math.sin(step * i)) for i in range(rate)))


def _tone(duration_ms: float, rate: int) -> bytes:
    """Signed 16-bit mono samples of a quiet tone."""
    frames = max(1, round(rate * duration_ms / 1000))
    whole, rest = divmod(frames, rate)
    second = _tone_second(rate)
    return second * whole + second[: rest * 2]


def _sentences(text: str) -> list[str]:
    """The server splits text into sentences and yields one chunk of audio for each."""
    return [part for part in _SENTENCE.findall(text) if part.strip()] or [text]


def _validate(route: str, form: Any) -> list[dict[str, object]]:
    """FastAPI's validation errors for the route's form fields (empty counts as missing)."""
    errors = []
    for name in ROUTES[route]:
        value = form.get(name)
        if value is None or value == "":
            errors.append(_missing(name))
        elif (name == "prompt_wav") != isinstance(value, web.FileField):
            errors.append(_not_a_file(name, value))
    return errors


def _missing(name: str) -> dict[str, object]:
    return {"type": "missing", "loc": ["body", name], "msg": "Field required", "input": None}


def _not_a_file(name: str, value: object) -> dict[str, object]:
    return {
        "type": "value_error",
        "loc": ["body", name],
        "msg": f"Value error, Expected UploadFile, received: {type(value)}",
        "input": value,
        "ctx": {"error": {}},
    }


@dataclasses.dataclass(frozen=True)
class _Prompt:
    """What the server would make of the uploaded prompt WAV."""

    filename: str | None
    content_type: str
    size: int
    sample_rate: int | None
    duration_ms: int | None

    @classmethod
    def read(cls, field: web.FileField) -> _Prompt:
        data = field.file.read()
        rate: int | None = None
        duration: int | None = None
        try:
            with wave.open(io.BytesIO(data)) as reader:
                rate = reader.getframerate()
                duration = round(reader.getnframes() * 1000 / rate)
        except (wave.Error, EOFError, ZeroDivisionError):
            pass
        return cls(field.filename, field.content_type, len(data), rate, duration)

    def failure(self) -> str | None:
        """Why synthesis would fail on this prompt, or ``None``."""
        if self.sample_rate is None or self.duration_ms is None:
            return "prompt_unreadable"
        if self.sample_rate < MIN_PROMPT_RATE:
            return "prompt_rate"
        if self.duration_ms > MAX_PROMPT_SECONDS * 1000:
            return "prompt_too_long"
        return None


class FakeCosyVoiceServer:
    """The aiohttp application and its counters."""

    def __init__(self, switches: Switches | None = None) -> None:
        self.switches = switches or Switches()
        self._fail_remaining = self.switches.fail_first_n
        # Prompt WAVs of up to 30 s at 48 kHz must fit; FastAPI sets no limit.
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        for route in ROUTES:
            handler = self._handler(route)
            self.app.router.add_route("GET", f"/{route}", handler)
            self.app.router.add_route("POST", f"/{route}", handler)
        self.app.router.add_get("/stats", self._stats)
        self.app.router.add_post("/control", self._control)
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.in_flight = 0
        self.in_flight_max = 0
        self.completed = 0
        self.routes: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.dropped: Counter[str] = Counter()
        self.last_request: dict[str, Any] | None = None

    def set(self, **changes: Any) -> None:
        """Change switches by name; unknown names raise ``TypeError``."""
        if changes.pop("reset", False):
            self.reset()
        if "speakers" in changes:
            changes["speakers"] = list(changes["speakers"])
        self.switches = dataclasses.replace(self.switches, **changes)
        if "fail_first_n" in changes:
            self._fail_remaining = self.switches.fail_first_n

    def stats(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "in_flight_max": self.in_flight_max,
            "completed": self.completed,
            "routes": dict(sorted(self.routes.items())),
            "statuses": {str(status): n for status, n in sorted(self.statuses.items())},
            "dropped": dict(sorted(self.dropped.items())),
            "last_request": self.last_request,
            "sample_rate": self.switches.sample_rate,
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
            return web.json_response({"detail": str(exc)}, status=400)
        return web.json_response(self.stats())

    def _handler(self, route: str) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            self.requests += 1
            self.routes[route] += 1
            response = await self._answer(route, request)
            self.statuses[response.status] += 1
            return response

        return handle

    async def _answer(self, route: str, request: web.Request) -> web.StreamResponse:
        # aiohttp reads a form body only for POST-like methods; the real server takes GET too.
        form = await request.clone(method="POST").post()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        upload = form.get("prompt_wav")
        prompt = _Prompt.read(upload) if isinstance(upload, web.FileField) else None
        for value in form.values():
            if isinstance(value, web.FileField):
                value.file.close()
        self.last_request = {
            "route": route,
            "method": request.method,
            "fields": fields,
            "prompt_wav": None if prompt is None else dataclasses.asdict(prompt),
        }
        errors = _validate(route, form)
        if errors:
            return web.json_response({"detail": errors}, status=422)
        switches = self.switches
        if not switches.has_route(route):
            return web.Response(status=500, text="Internal Server Error")
        # FastAPI hands the handler only the route's own fields; extra ones are ignored.
        used = {name: fields[name] for name in ROUTES[route] if name in fields}
        if "prompt_wav" not in ROUTES[route]:
            prompt = None
        return await self._synthesize(request, used, prompt, switches)

    async def _synthesize(
        self,
        request: web.Request,
        fields: dict[str, str],
        prompt: _Prompt | None,
        switches: Switches,
    ) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)  # chunked: no Content-Length
        self.in_flight += 1
        self.in_flight_max = max(self.in_flight_max, self.in_flight)
        try:
            failure = self._failure(fields, prompt, switches)
            if failure is not None:
                raise _Drop(failure)
            # Text up to the marker is an instruction to the model, not spoken.
            spoken = fields["tts_text"].rpartition(END_OF_PROMPT)[2]
            await self._stream(response, spoken, switches, cut=self._take_failure())
            self.completed += 1
        except _Drop as drop:
            self.dropped[drop.reason] += 1
            if request.transport is not None:
                request.transport.close()
            return response
        finally:
            self.in_flight -= 1
        await response.write_eof()
        return response

    def _failure(
        self, fields: dict[str, str], prompt: _Prompt | None, switches: Switches
    ) -> str | None:
        """Why the model fails at once (before any audio), or ``None``."""
        if "spk_id" in fields and fields["spk_id"] not in switches.speakers:
            return "unknown_spk_id"
        if prompt is not None and (reason := prompt.failure()) is not None:
            return reason
        texts = (fields.get(name, "") for name in ("tts_text", "prompt_text", "instruct_text"))
        if switches.version == 3 and not any(END_OF_PROMPT in text for text in texts):
            return "v3_no_endofprompt"
        return None

    def _take_failure(self) -> bool:
        """Whether this request is one of the ``fail_first_n`` that break off mid-body."""
        if self._fail_remaining <= 0:
            return False
        self._fail_remaining -= 1
        return True

    async def _stream(
        self, response: web.StreamResponse, text: str, switches: Switches, *, cut: bool
    ) -> None:
        """Sentence by sentence, as the server's generator yields; ``cut`` drops mid-body."""
        if switches.empty_body:
            return
        await self._wait(_jittered(switches.latency_ms, switches.jitter_ms), switches)
        rate = switches.sample_rate
        for sentence in _sentences(text):
            chunk = _tone(len(sentence) * switches.ms_per_char, rate)
            await self._wait(switches.rtf * len(chunk) / 2 / rate * 1000, switches)
            self._check_overload(switches)
            if cut:
                await response.write(chunk[: len(chunk) // 2])
                raise _Drop("fail_first_n")
            await response.write(chunk)
        if switches.malformed:
            await response.write(b"\x00")

    def _check_overload(self, switches: Switches) -> None:
        if switches.capacity is not None and self.in_flight > switches.knee * switches.capacity:
            raise _Drop("overload")

    async def _wait(self, ms: float, switches: Switches) -> None:
        """Sleep ``ms``, longer the more requests share the model past its capacity."""
        if switches.capacity is not None and self.in_flight > switches.capacity:
            ms *= self.in_flight / max(switches.capacity, 1)
        if ms > 0:
            await asyncio.sleep(ms / 1000)


def _jittered(latency_ms: float, jitter_ms: float) -> float:
    jitter = random.uniform(-jitter_ms, jitter_ms) if jitter_ms else 0.0
    return max(0.0, latency_ms + jitter)


@dataclasses.dataclass(frozen=True)
class FakeHandle:
    """A fake running in this process."""

    url: str
    server: FakeCosyVoiceServer

    def stats(self) -> dict[str, object]:
        return self.server.stats()

    def set(self, **switches: Any) -> None:
        self.server.set(**switches)


@contextlib.asynccontextmanager
async def serve(server: FakeCosyVoiceServer, port: int = 0) -> AsyncIterator[int]:
    """Serve ``server`` on 127.0.0.1 (port 0: any free one); yields the bound port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    # A client that gives up cancels its handler, as uvicorn stops a disconnected stream.
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
    server = FakeCosyVoiceServer(Switches(**switches))
    async with serve(server) as port:
        yield FakeHandle(f"http://127.0.0.1:{port}", server)


def parse_args(argv: Sequence[str] | None = None) -> tuple[int, Switches]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--version", type=int, choices=(1, 2, 3), default=2)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--ms-per-char", type=float, default=60.0)
    parser.add_argument("--rtf", type=float, default=0.0)
    parser.add_argument("--capacity", type=int, default=None)
    parser.add_argument("--knee", type=float, default=1.5)
    parser.add_argument("--fail-first-n", type=int, default=0)
    parser.add_argument("--malformed", action="store_true")
    parser.add_argument("--empty-body", action="store_true")
    parser.add_argument(
        "--speakers", default=",".join(DEFAULT_SPEAKERS), help="comma-separated spk_ids"
    )
    args = parser.parse_args(argv)
    switches = Switches(
        version=args.version,
        latency_ms=args.latency_ms,
        jitter_ms=args.jitter_ms,
        ms_per_char=args.ms_per_char,
        rtf=args.rtf,
        capacity=args.capacity,
        knee=args.knee,
        fail_first_n=args.fail_first_n,
        malformed=args.malformed,
        empty_body=args.empty_body,
        speakers=[name for name in args.speakers.split(",") if name],
    )
    return args.port, switches


async def _main(port: int, switches: Switches) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with serve(FakeCosyVoiceServer(switches), port) as bound:
        print(f"LISTENING {bound}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    port, switches = parse_args(argv)
    asyncio.run(_main(port, switches))


if __name__ == "__main__":
    main(sys.argv[1:])
