"""A fake Fish Speech API server (``tools/api_server.py``) for tests and benchmarks.

It follows the real contract field by field: ``POST /v1/tts`` takes a ``ServeTTSRequest`` as
``application/json``, ``application/msgpack`` or ``multipart/form-data`` (anything else 415);
fields are checked as the server's pydantic model does (``text`` required, ``chunk_length``
100-1000, ``top_p`` 0.1-1.0, ``temperature`` 0.1-1.0, ``repetition_penalty`` 0.9-2.0, ...),
a failure answering 422 with kui's bare list of pydantic errors; other errors are
``{"statusCode", "message", "error"}``. Like the real server it runs one generation at a time:
requests (and ``/v1/health``) wait on a lock, so latency grows with the queue. The answer is a
real 44.1 kHz mono 16-bit WAV (or headerless pcm) of a quiet tone whose length grows with the
text. Switches make it misbehave the ways Fish servers do (besides the shared ones of
:mod:`tests.fakes.common`: latency, down, error_ratio, timeout_ratio, ...):

    latency_ms, jitter_ms   each generation holds the lock latency +- uniform jitter
    rtf                     ... plus rtf x the audio's duration (a real-time factor)
    ms_per_char             audio length per character of text
    queue_limit             a request arriving with this many already waiting answers 500
                            "Failed to generate speech" (what overload looks like)
    fail_first_n            the next N requests answer 500 "Failed to generate speech"
    retry_after             a ``Retry-After`` header on every switched-on failure (hosted 429/503)
    hosted_errors           errors shaped ``{"message", "status"}`` as hosted Fish Audio's
    max_text_length         text longer than this answers 400, as ``--max-text-length`` (0: off)
    max_prompt_chars        text longer than this fails inside generation: 500 "Prompt is too long"
    api_key                 ``Authorization: Bearer <key>`` required on every route (else 401)

Only wav and pcm are produced: mp3 and opus answer 400 (a limit of the fake, not of Fish).

``GET /stats`` also returns the last request (its fields as decoded; reference audio as
``{"bytes", "sha256"}``) with its Content-Type, and the generation queue's counters.
Out of process: ``python -m tests.fakes.fish_server --port 0 --latency-ms 250 --queue-limit 8``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
from http import HTTPStatus
from typing import Any

import msgpack  # type: ignore[import-untyped]  # no stubs or py.typed
from aiohttp import web

from tests.fakes import common
from tests.fakes.common import FakeHandle as FakeHandle
from tests.fakes.common import tone as tone
from tests.fakes.common import wav_bytes as wav_bytes

RATE = 44100
TONE_HZ = 441  # a whole number of samples (100) per period at 44.1 kHz
FORMATS = ("wav", "pcm", "mp3", "opus")
PRODUCED = ("wav", "pcm")
#: ServeTTSRequest's bounded numbers (HEAD): field -> (low, high).
FLOAT_RANGES = {"top_p": (0.1, 1.0), "repetition_penalty": (0.9, 2.0), "temperature": (0.1, 1.0)}
INT_RANGES = {"chunk_length": (100, 1000), "stream_chunk_size": (1, 200)}
CHOICES = {"format": FORMATS, "latency": ("normal", "balanced"), "use_memory_cache": ("on", "off")}
BOOLS = ("normalize", "streaming", "stream_tokens")
GENERATION_FAILED = "Failed to generate speech"


@dataclasses.dataclass
class Switches(common.SpeechSwitches):
    """How the fake behaves; changed at run time through ``/control`` or ``FakeHandle.set``."""

    rtf: float = 0.0
    queue_limit: int | None = None
    retry_after: str | None = None
    hosted_errors: bool = False
    max_text_length: int = 0
    max_prompt_chars: int | None = None


class FakeFishServer(common.SpeechServer[Switches]):
    """The aiohttp application, its generation lock and its counters."""

    def __init__(self, switches: Switches | None = None) -> None:
        self._lock = asyncio.Lock()
        self.generating = 0
        self.queued = 0
        super().__init__(switches or Switches())
        self.api_route("/v1/tts", self._answer)
        self.app.router.add_route("GET", "/v1/health", self._health)
        self.app.router.add_route("POST", "/v1/health", self._health)

    def reset(self) -> None:
        super().reset()
        self.queued_max = 0
        self.generations = 0
        self.last_content_type: str | None = None

    def stats(self) -> dict[str, object]:
        return {
            **super().stats(),
            "generating": self.generating,
            "generations": self.generations,
            "queued": self.queued,
            "queued_max": self.queued_max,
            "last_content_type": self.last_content_type,
        }

    def _error(self, status: int, message: object, **headers: str) -> web.Response:
        if self.switches.hosted_errors:
            body: object = {"message": message, "status": status}
        else:
            body = {"statusCode": status, "message": message, "error": HTTPStatus(status).phrase}
        return web.json_response(body, status=status, headers=headers)

    async def _health(self, request: web.Request) -> web.Response:
        if self.key_refused(request):
            return self._error(401, "Invalid token")
        async with self._lock:  # the real server's event loop is busy while it generates
            pass
        return web.json_response({"status": "ok"})

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        if self.key_refused(request):
            return self._error(401, "Invalid token")
        self.last_content_type = request.content_type
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        self.last_request = _recorded(body)
        errors = validate(body)
        if errors:
            return web.json_response(errors, status=422)
        return await self._generate(request, body, self.switches)

    async def _body(self, request: web.Request) -> dict[str, Any] | web.Response:
        """The decoded body, or the answer for one that cannot be read."""
        try:
            if request.content_type == "application/json":
                decoded: object = json.loads(await request.read())
            elif request.content_type == "application/msgpack":
                decoded = msgpack.unpackb(await request.read(), raw=False)
            elif request.content_type == "multipart/form-data":
                decoded = {key: value for key, value in (await request.post()).items()}
            else:
                accept = "application/msgpack, application/json, multipart/form-data"
                return self._error(415, None, Accept=accept)
        except ValueError as exc:
            return self._error(400, f"cannot decode the body: {exc}")
        if not isinstance(decoded, dict):
            return web.json_response(
                [{"type": "model_type", "loc": [], "msg": "Input should be an object"}],
                status=422,
            )
        return decoded

    async def _generate(
        self, request: web.Request, body: dict[str, Any], switches: Switches
    ) -> web.StreamResponse:
        text: str = body["text"]
        if switches.max_text_length > 0 and len(text) > switches.max_text_length:
            return self._error(400, f"Text is too long, max length is {switches.max_text_length}")
        fmt = body.get("format", "wav")
        if body.get("streaming") and fmt != "wav":
            return self._error(400, "Streaming only supports WAV format")
        if fmt not in PRODUCED:
            return self._error(400, f"this fake produces {'/'.join(PRODUCED)}, not {fmt!r}")
        fault = self.injected(500, GENERATION_FAILED)
        failure = self._failure(switches, fault)
        if failure is not None:
            return failure
        audio_ms = len(text) * switches.ms_per_char
        with self.serving():
            delay_ms = switches.jittered_ms(switches.latency_ms + switches.rtf * audio_ms)
            await self._hold_lock(fault.wait_ms(delay_ms) / 1000)
        if switches.max_prompt_chars is not None and len(text) > switches.max_prompt_chars:
            return self._error(
                500, f"Prompt is too long: {len(text)} > {switches.max_prompt_chars}"
            )
        return await self._audio(request, body, switches, audio_ms)

    async def _hold_lock(self, seconds: float) -> None:
        """Wait for the one generation slot, then hold it for ``seconds``."""
        waits = self._lock.locked()
        self.queued += waits
        self.queued_max = max(self.queued_max, self.queued)
        try:
            await self._lock.acquire()
        finally:
            self.queued -= waits
        self.generating += 1
        try:
            await asyncio.sleep(seconds)
            self.generations += 1
        finally:
            self.generating -= 1
            self._lock.release()

    def _failure(self, switches: Switches, fault: common.Fault) -> web.Response | None:
        """The switched-on failure for this request, if any."""
        headers = {"Retry-After": switches.retry_after} if switches.retry_after else {}
        if fault.status is not None:
            return self._error(fault.status, fault.message, **headers)
        limit = switches.queue_limit
        if limit is not None and self._lock.locked() and self.queued >= limit:
            return self._error(500, GENERATION_FAILED, **headers)
        return None

    async def _audio(
        self, request: web.Request, body: dict[str, Any], switches: Switches, audio_ms: float
    ) -> web.StreamResponse:
        fmt = body.get("format", "wav")
        content_type = "audio/wav" if fmt == "wav" else "application/octet-stream"
        pcm = tone(audio_ms, RATE, TONE_HZ)
        # streaming=true: headerless 16-bit PCM, as the real server streams it.
        audio = wav_bytes(pcm, RATE) if fmt == "wav" and not body.get("streaming") else pcm
        headers = {"Content-Disposition": f"attachment; filename=audio.{fmt}"}
        return await common.answer_audio(request, audio, content_type, switches, headers)


def validate(body: dict[str, Any]) -> list[dict[str, object]]:
    """``ServeTTSRequest``'s checks, as pydantic errors (an empty list when the body is valid)."""
    errors: list[dict[str, object]] = []

    def error(field: str, kind: str, msg: str) -> None:
        errors.append(
            {"type": kind, "loc": [field], "msg": msg, "input": _shown(body[field]), "in": "body"}
        )

    if not isinstance(body.get("text"), str):
        errors.append({"type": "missing", "loc": ["text"], "msg": "Field required", "in": "body"})
    for field, (low, high) in FLOAT_RANGES.items():
        value = body.get(field)
        if field not in body:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            error(field, "float_type", "Input should be a valid number")
        elif not low <= value <= high:
            error(field, "less_than_equal", f"Input should be between {low} and {high}")
    for field, (low, high) in INT_RANGES.items():
        value = body.get(field)
        if field not in body:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            error(field, "int_type", "Input should be a valid integer")
        elif not low <= value <= high:
            error(field, "less_than_equal", f"Input should be between {low} and {high}")
    for field in ("max_new_tokens", "seed"):
        value = body.get(field)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            error(field, "int_type", "Input should be a valid integer")
    for field, choices in CHOICES.items():
        if field in body and body[field] not in choices:
            error(field, "literal_error", f"Input should be {' or '.join(map(repr, choices))}")
    for field in BOOLS:
        if field in body and not isinstance(body[field], bool):
            error(field, "bool_type", "Input should be a valid boolean")
    if body.get("reference_id") is not None and not isinstance(body["reference_id"], str):
        error("reference_id", "string_type", "Input should be a valid string")
    errors.extend(_reference_errors(body.get("references", [])))
    return errors


