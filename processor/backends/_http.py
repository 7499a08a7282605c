"""What the HTTP adapters share: one connection pool per backend, a Bearer key that appears in
no repr or message, an overall deadline per call, the body reader, and the one translation of
httpx outcomes into the error tree.

    outcome                                   error
    the call past its overall deadline        Transient  error_type="timeout"
    timeout of any phase (connect, read, ..)  Transient  error_type="timeout"
    connect/other transport error             Transient  error_type="connect"
    2xx, connection dropped mid-body          Transient  error_type=the adapter's (``truncated``
    2xx, body shorter than Content-Length                or ``truncated_body``)
    non-2xx                                   the adapter's classifier; by default
                                              ``processor.classify.error_for_status`` with the
                                              message ``error_message`` reads from the body

The bytes move through aiohttp (``_aiohttp.AiohttpTransport``), which keeps httpx's timeouts,
limits, TLS and errors at a fraction of httpcore's CPU per call. A JSON or byte body on the
client's own pool goes to that aiohttp session without httpx's request and response objects
(client CPU per call with a 100 KB answer: 0.47 -> 0.23 ms), with the same timeouts, errors
and body checks; multipart forms (CosyVoice) and a client handed in use httpx.

httpx applies its timeouts per phase and per read, so a body that drips a byte at a time is
never cut off by them; the overall deadline is what ends such a call. It is the longest of the
``httpx.Timeout``'s phases: the backend's configured ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx

from processor.backends._aiohttp import AiohttpTransport, httpx_errors, phases_of
from processor.backends.base import Utterance, transient
from processor.classify import error_for_status
from processor.errors import Stage, VoxlineError

#: Synthesis is slow: a long read timeout, a short connect timeout.
DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=5.0)
MAX_MESSAGE = 300

#: Error body -> a short message.
Describe = Callable[[bytes], str]
#: Status, message, ``Retry-After`` -> the error to raise.
Classify = Callable[[int, str, str | None], VoxlineError]


def status_error(status: int, message: str, retry_after: str | None) -> VoxlineError:
    """The error for a non-2xx answer, by status alone."""
    error = error_for_status(status, message, stage=Stage.SYNTHESIZE, retry_after=retry_after)
    if error is None:  # pragma: no cover - callers pass non-2xx statuses only
        return transient(f"unexpected HTTP {status}", "http_unexpected", status)
    return error


def error_message(body: bytes) -> str:
    """A short message from an error body: ``{"error": {"message"}}``, ``{"detail"}``,
    ``{"message"}``, or text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed: object = json.loads(text)
    except ValueError:
        return clip(text)
    return clip(_message_of(parsed) or text)


def validation_message(errors: list[object]) -> str:
    """FastAPI/pydantic validation errors (``[{"loc": [...], "msg": ...}]``) as one line."""
    return clip("; ".join(_validation_item(item) for item in errors))


def clip(text: str) -> str:
    """``text`` on one line, at most ``MAX_MESSAGE`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _message_of(parsed: object) -> str | None:
    if not isinstance(parsed, dict):
        return None
    error = parsed.get("error")
    if isinstance(error, dict) and error.get("message") is not None:
        return str(error["message"])
    if isinstance(error, str):
        return error
    detail = parsed.get("detail")
    if isinstance(detail, list):
        return validation_message(detail)
    if detail is not None:
        return detail if isinstance(detail, str) else json.dumps(detail)
    message = parsed.get("message")
    return None if message is None else str(message)


def _validation_item(item: object) -> str:
    if not isinstance(item, dict):
        return str(item)
    location = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
    message = str(item.get("msg", item))
    return f"{location}: {message}" if location else message


async def read_body(response: httpx.Response, truncated: str = "truncated") -> bytes:
    """The whole body; a connection dropped after the headers, or a body shorter than its
    Content-Length, is a truncated body (``Transient`` of type ``truncated``)."""
    return await _whole(response.aread(), response.status_code, response.headers, truncated)


async def _whole(
    read: Awaitable[bytes], status: int, headers: Mapping[str, str], truncated: str
) -> bytes:
    try:
        data = await read
    except httpx.TimeoutException:
        raise
    except httpx.TransportError as exc:
        if not _success(status):
            return b""  # the status says enough; a cut error message is no loss
        raise transient(
            f"truncated body: the connection dropped mid-body ({exc or type(exc).__name__})",
            truncated,
            status,
        ) from exc
    expected = headers.get("Content-Length")
    if (
        _success(status)
        and expected is not None
        and expected.isdigit()
        and "Content-Encoding" not in headers
        and len(data) < int(expected)
    ):
        raise transient(f"truncated body: {len(data)} of {expected} bytes", truncated, status)
    return data


def _success(status: int) -> bool:
    return 200 <= status < 300


def deadline_of(timeout: httpx.Timeout) -> float | None:
    """The overall deadline of a call: the longest phase timeout (``None``: none set)."""
    phases = [t for t in (timeout.connect, timeout.read, timeout.write, timeout.pool) if t]
    return max(phases, default=None)


async def _errors_as_httpx(read: Awaitable[bytes]) -> bytes:
    with httpx_errors():
        return await read


def _keep_no_cookies(response: httpx.Response) -> None:
    """The adapters' clients keep no cookies."""


