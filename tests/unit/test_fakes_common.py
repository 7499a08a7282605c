"""The fake servers' shared base (tests.fakes.common), through every fake built on it: the
switches and their command line, /control, /stats, down and the random faults, each answered the
family's way."""

from __future__ import annotations

import dataclasses
import io
import math
import time
import wave
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from typing import Any

import httpx
import pytest

from bench import fake_tts
from tests.fakes import common, cosyvoice_server, fish_server, openai_server, qwen_server

pytestmark = pytest.mark.timeout(30)


@dataclasses.dataclass(frozen=True)
class Family:
    """A fake built on the base, and how to speak to it."""

    name: str
    make: Callable[[], common.FakeServer[Any]]
    path: str
    request: dict[str, Any]
    bad_request: dict[str, Any]
    bad_status: int
    #: Whether a response is this family's answer to a random server error.
    error_shaped: Callable[[httpx.Response], bool]


FAMILIES = [
    Family(
        "openai",
        openai_server.FakeSpeechServer,
        "/v1/audio/speech",
        {"json": {"model": "m", "voice": "v", "input": "Hi."}},
        {"json": {"model": "m", "voice": "v"}},
        400,
        lambda r: r.json()["error"]["type"] == "server_error",
    ),
    Family(
        "qwen",
        qwen_server.FakeQwenServer,
        "/v1/audio/speech",
        {"json": {"input": "Hi.", "voice": "vivian"}},
        {"json": {"voice": "vivian"}},
        400,
        lambda r: r.json()["error"]["type"] == "InternalServerError",
    ),
    Family(
        "fish",
        fish_server.FakeFishServer,
        "/v1/tts",
        {"json": {"text": "Hi."}},
        {"json": {"top_p": 7}},
        422,
        lambda r: r.json()["statusCode"] == r.status_code and "message" in r.json(),
    ),
    Family(
        "cosyvoice",
        cosyvoice_server.FakeCosyVoiceServer,
        "/inference_sft",
        {"data": {"tts_text": "Hi.", "spk_id": "英文女"}},
        {"data": {"tts_text": "Hi."}},
        422,
        lambda r: r.text == HTTPStatus(r.status_code).phrase,
    ),
    Family(
        "bench",
        lambda: fake_tts.FakeTTS(fake_tts.Switches(latency_ms=0)),
        "/v1/audio/speech",
        {"json": {"input": "Hi."}},
        {"json": {"input": ""}},
        400,
        lambda r: r.json()["error"]["type"] == "server_error",
    ),
]


@pytest.fixture(params=FAMILIES, ids=[f.name for f in FAMILIES])
def family(request: pytest.FixtureRequest) -> Family:
    chosen: Family = request.param
    return chosen


@pytest.fixture
async def fake(family: Family) -> AsyncIterator[common.FakeHandle]:
    async with common.running(family.make()) as handle:
        yield handle


@pytest.fixture
async def client(fake: common.FakeHandle) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake.url, timeout=5) as http:
        yield http


async def speak(client: httpx.AsyncClient, family: Family, bad: bool = False) -> httpx.Response:
    return await client.post(family.path, **(family.bad_request if bad else family.request))


SWITCH_TYPES = [
    common.Switches,
    openai_server.Switches,
    qwen_server.Switches,
    fish_server.Switches,
    cosyvoice_server.Switches,
    fake_tts.Switches,
]


@pytest.mark.parametrize("switches_type", SWITCH_TYPES, ids=lambda t: t.__module__)
def test_no_flags_give_the_default_switches(switches_type: type[common.Switches]) -> None:
    assert common.command_line(switches_type, []) == (0, switches_type())


@pytest.mark.parametrize("switches_type", SWITCH_TYPES, ids=lambda t: t.__module__)
def test_every_family_has_the_shared_switches(switches_type: type[common.Switches]) -> None:
    argv = ["--port", "7", "--down", "--error-ratio", "0.25", "--timeout-ratio", "0.5"]
    port, switches = common.command_line(
        switches_type, [*argv, "--hang-ms", "900", "--seed", "3", "--fail-first-n", "2"]
    )
    assert port == 7
    assert switches.down
    assert (switches.error_ratio, switches.timeout_ratio, switches.hang_ms) == (0.25, 0.5, 900)
    assert (switches.seed, switches.fail_first_n) == (3, 2)


