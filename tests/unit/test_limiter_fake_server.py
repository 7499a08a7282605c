"""The benchmark's fake GPU server overloads the three ways the adaptive window is measured
against: it fails the excess, it queues and thrashes, or it crashes and restarts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

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


async def until(condition: Callable[[], Awaitable[bool]], within_s: float) -> float:
    """Seconds until ``condition()`` held (asked every 20 ms); fails after ``within_s``."""
    started = time.monotonic()
    while not await condition():
        assert time.monotonic() - started < within_s, "condition not met in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_queue_keeps_every_call_and_thrashes_past_the_knee() -> None:
    async def four_calls(knee: float) -> float:
        args = {"capacity": 2, "knee": knee, "latency_ms": 200, "queue": "ps"}
        async with serving(**args, overload="queue") as (_, url):
            started = time.monotonic()
            assert await asyncio.gather(*(speak(url) for _ in range(4))) == [200] * 4
            return time.monotonic() - started

    # Lower bounds only (a busy machine can only make calls slower): 4 calls of 0.2 s sharing
    # 2 slots take at least 0.4 s; past the knee (2 calls) each runs at a further 2/4 of the
    # speed, so they take at least 0.8 s, twice the 0.4 s a server that did not thrash needs.
    assert await four_calls(knee=4.0) >= 0.38
    assert await four_calls(knee=1.0) >= 0.76


async def test_crash_fails_every_call_in_it_and_refuses_connections_while_it_restarts() -> None:
    switches = {"capacity": 2, "knee": 1.0, "latency_ms": 2000, "restart_s": 3.0}
    async with serving(**switches, overload="crash") as (fake, url):
        first = [asyncio.create_task(speak(url)) for _ in range(2)]

        async def both_in() -> bool:
            return fake.stats()["in_server"] == 2

        await until(both_in, within_s=10)
        assert await speak(url) == 500  # the third call brings it down...
        assert await asyncio.gather(*first) == [500, 500]  # ...with the two in it

        async def refused() -> bool:
            return await speak(url) == "ConnectError"

        await until(refused, within_s=2.5)  # restarting (3 s): the port is closed

        async def serving_again() -> bool:
            return await speak(url) == 200

        assert await until(serving_again, within_s=15) > 0  # back after the restart
        stats = fake.stats()
    assert len(fake.crashes) == 1
    assert stats["failed"] == 3
    assert sum(second["crashes"] for second in stats["series"]) == 1  # type: ignore[attr-defined]


async def test_a_reset_ends_a_restart_at_once() -> None:
    async with serving(capacity=1, knee=1.0, latency_ms=300, overload="crash") as (fake, url):
        await asyncio.gather(speak(url), speak(url))
        assert fake.crashes
        fake.set(reset=True)

        async def serving_again() -> bool:
            return await speak(url) == 200

        # The restart lasts restart_s = 5 s unless the reset ended it.
        assert await until(serving_again, within_s=4) < 4


async def test_a_burst_past_the_knee_is_one_crash() -> None:
    async with serving(capacity=2, knee=1.0, latency_ms=300, overload="crash") as (fake, url):
        results = await asyncio.gather(*(speak(url) for _ in range(12)))
    assert "200" not in map(str, results)  # nothing that got in before the fall survives it
    assert len(fake.crashes) == 1