class HttpClient:
    """One backend's connection pool and key; ``post`` returns a 2xx answer or raises."""

    def __init__(
        self,
        *,
        timeout: httpx.Timeout,
        max_connections: int,
        api_key: str | None = None,
        client: httpx.AsyncClient | None = None,
        describe: Describe = error_message,
        classify: Classify = status_error,
        truncated: str = "truncated",
    ) -> None:
        self.deadline_s = deadline_of(timeout)
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._describe = describe
        self._classify = classify
        self._truncated = truncated
        self._owns_client = client is None
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        #: Our own pool: JSON and byte bodies go to aiohttp directly (see ``post``).
        self._transport: AiohttpTransport | None = None
        self._phases = phases_of(timeout.as_dict())
        if client is None:
            self._transport = AiohttpTransport(limits=limits)
            client = httpx.AsyncClient(timeout=timeout, transport=self._transport)
            # A TTS API is stateless: no cookie of one call rides on the next, and reading
            # Set-Cookie through http.cookiejar was a sixth of the client's CPU per call.
            setattr(client.cookies, "extract_cookies", _keep_no_cookies)  # noqa: B010
        self._client = client

    def __repr__(self) -> str:  # never the key
        return f"HttpClient(deadline_s={self.deadline_s}, auth={bool(self._auth)})"

    async def post(
        self, url: str, *, headers: Mapping[str, str] | None = None, **body: Any
    ) -> tuple[int, bytes]:
        """Status and whole body of a 2xx answer to a POST carrying ``body`` (httpx's
        ``json``, ``data``, ``files`` or ``content``); raises for everything else.

        On the client's own pool a ``json`` or ``content`` body skips httpx's request and
        response models and goes to the aiohttp session under it, with the same phase
        timeouts, errors (as httpx's) and body checks: about half the client's CPU per call
        (issue 17). Multipart forms and a client handed in go through httpx."""
        sent = {**self._auth, **(headers or {})}
        try:
            async with asyncio.timeout(self.deadline_s):
                if self._transport is not None and body.keys() <= {"json", "content"}:
                    status, answer, data = await self._direct(url, sent, body)
                else:
                    async with self._client.stream("POST", url, headers=sent, **body) as response:
                        data = await read_body(response, self._truncated)
                    status, answer = response.status_code, response.headers
        except httpx.TimeoutException as exc:
            raise transient(f"timed out: {type(exc).__name__}", "timeout") from exc
        except TimeoutError as exc:  # the overall deadline
            raise transient(
                f"timed out: no whole answer within {self.deadline_s:g} s", "timeout"
            ) from exc
        except httpx.TransportError as exc:
            raise transient(f"cannot reach {url}: {exc or type(exc).__name__}", "connect") from exc
        if _success(status):
            return status, data
        raise self._classify(status, self._describe(data), answer.get("Retry-After"))

    async def _direct(
        self, url: str, headers: dict[str, str], body: Mapping[str, Any]
    ) -> tuple[int, Mapping[str, str], bytes]:
        assert self._transport is not None
        if "json" in body:
            payload = json.dumps(body["json"], ensure_ascii=False, separators=(",", ":"))
            content: bytes = payload.encode()
            headers.setdefault("Content-Type", "application/json")
        else:
            content = body.get("content", b"")
        headers.setdefault("Accept", "*/*")
        session = self._transport.session()
        with httpx_errors():
            response = await session.post(
                url, headers=headers, data=content, allow_redirects=False, timeout=self._phases
            )
        try:
            read = _errors_as_httpx(response.read())
            data = await _whole(read, response.status, response.headers, self._truncated)
        finally:
            response.release()
        return response.status, response.headers, data

    async def get(self, url: str) -> httpx.Response | None:
        """A health route's answer, or ``None`` when there was none in time."""
        try:
            async with asyncio.timeout(self.deadline_s):
                return await self._client.get(url, headers=self._auth)
        except (httpx.HTTPError, TimeoutError):
            return None

    async def aclose(self) -> None:
        """Close the pool, unless it was handed in (then its owner closes it)."""
        if self._owns_client:
            await self._client.aclose()


class HttpBackend:
    """What the HTTP adapters share: one pool (``_http``), and ``check`` as building the
    request body, which rejects what the server cannot do before any I/O."""

    name: str
    _http: HttpClient
    _url: str

    def __repr__(self) -> str:  # never the key
        model = getattr(self, "_model", None)
        extra = "" if model is None else f", model={model!r}"
        return f"{type(self).__name__}(name={self.name!r}, url={self._url!r}{extra})"

    def _body(self, utterance: Utterance) -> Any:
        raise NotImplementedError

    def check(self, utterance: Utterance) -> None:
        self._body(utterance)

    async def aclose(self) -> None:
        await self._http.aclose()