def test_flags_follow_the_field_types() -> None:
    _, openai = common.command_line(
        openai_server.Switches, ["--capacity", "3", "--api-key", "k", "--streamed-wav"]
    )
    assert (openai.capacity, openai.api_key, openai.streamed_wav) == (3, "k", True)
    _, cosy = common.command_line(
        cosyvoice_server.Switches, ["--speakers", "a,b,,c", "--version", "1"]
    )
    assert (cosy.speakers, cosy.version) == (["a", "b", "c"], 1)
    _, bench = common.command_line(
        fake_tts.Switches, ["--knee", "2.5", "--fail-mode", "drop", "--queue", "ps"]
    )
    assert (bench.knee, bench.fail_mode, bench.queue) == (2.5, "drop", "ps")
    assert bench.per_char is None


@pytest.mark.parametrize(
    ("switches_type", "argv"),
    [
        (cosyvoice_server.Switches, ["--version", "4"]),
        (qwen_server.Switches, ["--variant", "Singing"]),
        (fake_tts.Switches, ["--fail-mode", "404"]),
        (openai_server.Switches, ["--capacity", "many"]),
        (fake_tts.Switches, ["--capacity", "0"]),
    ],
)
def test_flags_refuse_what_the_switch_cannot_be(
    switches_type: type[common.Switches], argv: list[str]
) -> None:
    with pytest.raises((SystemExit, ValueError)):
        common.command_line(switches_type, argv)


def test_jitter_stays_within_its_bounds_and_never_below_zero() -> None:
    switches = common.Switches(latency_ms=10, jitter_ms=30)
    delays = [switches.jittered_ms() for _ in range(500)]
    assert min(delays) == 0.0
    assert max(delays) <= 40
    assert len(set(delays)) > 100
    assert common.Switches(latency_ms=10).jittered_ms(70) == 70


def test_a_fault_holds_only_when_it_hangs() -> None:
    assert common.Fault().wait_ms(12) == 12
    assert common.Fault(hang_ms=900).wait_ms(12) == 900


def test_fail_first_n_counts_down_and_is_rearmed_by_set() -> None:
    server = common.FakeServer(common.Switches(fail_first_n=2))
    assert [server.take_first_failure() for _ in range(3)] == [True, True, False]
    server.set(fail_first_n=1)
    assert [server.take_first_failure() for _ in range(2)] == [True, False]


def test_random_faults_are_shares_and_a_seed_replays_them() -> None:
    server = common.FakeServer(common.Switches(error_ratio=0.3, timeout_ratio=0.2, seed=5))
    first = [server.draw() for _ in range(2000)]
    server.set(seed=5)
    assert [server.draw() for _ in range(2000)] == first
    errors = [f.status for f in first if f.status is not None]
    held = [f for f in first if f.hang_ms is not None]
    assert set(errors) == set(common.RANDOM_ERRORS)
    assert 500 <= len(errors) <= 700
    assert 300 <= len(held) <= 500
    assert all(f.hang_ms == 30_000 and f.status is None for f in held)
    server.set(error_ratio=0.0, timeout_ratio=0.0)
    assert server.draw() == common.NO_FAULT