def _reference_errors(references: object) -> list[dict[str, object]]:
    if not isinstance(references, list):
        return [{"type": "list_type", "loc": ["references"], "msg": "Input should be a valid list"}]
    errors: list[dict[str, object]] = []
    for index, item in enumerate(references):
        if not isinstance(item, dict):
            errors.append(
                {
                    "type": "model_type",
                    "loc": ["references", index],
                    "msg": "Input should be an object",
                }
            )
            continue
        if not isinstance(item.get("audio"), bytes | str):
            errors.append(
                {"type": "missing", "loc": ["references", index, "audio"], "msg": "Field required"}
            )
        if not isinstance(item.get("text"), str):
            errors.append(
                {"type": "missing", "loc": ["references", index, "text"], "msg": "Field required"}
            )
    return errors


def _shown(value: object) -> object:
    return (
        value if isinstance(value, str | int | float | bool) or value is None else repr(value)[:40]
    )


def _recorded(body: dict[str, Any]) -> dict[str, Any]:
    """The body as JSON can show it: reference audio as its size and hash."""
    shown = dict(body)
    references = shown.get("references")
    if isinstance(references, list):
        shown["references"] = [_recorded_reference(item) for item in references]
    return shown


def _recorded_reference(item: object) -> object:
    if not isinstance(item, dict):
        return item
    audio = item.get("audio")
    if isinstance(audio, str) and len(audio) > 255:  # JSON carries it as base64, as Fish decodes
        with contextlib.suppress(ValueError):
            audio = base64.b64decode(audio)
    if isinstance(audio, bytes):
        return {**item, "audio": {"bytes": len(audio), "sha256": hashlib.sha256(audio).hexdigest()}}
    return item


def running_fake(**switches: Any) -> contextlib.AbstractAsyncContextManager[FakeHandle]:
    """A fake on a free port of 127.0.0.1 for the duration of the block."""
    return common.running(FakeFishServer(Switches(**switches)))


if __name__ == "__main__":
    common.main(FakeFishServer, Switches, __doc__)
