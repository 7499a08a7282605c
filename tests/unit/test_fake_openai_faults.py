"""The fake speech server's fault switches (down, error_ratio, timeout_ratio, seed), through the
real adapter, so the fault suite's scenarios mean what they say."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from processor.backends.base import Utterance
from processor.backends.openai import OpenAIBackend
from processor.errors import Transient
from tests.fakes.common import DROPPED, RANDOM_ERRORS, FakeHandle, command_line
from tests.fakes.openai_server import Switches, running_fake

pytestmark = pytest.mark.timeout(30)
UTTERANCE = Utterance(text="Hello there.")


@pytest.fixture
async def fake() -> AsyncIterator[FakeHandle]:
    async with running_fake() as handle:
        yield handle


async def outcomes(fake: FakeHandle, n: int, timeout: float = 5.0) -> list[str]:
    """What ``n`` sequential calls became: ``ok`` or the Transient's error type."""
    backend = OpenAIBackend("f", fake.url, timeout=httpx.Timeout(timeout))
    out = []
    try:
        for _ in range(n):
            try:
                await backend.synthesize(UTTERANCE)
                out.append("ok")
            except Transient as exc:
                out.append(exc.error_type)
    finally:
        await backend.aclose()
    return out


async def test_down_drops_connections_and_recovers(fake: FakeHandle) -> None:
    fake.set(down=True)
    assert await outcomes(fake, 3) == ["connect"] * 3
    assert fake.stats()["statuses"] == {str(DROPPED): 3}

    fake.set(down=False)
    assert await outcomes(fake, 2) == ["ok", "ok"]


async def test_down_leaves_control_and_stats_working(fake: FakeHandle) -> None:
    fake.set(down=True)
    async with httpx.AsyncClient(base_url=fake.url) as client:
        changed = await client.post("/control", json={"down": False})
        stats = (await client.get("/stats")).json()
    assert changed.status_code == 200
    assert stats["switches"]["down"] is False


async def test_error_ratio_answers_random_5xx_without_retry_after(fake: FakeHandle) -> None:
    fake.set(error_ratio=1.0, seed=1)
    got = await outcomes(fake, 12)
    assert {int(t.removeprefix("http_")) for t in got} <= set(RANDOM_ERRORS)
    assert len(set(got)) > 1


async def test_ratios_are_shares_and_reproducible_with_a_seed(fake: FakeHandle) -> None:
    fake.set(error_ratio=0.3, seed=7)
    first = await outcomes(fake, 60)
    fake.set(seed=7)
    again = await outcomes(fake, 60)
    assert first == again
    assert 5 <= sum(o != "ok" for o in first) <= 35


async def test_timeout_ratio_holds_past_the_client_timeout(fake: FakeHandle) -> None:
    fake.set(timeout_ratio=1.0, hang_ms=5_000)
    started = asyncio.get_running_loop().time()
    assert await outcomes(fake, 2, timeout=0.3) == ["timeout", "timeout"]
    assert asyncio.get_running_loop().time() - started < 3


async def test_a_held_request_answers_after_hang_ms(fake: FakeHandle) -> None:
    fake.set(timeout_ratio=1.0, hang_ms=50)
    assert await outcomes(fake, 1) == ["ok"]


def test_command_line_takes_the_fault_switches() -> None:
    ratios = ["--error-ratio", "0.2", "--timeout-ratio", "0.05"]
    _, switches = command_line(Switches, ["--down", *ratios, "--hang-ms", "9000", "--seed", "3"])
    assert switches.down
    assert (switches.error_ratio, switches.timeout_ratio) == (0.2, 0.05)
    assert (switches.hang_ms, switches.seed) == (9000, 3)


async def test_a_dripping_body_runs_into_the_overall_deadline(fake: FakeHandle) -> None:
    fake.set(drip_ms=20)
    started = asyncio.get_running_loop().time()
    assert await outcomes(fake, 1, timeout=0.5) == ["timeout"]
    assert asyncio.get_running_loop().time() - started < 2
