"""Rate limits for metered backends: token buckets (requests/s, characters/min) with a burst,
taken before the call; a 429 halves the effective rate, which climbs back. Against a fake
server that counts calls and rejects those over its quota: configured below the quota, no
call is ever rejected; configured above it, the 429s bring the rate down."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from processor.config import ConfigError, parse
from processor.errors import Stage, Transient
from processor.gate import Gate
from processor.limiter import StaticLimit
from processor.ratelimit import FLOOR, Bucket, RateConfig, RateLimit

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_lets_a_burst_through_then_paces_at_its_rate() -> None:
    bucket = Bucket(rate=10.0, burst=5, now=0.0)
    assert [bucket.reserve(1, 0.0) for _ in range(5)] == [0.0] * 5
    waits = [bucket.reserve(1, 0.0) for _ in range(3)]
    assert waits == pytest.approx([0.1, 0.2, 0.3]), "debt paid at 10 a second, in order"
    assert bucket.reserve(1, 10.0) == 0.0, "refilled after a quiet spell (up to the burst)"


def test_characters_per_minute_and_a_text_longer_than_the_burst() -> None:
    clock = Clock()
    limit = RateLimit(RateConfig(chars_per_min=600, chars_burst=100), clock)
    assert limit.reserve(100) == 0.0
    assert limit.reserve(50) == pytest.approx(5.0), "600/min is 10 chars a second"
    clock.now += 60
    assert limit.reserve(10_000) == 0.0, "one burst's worth at most: never waits forever"


def test_a_429_halves_the_rate_once_per_second_and_it_climbs_back() -> None:
    clock = Clock()
    limit = RateLimit(RateConfig(requests_per_s=10, recover_s=10), clock)
    limit.throttled()
    limit.throttled()  # the same overload, seen by another call in flight
    assert limit.effective()[0] == pytest.approx(5.0)
    clock.now += 1.5
    limit.throttled()
    assert limit.effective()[0] < 5.0
    assert limit.throttles == 3
    clock.now += 10
    assert limit.effective()[0] == pytest.approx(10.0)
    for _ in range(20):
        clock.now += 1.1
        limit.throttled()
    assert limit.effective()[0] >= 10 * FLOOR * 0.99, "never below the floor"


def test_the_config_file_sets_the_limits() -> None:
    table = {"kind": "openai", "url": "http://x", "requests_per_s": 5, "chars_per_min": 9000}
    conf = parse({"backends": {"tts": table}}, {})
    assert conf.backends["tts"].rate == RateConfig(requests_per_s=5.0, chars_per_min=9000.0)
    assert conf.backends["tts"].rate.enabled
    with pytest.raises(ConfigError, match="must not be negative"):
        parse({"backends": {"tts": {**table, "requests_per_s": -1}}}, {})


class QuotaServer:
    """Counts calls; answers 429 to those over its quota (a token bucket, as metered APIs
    meter: ``per_s`` a second, ``burst`` at once)."""

    def __init__(self, per_s: float, burst: float) -> None:
        self.bucket = Bucket(per_s, burst, time.monotonic())
        self.ok = self.rejected = 0

    async def handle(self, request: web.Request) -> web.Response:
        if self.bucket.reserve(1, time.monotonic()) > 0:
            self.bucket.reserve(-1, time.monotonic())  # a rejected call takes no quota
            self.rejected += 1
            return web.Response(status=429, headers={"Retry-After": "1"})
        self.ok += 1
        return web.Response(text="ok")


@contextlib.asynccontextmanager
async def serving(server: QuotaServer) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/speech", server.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/speech"
    finally:
        await runner.cleanup()


async def drive(gate: Gate, url: str, seconds: float, workers: int = 8) -> None:
    """``workers`` callers through ``gate`` as fast as it lets them, for ``seconds``."""
    end = time.monotonic() + seconds
    async with httpx.AsyncClient() as client:

        async def worker() -> None:
            while time.monotonic() < end:
                with contextlib.suppress(Transient):
                    async with gate.call(work=20):
                        answer = await client.post(url, content=b"x" * 20)
                        if answer.status_code == 429:
                            raise Transient("429", stage=Stage.SYNTHESIZE, http_status=429)

        await asyncio.gather(*(worker() for _ in range(workers)))


async def test_below_the_quota_no_call_is_ever_rejected() -> None:
    server = QuotaServer(per_s=20, burst=10)
    rate = RateLimit(RateConfig(requests_per_s=15, requests_burst=5))
    gate = Gate("metered", StaticLimit(8), rate=rate)
    async with serving(server) as url:
        await drive(gate, url, seconds=3.0)
    assert server.rejected == 0, f"{server.ok} accepted, {server.rejected} rejected"
    assert server.ok >= 15, "the limit paced the calls; it did not stop them"
    assert server.ok <= 5 + 15 * 3.5, "no faster than the configured rate"
    assert rate.waited_s > 0


async def test_above_the_quota_429s_lower_the_effective_rate() -> None:
    server = QuotaServer(per_s=10, burst=5)
    rate = RateLimit(RateConfig(requests_per_s=40, requests_burst=5, recover_s=30))
    gate = Gate("metered", StaticLimit(8), rate=rate)
    async with serving(server) as url:
        await drive(gate, url, seconds=3.0)
    assert server.rejected > 0, "configured above the quota: the server said so"
    assert rate.throttles == server.rejected
    assert rate.effective()[0] < 40 * 0.6, "each 429 second halved the rate"


@pytest.mark.parametrize("told", [True, False])
async def test_members_of_a_group_split_one_quota(told: bool) -> None:
    """The configured rate is the group's: two members told their share (0.5 each, as after
    a rebalance) stay under the quota together; not told, each takes it all."""
    server = QuotaServer(per_s=20, burst=10)
    gates = [
        Gate("metered", StaticLimit(8), rate=RateLimit(RateConfig(15, requests_burst=10)))
        for _ in range(2)
    ]
    for gate in gates:
        if told:
            gate.set_share(0.5)
    async with serving(server) as url:
        await asyncio.gather(*(drive(gate, url, seconds=3.0) for gate in gates))
    if told:
        assert server.rejected == 0, f"{server.ok} accepted, {server.rejected} rejected"
        assert server.ok >= 15, "the limits paced the calls; they did not stop them"
        assert all(gate.rate and gate.rate.effective()[0] == 7.5 for gate in gates)
    else:
        assert server.rejected > 0, "30/s together against a quota of 20/s"
