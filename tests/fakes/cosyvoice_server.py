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

Switches make it misbehave the ways the real one does (besides the shared ones of
:mod:`tests.fakes.common`: down, error_ratio answered as a bare status, timeout_ratio, ...):

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

``GET /stats`` also returns the last request's route, method, form fields and prompt WAV
summary, requests by route and broken-off bodies by reason.
Out of process: ``python -m tests.fakes.cosyvoice_server --port 0 --version 2 --capacity 4``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import io
import re
import wave
from collections import Counter
from http import HTTPStatus
from typing import Any

from aiohttp import web

from tests.fakes import common
from tests.fakes.common import FakeHandle as FakeHandle

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
class Switches(common.Switches):
    """How the fake behaves; changed at run time through ``/control`` or ``FakeHandle.set``."""

    version: int = dataclasses.field(default=2, metadata={"choices": (1, 2, 3)})
    ms_per_char: float = 60.0
    rtf: float = 0.0
    capacity: int | None = None
    knee: float = 1.5
    malformed: bool = False
    empty_body: bool = False
    speakers: list[str] = dataclasses.field(
        default_factory=lambda: list(DEFAULT_SPEAKERS), metadata={"help": "comma-separated spk_ids"}
    )

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


class FakeCosyVoiceServer(common.FakeServer[Switches]):
    """The aiohttp application and its counters."""

    def __init__(self, switches: Switches | None = None) -> None:
        # Prompt WAVs of up to 30 s at 48 kHz must fit; FastAPI sets no limit.
        super().__init__(switches or Switches(), client_max_size=64 * 1024 * 1024)
        for route in ROUTES:
            self.api_route(f"/{route}", functools.partial(self._answer, route), ("GET", "POST"))

    def reset(self) -> None:
        super().reset()
        self.completed = 0
        self.routes: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()

    def set(self, **changes: Any) -> None:
        if "speakers" in changes:
            changes["speakers"] = list(changes["speakers"])
        super().set(**changes)

    def stats(self) -> dict[str, object]:
        return {
            **super().stats(),
            "completed": self.completed,
            "routes": dict(sorted(self.routes.items())),
            "dropped": dict(sorted(self.dropped.items())),
            "sample_rate": self.switches.sample_rate,
        }

    async def _answer(self, route: str, request: web.Request) -> web.StreamResponse:
        self.routes[route] += 1
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
        fault = self.draw()
        if fault.status is not None:  # as a proxy in front of it, or uvicorn itself, answers
            return web.Response(status=fault.status, text=HTTPStatus(fault.status).phrase)
        return await self._synthesize(request, used, prompt, switches, fault)

    async def _synthesize(
        self,
        request: web.Request,
        fields: dict[str, str],
        prompt: _Prompt | None,
        switches: Switches,
        fault: common.Fault,
    ) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)  # chunked: no Content-Length
        try:
            with self.serving():
                failure = self._failure(fields, prompt, switches)
                if failure is not None:
                    raise _Drop(failure)
                # Text up to the marker is an instruction to the model, not spoken.
                spoken = fields["tts_text"].rpartition(END_OF_PROMPT)[2]
                cut = self.take_first_failure()
                await self._stream(response, spoken, switches, fault, cut=cut)
                self.completed += 1
        except _Drop as dropped:
            self.dropped[dropped.reason] += 1
            common.drop(request)
            return response
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

    async def _stream(
        self,
        response: web.StreamResponse,
        text: str,
        switches: Switches,
        fault: common.Fault,
        *,
        cut: bool,
    ) -> None:
        """Sentence by sentence, as the server's generator yields; ``cut`` drops mid-body."""
        if switches.empty_body:
            return
        await self._wait(fault.wait_ms(switches.jittered_ms()), switches)
        rate = switches.sample_rate
        for sentence in _sentences(text):
            chunk = common.tone(len(sentence) * switches.ms_per_char, rate, TONE_HZ)
            await self._wait(switches.rtf * len(chunk) / 2 / rate * 1000, switches)
            self._check_overload(switches)
            if cut:
                await response.write(chunk[: len(chunk) // 2])
                raise _Drop("fail_first_n")
            await common.write(response, chunk, switches)
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


def running_fake(**switches: Any) -> contextlib.AbstractAsyncContextManager[FakeHandle]:
    """A fake on a free port of 127.0.0.1 for the duration of the block."""
    return common.running(FakeCosyVoiceServer(Switches(**switches)))


if __name__ == "__main__":
    common.main(FakeCosyVoiceServer, Switches, __doc__)
