"""A fake vLLM-Omni server running Qwen3-TTS (``POST /v1/audio/speech``) for tests and benchmarks.

It follows the real contract field by field: the OpenAI speech fields plus vLLM-Omni's
``task_type``, ``language``, ``ref_audio``, ``ref_text``, ``x_vector_only_mode``, ``seed`` and
``max_new_tokens``, checked as ``Qwen3TTSAdapter.validate`` does (Base inferred from
``ref_audio``/``ref_text``; voices matched lower-case; language title-cased and checked; a
checkpoint serving one task only). Every refusal is a 400 ``{"error": {"message", "type",
"param", "code"}}`` with the server's wording (empty input, unknown voice, bad language,
VoiceDesign without instructions, instructions over 500 characters, Base without ``ref_audio``
or ``ref_text``, reference audio outside 1-30 s, ...); an unknown ``model`` is a 404. The answer
is a real 24 kHz mono 16-bit WAV (or headerless pcm) of a quiet tone whose length grows with the
text and shrinks with ``speed``. Switches make it misbehave the ways vLLM-Omni does:

    latency_ms, jitter_ms   each admitted request waits latency +- uniform jitter
    ms_per_char             audio length per character of input (at speed 1)
    capacity                requests in flight past this answer 400 "Speech generation failed:
                            CUDA out of memory ..." (older vLLM-Omni reports failures as 400)
    fail_first_n            the next N requests answer that same 400
    fail_status             every request answers this status (with ``fail_message``)
    fail_message            the message for ``fail_status``
    variant                 the checkpoint's task (CustomVoice | VoiceDesign | Base); None serves
                            all three, unlike any real checkpoint
    served_model            the model name a request's ``model`` must match (else 404)
    api_key                 ``Authorization: Bearer <key>`` required on /v1 routes (else 401)
    truncate                headers promise the whole body; half is sent, then the socket closes
    empty_body              200 with no body
    corrupt                 200 with a body that is not audio

Only wav and pcm are produced and ``stream`` is not implemented: flac, mp3 and opus answer 400
(a limit of the fake, not of vLLM-Omni). ``GET /health`` answers 200 as vLLM's does.

``GET /stats`` returns counters and the last request's JSON body; ``POST /control`` takes a JSON
object of switches to change at run time (``{"reset": true}`` zeroes the counters).

In-process: ``async with running_fake(latency_ms=50) as fake: fake.url, fake.stats(), fake.set()``.
Out of process: ``python -m tests.fakes.qwen_server --port 0 --latency-ms 800 --capacity 4``
prints ``LISTENING <port>`` once bound to 127.0.0.1 and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import dataclasses
import io
import random
import signal
import sys
import wave
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiohttp import web

from tests.fakes.fish_server import serve, tone, wav_bytes

RATE = 24000
TONE_HZ = 400
SPEAKERS = ("aiden", "dylan", "eric", "ono_anna", "ryan", "serena", "sohee", "uncle_fu", "vivian")
LANGUAGES = (
    "Auto",
    "Chinese",
    "English",
    "French",
    "German",
    "Italian",
    "Japanese",
    "Korean",
    "Portuguese",
    "Russian",
    "Spanish",
)
TASKS = ("CustomVoice", "VoiceDesign", "Base")
FORMATS = ("wav", "pcm", "flac", "mp3", "opus")
PRODUCED = ("wav", "pcm")
MAX_INSTRUCTIONS = 500
MAX_NEW_TOKENS = 4096
OUT_OF_MEMORY = "Speech generation failed: CUDA out of memory. Tried to allocate 2.00 GiB"
#: OpenAICreateSpeechRequest's typed fields (others are ignored, as pydantic does).
STRING_FIELDS = ("model", "voice", "instructions", "language", "ref_audio", "ref_text")
BOOL_FIELDS = ("stream", "x_vector_only_mode")
INT_FIELDS = ("max_new_tokens", "seed")


@dataclasses.dataclass
class Switches:
    """How the fake behaves; changed at run time through ``/control`` or ``FakeHandle.set``."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    ms_per_char: float = 60.0
    capacity: int | None = None
    fail_first_n: int = 0
    fail_status: int | None = None
    fail_message: str | None = None
    variant: str | None = None
    served_model: str = "Qwen/Qwen3-TTS"
    api_key: str | None = None
    truncate: bool = False
    empty_body: bool = False
    corrupt: bool = False


def _error(status: int, message: str, *, param: str | None = None) -> web.Response:
    kind = {400: "BadRequestError", 404: "NotFoundError"}.get(status, "InternalServerError")
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return web.json_response(body, status=status)


