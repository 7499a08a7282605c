"""What every HTTP adapter shares (``processor/backends/_http.py``), run against each family's
fake server over real sockets: bodies that are not whole, transport failures, the overall
deadline of a call, the Bearer key, a client handed in."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx
import pytest
from aiohttp import web

from processor.backends import fish, qwen
from processor.backends._http import Classify, clip, deadline_of, error_message, status_error
from processor.backends.base import Backend, Utterance
from processor.backends.cosyvoice import CosyVoiceBackend
from processor.backends.fish import FishSpeechBackend
from processor.backends.openai import OpenAIBackend
from processor.backends.qwen import QwenTTSBackend
from processor.errors import InvalidInput, Permanent, Stage, Systemic, Transient
from processor.request import Voice
from tests.fakes import cosyvoice_server, fish_server, openai_server, qwen_server
from tests.unit.backend_helpers import (
    Fake,
    RunningFake,
    cloning,
    failure,
    free_port,
    utterance,
)

pytestmark = pytest.mark.timeout(30)


@dataclasses.dataclass(frozen=True)
class Family:
    """One HTTP adapter, its fake, and how that fake breaks a body."""

    name: str
    running_fake: RunningFake
    adapter: Callable[..., Backend]
    speakable: Utterance
    #: Switches for a 200 whose body breaks off, and the error type it becomes.
    cut: Mapping[str, object]
    cut_type: str
    #: Switches for a 200 whose body is not audio, and the error type it becomes.
    garbage: Mapping[str, object]
    garbage_type: str
    keyed: bool = True
    clones: bool = True

    def bad_body(self, fault: str) -> tuple[Mapping[str, object], str]:
        """Switches for a 200 that is not whole audio, and the error type it becomes."""
        return {
            "cut": (self.cut, self.cut_type),
            "empty": ({"empty_body": True}, "empty_body"),
            "garbage": (self.garbage, self.garbage_type),
        }[fault]

    def backend(self, url: str, **kwargs: Any) -> Backend:
        return self.adapter(self.name, url, **kwargs)


FAMILIES = [
    Family(
        "openai",
        openai_server.running_fake,
        OpenAIBackend,
        utterance(),
        {"truncate": True},
        "truncated",
        {"corrupt": True},
        "malformed_audio",
        clones=False,
    ),
    Family(
        "cosyvoice",
        cosyvoice_server.running_fake,
        CosyVoiceBackend,
        utterance(voice=Voice(preset="中文女")),
        {"fail_first_n": 1},  # the server fails inside synthesis: headers, then a closed socket
        "truncated_body",
        {"malformed": True},
        "truncated_body",
        keyed=False,
    ),
    Family(
        "fish",
        fish_server.running_fake,
        FishSpeechBackend,
        utterance(),
        {"truncate": True},
        "truncated",
        {"corrupt": True},
        "malformed_audio",
    ),
    Family(
        "qwen",
        qwen_server.running_fake,
        QwenTTSBackend,
        utterance(),
        {"truncate": True},
        "truncated",
        {"corrupt": True},
        "malformed_audio",
    ),
]
KEYED = [family for family in FAMILIES if family.keyed]
CLONING = [family for family in FAMILIES if family.clones]
WITH_V1_PREFIX = [family for family in FAMILIES if family.name != "cosyvoice"]


def by_name(family: Family) -> str:
    return family.name


@pytest.fixture(params=FAMILIES, ids=by_name)
def family(request: pytest.FixtureRequest) -> Family:
    chosen: Family = request.param
    return chosen


@pytest.fixture
async def fake(family: Family) -> AsyncIterator[Fake]:
    async with family.running_fake() as handle:
        yield handle


@pytest.fixture
async def backend(family: Family, fake: Fake) -> AsyncIterator[Backend]:
    async with contextlib.aclosing(family.backend(fake.url)) as backend:
        yield backend


@contextlib.asynccontextmanager
async def dripping_server() -> AsyncIterator[str]:
    """A server whose every answer is a 200 that sends two bytes each 50 ms, for minutes: no
    single read ever waits long enough for a per-read timeout."""

    async def drip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000000"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(10_000):
                await response.write(b"\0\0")
                await asyncio.sleep(0.05)
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", drip)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        try:
            await web.SockSite(runner, sock).start()
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            await runner.cleanup()


# --- answers --------------------------------------------------------------------------------


async def test_speaks_measured_wav_longer_for_longer_text(family: Family, backend: Backend) -> None:
    short = await backend.synthesize(family.speakable)
    long = await backend.synthesize(dataclasses.replace(family.speakable, text="Hi there. " * 20))

    assert (short.format, short.channels) == ("wav", 1)
    assert short.data.startswith(b"RIFF")
    assert long.duration_ms > short.duration_ms > 0


async def test_check_sends_nothing(family: Family, backend: Backend, fake: Fake) -> None:
    backend.check(family.speakable)

    assert fake.stats()["requests"] == 0


@pytest.mark.parametrize("family", WITH_V1_PREFIX, ids=by_name, indirect=True)
async def test_base_url_with_v1_suffix_is_not_doubled(family: Family, fake: Fake) -> None:
    async with contextlib.aclosing(family.backend(fake.url + "/v1/")) as backend:
        assert (await backend.synthesize(family.speakable)).duration_ms > 0


# --- bodies that are not whole ----------------------------------------------------------------


@pytest.mark.parametrize("fault", ["cut", "empty", "garbage"])
async def test_a_200_that_is_not_whole_audio_is_transient(
    family: Family, backend: Backend, fake: Fake, fault: str
) -> None:
    switches, error_type = family.bad_body(fault)
    fake.set(**switches)

    error = await failure(backend, family.speakable)

    assert (error.error_type, error.http_status) == (error_type, 200)


# --- transport ----------------------------------------------------------------------------


async def test_connection_refused_is_transient_connect(family: Family) -> None:
    async with contextlib.aclosing(family.backend(f"http://127.0.0.1:{free_port()}")) as backend:
        error = await failure(backend, family.speakable)

    assert (error.error_type, error.http_status) == ("connect", None)


async def test_a_slow_server_is_transient_timeout(family: Family, fake: Fake) -> None:
    fake.set(latency_ms=2000)

    async with contextlib.aclosing(family.backend(fake.url, timeout=httpx.Timeout(0.2))) as slow:
        error = await failure(slow, family.speakable)

    assert error.error_type == "timeout"


async def test_a_dripping_body_is_cut_off_at_the_overall_deadline(family: Family) -> None:
    async with (
        dripping_server() as url,
        contextlib.aclosing(family.backend(url, timeout=httpx.Timeout(0.5))) as backend,
    ):
        started = time.monotonic()
        error = await failure(backend, family.speakable)
        elapsed = time.monotonic() - started

    assert error.error_type == "timeout"
    assert "within 0.5 s" in error.message
    assert 0.4 < elapsed < 2.0


@pytest.mark.parametrize("adapter", [FishSpeechBackend, QwenTTSBackend])
async def test_a_dripping_health_route_is_not_ready(
    adapter: Callable[..., FishSpeechBackend | QwenTTSBackend],
) -> None:
    async with (
        dripping_server() as url,
        contextlib.aclosing(adapter("health", url, timeout=httpx.Timeout(0.3))) as backend,
    ):
        started = time.monotonic()
        assert not await backend.ready()

    assert time.monotonic() - started < 2.0


async def test_a_given_client_is_used_and_left_open(family: Family, fake: Fake) -> None:
    async with httpx.AsyncClient() as client:
        backend = family.backend(fake.url, client=client)
        await backend.synthesize(family.speakable)
        await backend.aclose()

        assert not client.is_closed


# --- the key --------------------------------------------------------------------------------


@pytest.mark.parametrize("family", KEYED, ids=by_name, indirect=True)
async def test_api_key_is_sent_as_bearer_and_kept_out_of_repr(family: Family, fake: Fake) -> None:
    fake.set(api_key="sk-test-123")

    async with contextlib.aclosing(family.backend(fake.url, api_key="sk-test-123")) as backend:
        await backend.synthesize(family.speakable)

    assert fake.stats()["last_authorization"] == "Bearer sk-test-123"
    assert "sk-test" not in repr(backend)
    assert "sk-test" not in repr(backend._http)  # type: ignore[attr-defined]


@pytest.mark.parametrize("family", KEYED, ids=by_name, indirect=True)
async def test_a_wrong_api_key_is_systemic_and_not_repeated(family: Family, fake: Fake) -> None:
    fake.set(api_key="right")

    async with contextlib.aclosing(family.backend(fake.url, api_key="wrong-key")) as backend:
        error = await failure(backend, family.speakable, Systemic)

    assert error.http_status == 401
    assert "wrong-key" not in error.message


@pytest.mark.parametrize("family", KEYED, ids=by_name, indirect=True)
async def test_no_key_sends_no_authorization(family: Family, backend: Backend, fake: Fake) -> None:
    await backend.synthesize(family.speakable)

    assert fake.stats()["last_authorization"] is None


# --- references -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", CLONING, ids=by_name, indirect=True)
async def test_a_reference_nobody_loaded_is_invalid_input_and_sends_nothing(
    family: Family, backend: Backend, fake: Fake
) -> None:
    said = cloning("s3://refs/voice.wav", None, "The transcript.")
    backend.check(said)  # the voice itself is fine

    error = await failure(backend, said, InvalidInput)

    assert "no reference loader" in error.message
    assert "s3://refs/voice.wav" in error.message
    assert fake.stats()["requests"] == 0


async def test_each_fake_is_driven_over_http(fake: Fake) -> None:
    async with httpx.AsyncClient(base_url=fake.url) as client:
        changed = await client.post("/control", json={"latency_ms": 5})
        refused = await client.post("/control", json={"no_such_switch": 1})
        stats = (await client.get("/stats")).json()

    assert (changed.status_code, refused.status_code) == (200, 400)
    assert stats["switches"]["latency_ms"] == 5


@pytest.mark.parametrize(
    ("module", "flags", "switch", "value"),
    [
        ("openai_server", ["--capacity", "16"], "capacity", 16),
        ("cosyvoice_server", ["--version", "1", "--capacity", "3"], "version", 1),
        ("fish_server", ["--max-text-length", "9"], "max_text_length", 9),
        ("qwen_server", ["--variant", "Base"], "variant", "Base"),
    ],
)
async def test_each_fake_runs_as_a_process(
    module: str, flags: list[str], switch: str, value: object
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", f"tests.fakes.{module}", "--port", "0", *flags),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        assert line.startswith(b"LISTENING ")
        async with httpx.AsyncClient() as client:
            stats = (await client.get(f"http://127.0.0.1:{int(line.split()[1])}/stats")).json()
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)

    assert stats["switches"][switch] == value
    assert process.returncode == 0


# --- pure parts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error": {"message": "Input is empty", "type": "invalid"}}', "Input is empty"),
        (b'{"error": "plain"}', "plain"),
        (b'{"detail": "Voice not found"}', "Voice not found"),
        (b'{"detail": {"code": 7}}', '{"code": 7}'),
        (
            b'{"detail": [{"loc": ["body", "input"], "msg": "Field required"}]}',
            "input: Field required",
        ),
        (b'{"statusCode": 500, "message": "No audio generated"}', "No audio generated"),
        (b"Internal Server Error", "Internal Server Error"),
        (b"[1, 2]", "[1, 2]"),
    ],
)
def test_error_bodies_become_short_messages(body: bytes, message: str) -> None:
    assert error_message(body) == message


def test_messages_are_one_line_and_capped() -> None:
    assert len(error_message(b'{"detail": "' + b"x" * 5000 + b'"}')) <= 300
    assert clip("a\n  b\tc") == "a b c"


@pytest.mark.parametrize(
    ("timeout", "deadline"),
    [
        (httpx.Timeout(120.0, connect=5.0), 120.0),
        (httpx.Timeout(5.0, read=300.0), 300.0),
        (httpx.Timeout(None), None),
    ],
)
def test_the_overall_deadline_is_the_longest_phase(
    timeout: httpx.Timeout, deadline: float | None
) -> None:
    assert deadline_of(timeout) == deadline


FISH = fish.error_for_response
QWEN = qwen.error_for_response


@pytest.mark.parametrize(
    ("classify", "status", "message", "kind"),
    [
        (status_error, 429, "slow down", Transient),
        (status_error, 422, "input: Field required", Permanent),
        (status_error, 401, "Unauthorized", Systemic),
        (FISH, 500, "Prompt is too long: 9000 > 8192", Permanent),
        (FISH, 500, "Failed to generate speech", Transient),
        (FISH, 402, "out of credits", Systemic),
        (FISH, 401, "Invalid token", Systemic),
        (FISH, 400, "Text is too long, max length is 10", Permanent),
        (FISH, 503, "busy", Transient),
        (QWEN, 400, "Speech generation failed: CUDA out of memory", Transient),
        (QWEN, 400, "TTS model did not produce audio output.", Transient),
        (QWEN, 400, "No output generated from the model.", Transient),
        (QWEN, 400, "Client disconnected", Transient),
        (QWEN, 400, "Input text cannot be empty", Permanent),
        (QWEN, 400, "Invalid voice 'x'. Supported: vivian", Permanent),
        (QWEN, 404, "The model `x` does not exist.", Systemic),
        (QWEN, 500, "EngineDeadError", Transient),
    ],
)
def test_status_and_message_pick_the_error_class(
    classify: Classify, status: int, message: str, kind: type[Exception]
) -> None:
    error = classify(status, message, None)

    assert type(error) is kind
    assert (error.http_status, error.error_type) == (status, f"http_{status}")
    assert str(error) == f"HTTP {status}: {message}"
    assert error.stage is Stage.SYNTHESIZE
