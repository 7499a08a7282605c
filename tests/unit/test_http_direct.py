"""``HttpClient.post``: a JSON or byte body on the client's own pool goes straight to the
aiohttp session (no httpx request or response objects); a form, or a client handed in, goes
through httpx. The adapters' tests (``test_backend_http``) check the outcomes on both paths."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from processor.backends._http import HttpClient
from processor.errors import Transient


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[str]:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        if request.path == "/fail":
            return web.json_response({"error": {"message": "busy"}}, status=503)
        answer = {
            "type": request.content_type,
            "body": body.decode(),
            "auth": request.headers.get("Authorization"),
        }
        return web.json_response(answer)

    app = web.Application()
    app.router.add_post("/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def no_httpx(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("went through httpx")


async def test_json_and_bytes_skip_httpx_on_the_clients_own_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = HttpClient(timeout=httpx.Timeout(5.0), max_connections=2, api_key="k")
    monkeypatch.setattr(httpx.AsyncClient, "stream", no_httpx)
    async with echo_server() as url, contextlib.aclosing(client):
        status, data = await client.post(f"{url}/speech", json={"input": "héllo"})
        sent = json.loads(data)
        assert (status, sent["type"], json.loads(sent["body"])) == (
            200,
            "application/json",
            {"input": "héllo"},
        )
        assert sent["auth"] == "Bearer k"
        _, data = await client.post(f"{url}/raw", content=b"abc", headers={"Content-Type": "x/y"})
        assert json.loads(data)["body"] == "abc"
        with pytest.raises(Transient, match="busy"):
            await client.post(f"{url}/fail", json={})


async def test_a_form_or_a_client_handed_in_goes_through_httpx() -> None:
    async with echo_server() as url, httpx.AsyncClient() as given:
        calls: list[str] = []
        stream = given.stream

        def counted(*args: Any, **kwargs: Any) -> Any:
            calls.append(str(args[1]))
            return stream(*args, **kwargs)

        given.stream = counted  # type: ignore[method-assign]
        handed = HttpClient(timeout=httpx.Timeout(5.0), max_connections=2, client=given)
        await handed.post(f"{url}/speech", json={"input": "x"})
        assert calls == [f"{url}/speech"]

        own = HttpClient(timeout=httpx.Timeout(5.0), max_connections=2)
        async with contextlib.aclosing(own):
            _, data = await own.post(f"{url}/form", data={"text": "hi"}, files={"f": b"1"})
        assert json.loads(data)["type"] == "multipart/form-data"
