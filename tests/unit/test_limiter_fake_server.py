"""The benchmark's fake GPU server overloads the three ways the adaptive window is measured
against: it fails the excess, it queues and thrashes, or it crashes and restarts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from bench import fake_tts

pytestmark = pytest.mark.timeout(30)
SPEECH = {"input": "Hello there."}


@contextlib.asynccontextmanager
async def serving(**switches: object) -> AsyncIterator[tuple[fake_tts.FakeTTS, str]]:
    """The fake on a closable port, as ``python -m bench.fake_tts`` runs it."""
    fake = fake_tts.FakeTTS(fake_tts.Switches(**switches))  # type: ignore[arg-type]
    runner = web.AppRunner(fake.app, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    port = fake_tts.Port(runner)
    fake.listener = port
    await port.open()
    try:
        yield fake, f"http://127.0.0.1:{port.port}/v1/audio/speech"
    finally:
        await runner.cleanup()


async def speak(url: str) -> int | str:
    """The status, or the transport error's class name."""
    async with httpx.AsyncClient(timeout=5) as http:
        try:
            return (await http.post(url, json=SPEECH)).status_code
        except httpx.TransportError as exc:
            return type(exc).__name__


async def test_fail_excess_fails_the_calls_past_the_knee_and_serves_the_rest() -> None:
    async with serving(capacity=2, knee=1.0, latency_ms=300, overload="fail") as (fake, url):
        results = await asyncio.gather(*(speak(url) for _ in range(4)))
    assert sorted(map(str, results)) == ["200", "200", "500", "500"]
    assert fake.crashes == []


async def test_queue_keeps_every_call_and_thrashes_past_the_knee() -> None:
    async def four_calls(knee: float) -> float:
        args = {"capacity": 2, "knee": knee, "latency_ms": 200, "queue": "ps"}
        async with serving(**args, overload="queue") as (_, url):
            started = time.monotonic()
            assert await asyncio.gather(*(speak(url) for _ in range(4))) == [200] * 4
            return time.monotonic() - started

    calm, thrashing = await four_calls(knee=4.0), await four_calls(knee=1.0)
    assert calm >= 0.38  # 4 calls sharing 2: twice as long as one (0.2 s)
    assert 1.4 <= thrashing / calm <= 3.0  # and half the speed again past 2


async def test_crash_fails_every_call_in_it_and_refuses_connections_while_it_restarts() -> None:
    switches = {"capacity": 2, "knee": 1.0, "latency_ms": 400, "restart_s": 0.6}
    async with serving(**switches, overload="crash") as (fake, url):
        first = [asyncio.create_task(speak(url)) for _ in range(2)]
        await asyncio.sleep(0.1)
        assert await speak(url) == 500  # the third call brings it down...
        assert await asyncio.gather(*first) == [500, 500]  # ...with the two in it
        await asyncio.sleep(0.2)
        assert await speak(url) == "ConnectError"  # restarting: the port is closed
        await asyncio.sleep(0.6)
        assert await speak(url) == 200  # back
        stats = fake.stats()
    assert len(fake.crashes) == 1
    assert stats["failed"] == 3
    assert sum(second["crashes"] for second in stats["series"]) == 1  # type: ignore[attr-defined]


async def test_a_reset_ends_a_restart_at_once() -> None:
    async with serving(capacity=1, knee=1.0, latency_ms=300, overload="crash") as (fake, url):
        await asyncio.gather(speak(url), speak(url))
        assert fake.crashes
        fake.set(reset=True)
        await asyncio.sleep(0.1)
        assert await speak(url) == 200


async def test_a_burst_past_the_knee_is_one_crash() -> None:
    async with serving(capacity=2, knee=1.0, latency_ms=300, overload="crash") as (fake, url):
        results = await asyncio.gather(*(speak(url) for _ in range(12)))
    assert "200" not in map(str, results)  # nothing that got in before the fall survives it
    assert len(fake.crashes) == 1