def test_tone_is_as_long_as_asked_and_a_wav_says_its_rate() -> None:
    assert len(common.tone(1500, 24000, 400)) == 2 * 36000
    assert len(common.tone(0, 22050, 440)) == 2
    pcm = common.tone(250, 44100, 441)
    with wave.open(io.BytesIO(common.wav_bytes(pcm, 44100))) as reader:
        assert (reader.getframerate(), reader.getnframes()) == (44100, len(pcm) // 2)
    assert pcm[:200] == pcm[200:400]  # 100 samples a period at 441 Hz


async def test_control_changes_a_switch(fake: common.FakeHandle, client: httpx.AsyncClient) -> None:
    changed = await client.post("/control", json={"latency_ms": 5, "hang_ms": 700})
    assert changed.status_code == 200
    assert changed.json()["switches"]["latency_ms"] == 5
    assert fake.server.switches.hang_ms == 700
    assert (await client.get("/stats")).json()["switches"]["hang_ms"] == 700


@pytest.mark.parametrize("body", [{"no_such_switch": 1}, [1, 2], "{"])
async def test_control_refuses_what_is_not_a_switch(
    fake: common.FakeHandle, client: httpx.AsyncClient, body: object
) -> None:
    before = fake.server.switches
    if isinstance(body, str):
        refused = await client.post("/control", content=body)
    else:
        refused = await client.post("/control", json=body)
    assert refused.status_code == 400
    assert refused.json()["error"]["message"]
    assert fake.server.switches == before


async def test_stats_count_requests_by_status_and_reset_zeroes_them(
    family: Family, fake: common.FakeHandle, client: httpx.AsyncClient
) -> None:
    for _ in range(2):
        assert (await speak(client, family)).status_code == 200
    assert (await speak(client, family, bad=True)).status_code == family.bad_status
    stats = (await client.get("/stats")).json()
    assert stats["requests"] == 3
    assert stats["statuses"] == {"200": 2, str(family.bad_status): 1}
    assert stats["in_flight"] == 0
    assert stats["in_flight_max"] == 1
    assert stats["last_authorization"] is None

    reset = (await client.post("/control", json={"reset": True})).json()
    assert (reset["requests"], reset["statuses"], reset["in_flight_max"]) == (0, {}, 0)


async def test_stats_show_infinite_switches_as_null() -> None:
    async with common.running(fake_tts.FakeTTS()) as fake:
        assert fake.server.switches.knee == math.inf
        switches = fake.stats()["switches"]
        assert isinstance(switches, dict)
        assert switches["knee"] is None


async def test_down_drops_the_api_and_leaves_control_working(
    fake: common.FakeHandle, family: Family, client: httpx.AsyncClient
) -> None:
    fake.set(down=True)
    for _ in range(2):
        with pytest.raises(httpx.TransportError):
            await speak(client, family)
    async with httpx.AsyncClient(base_url=fake.url, timeout=5) as fresh:
        stats = (await fresh.post("/control", json={"down": False})).json()
        assert stats["requests"] == 2
        assert stats["statuses"] == {str(common.DROPPED): 2}
        assert (await speak(fresh, family)).status_code == 200


async def test_error_ratio_answers_random_5xx_in_the_family_shape(
    fake: common.FakeHandle, family: Family, client: httpx.AsyncClient
) -> None:
    fake.set(error_ratio=1.0, seed=2)
    answers = [await speak(client, family) for _ in range(12)]
    assert {a.status_code for a in answers} <= set(common.RANDOM_ERRORS)
    assert len({a.status_code for a in answers}) > 1
    assert all(family.error_shaped(a) for a in answers)


async def test_timeout_ratio_holds_the_answer_for_hang_ms(
    fake: common.FakeHandle, family: Family, client: httpx.AsyncClient
) -> None:
    fake.set(timeout_ratio=1.0, hang_ms=300)
    started = time.monotonic()
    assert (await speak(client, family)).status_code == 200
    assert time.monotonic() - started >= 0.3
    fake.set(hang_ms=10_000)
    with pytest.raises(httpx.ReadTimeout):
        await client.post(family.path, timeout=0.3, **family.request)
    assert fake.stats()["requests"] == 2


async def test_drip_sends_the_body_a_little_at_a_time(
    fake: common.FakeHandle, family: Family, client: httpx.AsyncClient
) -> None:
    fake.set(drip_ms=20)
    started = time.monotonic()
    pieces: list[bytes] = []
    async with client.stream("POST", family.path, **family.request) as response:
        assert response.status_code == 200
        async for piece in response.aiter_raw():
            pieces.append(piece)
            if len(b"".join(pieces)) >= 20:
                break
    assert time.monotonic() - started >= 0.18  # ten pairs, 20 ms apart


@pytest.mark.parametrize("later", ["86400", "Wed, 21 Oct 2037 07:28:00 GMT"])
async def test_the_openai_fake_sends_retry_after_with_its_injected_failures(later: str) -> None:
    body = FAMILIES[0].request["json"]
    async with (
        openai_server.running_fake(fail_status=429, retry_after=later) as fake,
        httpx.AsyncClient(base_url=fake.url, timeout=5) as http,
    ):
        refused = await http.post("/v1/audio/speech", json=body)
        fake.set(fail_status=None, error_ratio=1.0)
        failed = await http.post("/v1/audio/speech", json=body)
        fake.set(error_ratio=0.0)
        answered = await http.post("/v1/audio/speech", json=body)
    assert (refused.status_code, refused.headers["Retry-After"]) == (429, later)
    assert failed.status_code >= 500
    assert failed.headers["Retry-After"] == later
    assert answered.status_code == 200
    assert "Retry-After" not in answered.headers


async def test_the_openai_fake_answers_marked_inputs_at_the_marked_rate() -> None:
    rates = []
    async with (
        openai_server.running_fake(marked_rate=16000, rate_marker="~16k") as fake,
        httpx.AsyncClient(base_url=fake.url, timeout=5) as http,
    ):
        for text in ("Plain text.", "Marked ~16k text.", "Plain again."):
            body = {"model": "m", "voice": "v", "input": text}
            answer = await http.post("/v1/audio/speech", json=body)
            with wave.open(io.BytesIO(answer.content)) as reader:
                rates.append(reader.getframerate())
    assert rates == [openai_server.RATE, 16000, openai_server.RATE]
