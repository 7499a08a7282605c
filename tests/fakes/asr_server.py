"""A fake OpenAI-compatible transcription server: ``POST /v1/audio/transcriptions`` answering
scripted text (the quality gate's ASR round trip, ``processor.asr``).

It takes what the real API takes (multipart ``file``, ``model``, optional ``language`` and
``response_format``; ``json`` answers ``{"text": ...}``, ``text`` the bare text) and checks the
file is a WAV. What it hears is scripted, since a fake cannot listen:

    text            the transcription of every call ("" until set)
    script          transcriptions for the next calls, one each, before ``text`` again
    fail_status     every call answers this status (503: a server that is loading or down)

and the switches every fake has (``tests.fakes.common``): ``latency_ms`` (a slow server),
``fail_first_n`` (answered 503), ``down`` (connections closed), ``error_ratio``.
``GET /stats`` shows ``last_request``: the form fields of the last call and the file's size.

In-process: ``async with running_fake(text="hello") as fake: fake.url, fake.set(...)``. Out of
process: ``python -m tests.fakes.asr_server --port 0 --text hello``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from tests.fakes import common

ROUTE = "/v1/audio/transcriptions"
FORMATS = ("json", "text", "verbose_json")


@dataclasses.dataclass
class Switches(common.Switches):
    text: str = ""
    script: list[str] = dataclasses.field(default_factory=list)
    fail_status: int | None = None


def _error(status: int, message: str) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error"}}
    return web.json_response(body, status=status)


class AsrServer(common.FakeServer[Switches]):
    def __init__(self, switches: Switches) -> None:
        super().__init__(switches, client_max_size=64 * 1024**2)
        self.api_route(ROUTE, self._transcribe)

    async def _transcribe(self, request: web.Request) -> web.Response:
        switches = self.switches
        try:
            form = await request.post()
        except ValueError:
            return _error(400, "the body must be multipart/form-data")
        upload = form.get("file")
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        if not isinstance(upload, web.FileField):
            return _error(400, "file is required")
        audio = upload.file.read()
        self.last_request = {**fields, "file_bytes": len(audio), "filename": upload.filename}
        if not fields.get("model"):
            return _error(400, "model is required")
        fmt = fields.get("response_format", "json")
        if fmt not in FORMATS:
            return _error(400, f"response_format must be one of {', '.join(FORMATS)}")
        if audio[:4] != b"RIFF" or audio[8:12] != b"WAVE":
            return _error(400, "this fake reads WAV files only")
        if switches.fail_status is not None:
            return _error(switches.fail_status, f"fake failure {switches.fail_status}")
        if self.take_first_failure():
            return _error(503, "model is loading")
        fault = self.draw()
        if fault.status is not None:
            return _error(fault.status, fault.message)
        with self.serving():
            await asyncio.sleep(fault.wait_ms(switches.jittered_ms()) / 1000)
            text = switches.script.pop(0) if switches.script else switches.text
        if fmt == "text":
            return web.Response(text=text)
        return web.json_response({"text": text})


@contextlib.asynccontextmanager
async def running_fake(**switches: Any) -> AsyncIterator[common.FakeHandle]:
    async with common.running(AsrServer(Switches(**switches))) as handle:
        yield handle


if __name__ == "__main__":
    common.main(AsrServer, Switches, __doc__)