class FakeQwenServer:
    """The aiohttp application and its counters."""

    def __init__(self, switches: Switches | None = None) -> None:
        self.switches = switches or Switches()
        self._fail_remaining = self.switches.fail_first_n
        self.app = web.Application()
        self.app.router.add_post("/v1/audio/speech", self._speech)
        self.app.router.add_get("/health", self._health)
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

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

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
        response = await self._answer(request)
        self.statuses[response.status] += 1
        return response

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        switches = self.switches
        self.last_authorization = request.headers.get("Authorization")
        if switches.api_key and self.last_authorization != f"Bearer {switches.api_key}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "JSON decode error")
        self.last_request = body
        refused = _parse(body) or _check_model(body, switches) or validate(body, switches)
        if refused is not None:
            return refused
        failure = self._failure(switches)
        if failure is not None:
            return failure
        self.in_flight += 1
        self.in_flight_max = max(self.in_flight_max, self.in_flight)
        try:
            await asyncio.sleep(_delay(switches) / 1000)
            return await self._audio(request, body, switches)
        finally:
            self.in_flight -= 1

    def _failure(self, switches: Switches) -> web.Response | None:
        if switches.fail_status is not None:
            message = switches.fail_message or f"fake failure {switches.fail_status}"
            return _error(switches.fail_status, message)
        if self._fail_remaining > 0:
            self._fail_remaining -= 1
            return _error(400, OUT_OF_MEMORY)
        if switches.capacity is not None and self.in_flight >= switches.capacity:
            return _error(400, OUT_OF_MEMORY)
        return None

    async def _audio(
        self, request: web.Request, body: dict[str, Any], switches: Switches
    ) -> web.StreamResponse:
        fmt = body.get("response_format", "wav")
        content_type = "audio/wav" if fmt == "wav" else "audio/pcm"
        if switches.empty_body:
            return web.Response(body=b"", content_type=content_type)
        if switches.corrupt:
            return web.Response(body=b"<html>upstream error</html>", content_type=content_type)
        speed = float(body.get("speed") or 1.0)
        pcm = tone(len(body["input"]) * switches.ms_per_char / speed, RATE, TONE_HZ)
        audio = wav_bytes(pcm, RATE) if fmt == "wav" else pcm
        if not switches.truncate:
            return web.Response(body=audio, content_type=content_type)
        response = web.StreamResponse(headers={"Content-Type": content_type})
        response.content_length = len(audio)
        await response.prepare(request)
        await response.write(audio[: len(audio) // 2])
        if request.transport is not None:
            request.transport.close()
        return response


def _parse(body: object) -> web.Response | None:
    """The request model's type checks (vLLM answers a validation error with 400)."""
    if not isinstance(body, dict):
        return _error(400, "Input should be a valid dictionary")
    if not isinstance(body.get("input"), str):
        return _error(400, "input: Field required", param="input")
    for field in STRING_FIELDS:
        if body.get(field) is not None and not isinstance(body[field], str):
            return _error(400, f"{field}: Input should be a valid string", param=field)
    for field in BOOL_FIELDS:
        if body.get(field) is not None and not isinstance(body[field], bool):
            return _error(400, f"{field}: Input should be a valid boolean", param=field)
    for field in INT_FIELDS:
        value = body.get(field)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            return _error(400, f"{field}: Input should be a valid integer", param=field)
    if body.get("task_type") is not None and body["task_type"] not in TASKS:
        return _error(400, f"task_type: Input should be one of {', '.join(TASKS)}")
    if body.get("response_format", "wav") not in FORMATS:
        return _error(400, f"response_format: Input should be one of {', '.join(FORMATS)}")
    speed = body.get("speed", 1.0)
    if speed is not None and (
        not isinstance(speed, int | float) or isinstance(speed, bool) or not 0.25 <= speed <= 4
    ):
        return _error(400, "speed: Input should be between 0.25 and 4.0", param="speed")
    return None


def _check_model(body: dict[str, Any], switches: Switches) -> web.Response | None:
    model = body.get("model")
    if model and model != switches.served_model:
        return _error(404, f"The model `{model}` does not exist.", param="model")
    return None


def validate(body: dict[str, Any], switches: Switches) -> web.Response | None:
    """``Qwen3TTSAdapter.validate`` and the reference-audio checks, in the server's order."""
    task = body.get("task_type")
    if task is None and (body.get("ref_audio") is not None or body.get("ref_text") is not None):
        task = "Base"
    task = task or "CustomVoice"
    voice = body["voice"].lower() if body.get("voice") is not None else None
    message = (
        _variant_error(task, switches.variant)
        or _input_error(body)
        or _task_error(body, task, voice)
        or _instructions_error(body)
        or _tokens_error(body)
        or _reference_error(body)
        or _format_error(body)
    )
    return None if message is None else _error(400, message)


def _variant_error(task: str, variant: str | None) -> str | None:
    if variant is not None and task != variant:
        return (
            f"Qwen3-TTS {variant} checkpoint does not support task_type='{task}'. "
            f"Use task_type='{variant}' or load the matching {task} checkpoint."
        )
    return None


def _input_error(body: dict[str, Any]) -> str | None:
    if not body["input"].strip():
        return "Input text cannot be empty"
    language = body.get("language")
    if language is not None and language.title() not in LANGUAGES:
        return f"Invalid language '{language.title()}'. Supported: {', '.join(LANGUAGES)}"
    return None


def _task_error(body: dict[str, Any], task: str, voice: str | None) -> str | None:
    if task == "CustomVoice" and voice is not None and voice not in SPEAKERS:
        return f"Invalid voice '{voice}'. Supported: {', '.join(SPEAKERS)}"
    if task == "Base":
        if body.get("ref_audio") is None:
            return "Base task requires 'ref_audio' or 'speaker_embedding' for voice cloning"
        if not str(body["ref_audio"]).startswith(("http://", "https://", "data:", "file:")):
            return "ref_audio must be a URL (http/https), a base64 data URL or a file URI"
        if not body.get("x_vector_only_mode") and not (body.get("ref_text") or "").strip():
            return (
                "Base task requires non-empty 'ref_text' (transcript of the reference audio) "
                "unless 'x_vector_only_mode' is enabled"
            )
        return None
    if body.get("ref_text") is not None:
        return "'ref_text' is only valid for Base task"
    if body.get("x_vector_only_mode") is not None:
        return "'x_vector_only_mode' is only valid for Base task"
    if task == "VoiceDesign" and not body.get("instructions"):
        return "VoiceDesign task requires 'instructions' to describe the voice"
    return None


def _instructions_error(body: dict[str, Any]) -> str | None:
    instructions = body.get("instructions")
    if instructions and len(instructions) > MAX_INSTRUCTIONS:
        return f"Instructions too long (max {MAX_INSTRUCTIONS} characters)"
    return None


def _tokens_error(body: dict[str, Any]) -> str | None:
    tokens = body.get("max_new_tokens")
    if tokens is not None and tokens < 1:
        return "max_new_tokens must be at least 1"
    if tokens is not None and tokens > MAX_NEW_TOKENS:
        return f"max_new_tokens cannot exceed {MAX_NEW_TOKENS}"
    return None


def _reference_error(body: dict[str, Any]) -> str | None:
    """Decode a ``data:`` reference as the server does and check its 1-30 s."""
    ref_audio = body.get("ref_audio")
    if not isinstance(ref_audio, str) or not ref_audio.startswith("data:"):
        return None
    try:
        _, payload = ref_audio.split(",", 1)
        with wave.open(io.BytesIO(base64.b64decode(payload, validate=True))) as reader:
            seconds = reader.getnframes() / reader.getframerate()
    except (ValueError, binascii.Error, wave.Error, EOFError) as exc:
        return f"cannot decode ref_audio: {exc}"
    if seconds < 1.0:
        return (
            f"Reference audio too short ({seconds:.1f}s). At least 1s of clear speech is required."
        )
    if seconds > 30.0:
        return f"Reference audio too long ({seconds:.1f}s). Maximum 30s supported."
    return None


def _format_error(body: dict[str, Any]) -> str | None:
    fmt = body.get("response_format", "wav")
    if fmt not in PRODUCED:
        return f"this fake produces {'/'.join(PRODUCED)}, not {fmt!r}"
    if body.get("stream"):
        return "this fake does not stream"
    return None


def _delay(switches: Switches) -> float:
    jitter = random.uniform(-switches.jitter_ms, switches.jitter_ms) if switches.jitter_ms else 0
    return max(0.0, switches.latency_ms + jitter)


@dataclasses.dataclass(frozen=True)
class FakeHandle:
    """A fake running in this process."""

    url: str
    server: FakeQwenServer

    def stats(self) -> dict[str, object]:
        return self.server.stats()

    def set(self, **switches: Any) -> None:
        self.server.set(**switches)


@contextlib.asynccontextmanager
async def running_fake(**switches: Any) -> AsyncIterator[FakeHandle]:
    """A fake on a free port of 127.0.0.1 for the duration of the block."""
    server = FakeQwenServer(Switches(**switches))
    async with serve(server.app) as port:
        yield FakeHandle(f"http://127.0.0.1:{port}", server)


def parse_args(argv: Sequence[str] | None = None) -> tuple[int, Switches]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--ms-per-char", type=float, default=60.0)
    parser.add_argument("--capacity", type=int, default=None)
    parser.add_argument("--fail-first-n", type=int, default=0)
    parser.add_argument("--fail-status", type=int, default=None)
    parser.add_argument("--fail-message", default=None)
    parser.add_argument("--variant", choices=TASKS, default=None)
    parser.add_argument("--served-model", default="Qwen/Qwen3-TTS")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--truncate", action="store_true")
    parser.add_argument("--empty-body", action="store_true")
    parser.add_argument("--corrupt", action="store_true")
    args = vars(parser.parse_args(argv))
    port = args.pop("port")
    return port, Switches(**args)


async def _main(port: int, switches: Switches) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with serve(FakeQwenServer(switches).app, port) as bound:
        print(f"LISTENING {bound}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    port, switches = parse_args(argv)
    asyncio.run(_main(port, switches))


if __name__ == "__main__":
    main(sys.argv[1:])
