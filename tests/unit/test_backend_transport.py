"""The adapters' own HTTP client (httpx on the aiohttp transport) against a real server: it
keeps no cookies between calls, and sends the body and headers httpx built."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from processor.backends._http import HttpClient


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[web.Request]]]:
    seen: list[web.Request] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request)
        body = await request.read()
        response = web.Response(body=body, content_type="application/octet-stream")
        response.set_cookie("session", "abc")
        return response

    app = web.Application()
    app.router.add_post("/", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        # A host name, not an address: aiohttp's default jar ignores cookies from IP addresses.
        yield f"http://localhost:{port}/", seen
    finally:
        await runner.cleanup()


async def test_no_cookie_rides_on_the_next_call(server: tuple[str, list[web.Request]]) -> None:
    url, seen = server
    http = HttpClient(timeout=httpx.Timeout(5.0), max_connections=2, api_key="k")
    try:
        assert await http.post(url, content=b"one") == (200, b"one")
        assert await http.post(url, json={"a": 1}) == (200, b'{"a":1}')
    finally:
        await http.aclose()
    assert [r.headers.get("Cookie") for r in seen] == [None, None]
    assert seen[1].headers["Content-Type"] == "application/json"
    assert seen[1].headers["Authorization"] == "Bearer k"
