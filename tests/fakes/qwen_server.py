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
text and shrinks with ``speed``. Switches make it misbehave the ways vLLM-Omni does (besides the
shared ones of :mod:`tests.fakes.common`: latency, down, error_ratio, timeout_ratio, ...):

    capacity                requests in flight past this answer 400 "Speech generation failed:
                            CUDA out of memory ..." (older vLLM-Omni reports failures as 400)
    fail_first_n            the next N requests answer that same 400
    variant                 the checkpoint's task (CustomVoice | VoiceDesign | Base); None serves
                            all three, unlike any real checkpoint
    served_model            the model name a request's ``model`` must match (else 404)
    api_key                 ``Authorization: Bearer <key>`` required on /v1 routes (else 401)

Only wav and pcm are produced and ``stream`` is not implemented: flac, mp3 and opus answer 400
(a limit of the fake, not of vLLM-Omni). ``GET /health`` answers 200 as vLLM's does.
``GET /stats`` also returns the last request's JSON body.
Out of process: ``python -m tests.fakes.qwen_server --port 0 --latency-ms 800 --capacity 4``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import io
import wave
from typing import Any

from aiohttp import web

from tests.fakes import common
from tests.fakes.common import FakeHandle as FakeHandle

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
class Switches(common.SpeechSwitches):
    """How the fake behaves; changed at run time through ``/control`` or ``FakeHandle.set``."""

    capacity: int | None = None
    variant: str | None = dataclasses.field(default=None, metadata={"choices": TASKS})
    served_model: str = "Qwen/Qwen3-TTS"


def _error(status: int, message: str, *, param: str | None = None) -> web.Response:
    kind = {400: "BadRequestError", 404: "NotFoundError"}.get(status, "InternalServerError")
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return web.json_response(body, status=status)


class FakeQwenServer(common.SpeechServer[Switches]):
    """The aiohttp application and its counters."""

    def __init__(self, switches: Switches | None = None) -> None:
        super().__init__(switches or Switches())
        self.api_route("/v1/audio/speech", self._answer)
        self.app.router.add_get("/health", self._health)

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        switches = self.switches
        if self.key_refused(request):
            return web.json_response({"error": "Unauthorized"}, status=401)
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "JSON decode error")
        self.last_request = body
        refused = _parse(body) or _check_model(body, switches) or validate(body, switches)
        if refused is not None:
            return refused
        fault = self.injected(400, OUT_OF_MEMORY)
        if fault.status is not None:
            return _error(fault.status, fault.message)
        if switches.capacity is not None and self.in_flight >= switches.capacity:
            return _error(400, OUT_OF_MEMORY)
        with self.serving():
            await asyncio.sleep(fault.wait_ms(switches.jittered_ms()) / 1000)
            return await common.answer_audio(request, *_audio(body, switches), switches)


def _audio(body: dict[str, Any], switches: Switches) -> tuple[bytes, str]:
    """The audio for ``body`` and its Content-Type."""
    speed = float(body.get("speed") or 1.0)
    pcm = common.tone(len(body["input"]) * switches.ms_per_char / speed, RATE, TONE_HZ)
    if body.get("response_format", "wav") == "wav":
        return common.wav_bytes(pcm, RATE), "audio/wav"
    return pcm, "audio/pcm"


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


def running_fake(**switches: Any) -> contextlib.AbstractAsyncContextManager[FakeHandle]:
    """A fake on a free port of 127.0.0.1 for the duration of the block."""
    return common.running(FakeQwenServer(Switches(**switches)))


if __name__ == "__main__":
    common.main(FakeQwenServer, Switches, __doc__)
