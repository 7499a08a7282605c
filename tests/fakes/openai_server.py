"""A fake OpenAI-compatible speech server (``POST /v1/audio/speech``) for tests and benchmarks.

It follows the real contract (JSON in; audio out; errors as ``{"error": {message, type, param,
code}}``) and answers with a real 24 kHz mono 16-bit WAV (or headerless pcm) of a quiet tone
whose length grows with the text. Switches make it misbehave the ways real servers do (besides
the shared ones of :mod:`tests.fakes.common`: latency, down, error_ratio, timeout_ratio, ...):

    capacity                requests in flight past this answer 429 with ``Retry-After: 1``
    fail_first_n            the next N requests answer 503, then it recovers
    streamed_wav            wav with placeholder sizes (0xFFFFFFFF), as servers that stream write
    api_key                 when set, ``Authorization: Bearer <key>`` is required (else 401)
    retry_after             a ``Retry-After`` header (seconds or an HTTP-date, as given) on every
                            injected failure (fail_status, fail_first_n, error_ratio): a quota or
                            maintenance answer
    marked_rate             inputs containing ``rate_marker`` are answered at this sample rate
                            instead of 24 kHz (None: off), as a pool of servers running different
                            models would: the chunks of one request then differ in rate
    rate_marker             the text that picks ``marked_rate`` (default ``[rate]``)
    bad_audio               a failure mode of :mod:`tests.fakes.bad_audio` (silence, cut, loop,
                            babble, clipped, nan) for the answers ``bad_first_n`` and
                            ``bad_every`` pick; None: off (the quality gate's tests)
    bad_first_n             the next N wav answers are bad, then good ones again
    bad_every               every Nth wav answer is bad (20: one chunk in twenty); 0: none

``GET /stats`` also returns the last request's JSON body.
Out of process: ``python -m tests.fakes.openai_server --port 0 --latency-ms 250 --capacity 16``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Any

from aiohttp import web

from processor.audio import wav_pcm
from tests.fakes import common
from tests.fakes.bad_audio import spoil
from tests.fakes.common import FakeHandle as FakeHandle

RATE = 24000
TONE_HZ = 400  # a whole number of samples per period at 24 kHz
FORMATS = ("wav", "pcm")


@dataclasses.dataclass
class Switches(common.SpeechSwitches):
    """How the fake behaves; changed at run time through ``/control`` or ``FakeHandle.set``."""

    capacity: int | None = None
    streamed_wav: bool = False
    retry_after: str | None = None
    marked_rate: int | None = None
    rate_marker: str = "[rate]"
    bad_audio: str | None = None
    bad_first_n: int = 0
    bad_every: int = 0


def _error(status: int, message: str, *, param: str | None = None, **headers: str) -> web.Response:
    kind = {429: "rate_limit_error", 401: "authentication_error"}.get(
        status, "invalid_request_error"
    )
    if status >= 500:
        kind = "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return web.json_response(body, status=status, headers=headers)


class FakeSpeechServer(common.SpeechServer[Switches]):
    """The aiohttp application and its counters."""

    def __init__(self, switches: Switches | None = None) -> None:
        super().__init__(switches or Switches())
        self.api_route("/v1/audio/speech", self._answer)
        self.answered = 0

    def _spoiled(self, body: dict[str, Any]) -> tuple[bytes, str]:
        """The answer's audio; in a ``bad_audio`` mode when this answer is one it picks."""
        audio, kind = _audio(body, self.switches)
        s = self.switches
        if s.bad_audio is None or kind != "audio/wav":
            return audio, kind
        self.answered += 1
        bad = s.bad_first_n > 0 or (s.bad_every > 0 and self.answered % s.bad_every == 0)
        if not bad:
            return audio, kind
        s.bad_first_n = max(0, s.bad_first_n - 1)
        info, pcm = wav_pcm(audio)
        return spoil(pcm, info.sample_rate, s.bad_audio, seed=self.answered), kind

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        switches = self.switches
        if self.key_refused(request):
            return _error(401, "Incorrect API key provided")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "We could not parse the JSON body of your request.")
        self.last_request = body
        invalid = _validate(body)
        if invalid is not None:
            return invalid
        fault = self.injected(503, "model is loading")
        if fault.status is not None:
            later = {"Retry-After": switches.retry_after} if switches.retry_after else {}
            return _error(fault.status, fault.message, **later)
        if switches.capacity is not None and self.in_flight >= switches.capacity:
            return _error(429, "too many concurrent requests", **{"Retry-After": "1"})
        with self.serving():
            await asyncio.sleep(fault.wait_ms(switches.jittered_ms()) / 1000)
            return await common.answer_audio(request, *self._spoiled(body), switches)


def _audio(body: dict[str, Any], switches: Switches) -> tuple[bytes, str]:
    """The audio for ``body`` and its Content-Type."""
    fmt = body.get("response_format", "wav")
    speed = float(body.get("speed", 1.0))
    text = body["input"]
    rate = RATE
    if switches.marked_rate is not None and switches.rate_marker in text:
        rate = switches.marked_rate
    pcm = common.tone(len(text) * switches.ms_per_char / speed, rate, TONE_HZ)
    if fmt != "wav":
        return pcm, "audio/pcm"
    audio = common.wav_bytes(pcm, rate)
    if switches.streamed_wav:
        unknown = b"\xff\xff\xff\xff"
        audio = audio[:4] + unknown + audio[8:40] + unknown + audio[44:]
    return audio, "audio/wav"


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


def running_fake(**switches: Any) -> contextlib.AbstractAsyncContextManager[FakeHandle]:
    """A fake on a free port of 127.0.0.1 for the duration of the block."""
    return common.running(FakeSpeechServer(Switches(**switches)))


if __name__ == "__main__":
    common.main(FakeSpeechServer, Switches, __doc__)
