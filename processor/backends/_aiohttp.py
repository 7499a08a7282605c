"""An httpx transport on aiohttp: the adapters keep httpx as their API (requests, responses,
errors), while the bytes move through aiohttp's connection pool, which costs a fraction of
httpcore's CPU per call (issue 17: about 0.3 ms instead of 1.3 ms on loopback).

What is kept from httpx's own transport:

    httpx                                   here
    ``Timeout.connect``                     aiohttp ``sock_connect``
    ``Timeout.read`` (per read)             aiohttp ``sock_read`` (per read)
    ``Timeout.pool``                        aiohttp ``connect`` (waiting for a pooled
                                            connection, and connecting)
    ``Limits.max_connections``              the connector's ``limit``
    ``Limits.keepalive_expiry``             the connector's ``keepalive_timeout``
    TLS: ``httpx.create_ssl_context()``     the same context (certifi, or ``SSL_CERT_FILE``
                                            / ``SSL_CERT_DIR``)
    streamed response bodies                ``iter_any``: each chunk as it arrives

and the errors come out as httpx's, so ``_http`` classifies them as before: a timeout of a
phase is an ``httpx.TimeoutException`` (``ConnectTimeout``, ``ReadTimeout``, ``PoolTimeout``),
a refused or failed connection ``httpx.ConnectError``, a connection closed before or during
the answer ``httpx.RemoteProtocolError`` / ``httpx.ReadError`` (both ``TransportError``).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping

import aiohttp
import httpx

_TIMEOUTS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
)
_ERRORS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.ReadError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),  # a malformed answer
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.ClientError, httpx.ReadError),
    (OSError, httpx.ReadError),  # a reset outside aiohttp's own wrapping
)


@contextlib.contextmanager
def httpx_errors() -> Iterator[None]:
    """aiohttp's exceptions as httpx's (the cause kept)."""
    try:
        yield
    except httpx.HTTPError:
        raise
    except (aiohttp.ClientError, OSError) as exc:
        for source, target in (*_TIMEOUTS, *_ERRORS):
            if isinstance(exc, source):
                raise target(str(exc) or type(exc).__name__) from exc
        raise  # pragma: no cover - OSError is the last entry


def phases_of(phases: Mapping[str, float | None]) -> aiohttp.ClientTimeout:
    """httpx's phase timeouts (``Timeout.as_dict()``) as aiohttp's, as the table above says."""
    return aiohttp.ClientTimeout(
        sock_connect=phases.get("connect"),
        sock_read=phases.get("read"),
        connect=phases.get("pool"),
    )


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with httpx_errors():
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        # Back to the pool when the body was read to its end; closed otherwise.
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp session (made on first use, inside the running loop) under an
    ``httpx.AsyncClient``."""

    def __init__(
        self,
        *,
        limits: httpx.Limits,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._limits = limits
        self._ssl = ssl_context or httpx.create_ssl_context()
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session itself (``_http``'s direct path for JSON and byte bodies)."""
        return self._open()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._limits.max_connections or 0,
                keepalive_timeout=self._limits.keepalive_expiry or 15.0,
                ssl=self._ssl,
            )
            # No headers of aiohttp's own: httpx's request carries all of them.
            self._session = aiohttp.ClientSession(
                connector=connector,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
                auto_decompress=False,  # httpx decodes Content-Encoding itself
                # A TTS API is stateless: no cookie of one call rides on the next (httpx's own
                # jar is off in processor.backends._http).
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = phases_of(request.extensions.get("timeout", {}))
        body = await request.aread()
        with httpx_errors():
            response = await self._open().request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=body or None,
                allow_redirects=False,
                timeout=timeout,
            )
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_Body(response),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
