"""S3, once: the audio store, the reference loader and the operator tools open their client
with ``client`` (credentials from the standard AWS chain), and S3 errors become Voxline's
error tree in ``error``.

aioboto3 is imported, and a ``Connection``'s client opened, only when first used: botocore's
S3 model weighs about 13 MiB, and a processor whose requests name no reference, lexicon or
cache never needs it (the audio upload goes through ``processor.objstore``)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, Self, cast

from processor.errors import Permanent, Stage, Systemic, VoxlineError

if TYPE_CHECKING:
    import aioboto3
    from types_aiobotocore_s3 import S3Client


def client(
    endpoint_url: str | None,
    region: str | None,
    *,
    max_connections: int = 16,
    read_timeout: float = 60,
    session: aioboto3.Session | None = None,
) -> contextlib.AbstractAsyncContextManager[S3Client]:
    """An S3 client (an async context manager) with bounded connections, two tries per call
    (the callers decide about more), and timeouts that never leave a call hanging."""
    from aiobotocore.config import AioConfig

    config = AioConfig(
        max_pool_connections=max_connections,
        retries={"max_attempts": 2, "mode": "standard"},
        connect_timeout=5,
        read_timeout=read_timeout,
    )
    return (session or shared_session()).client(
        "s3", endpoint_url=endpoint_url, region_name=region, config=config
    )


#: What a session resolves once and keeps (credentials, profile, CA bundle, region).
_SESSION_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CA_BUNDLE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)
_SESSIONS: dict[tuple[str | None, ...], aioboto3.Session] = {}


def shared_session() -> aioboto3.Session:
    """One aioboto3 session for every client of the process (the store, references,
    lexicons, the cache, the start-up check): each session loads botocore's S3 model anew,
    about 13 MiB, where another client on the same session costs about 1 MiB. A change of
    the AWS environment (tests, a rotated key) gets a session of its own."""
    import aioboto3

    key = tuple(os.environ.get(name) for name in _SESSION_ENV)
    session = _SESSIONS.get(key)
    if session is None:
        session = _SESSIONS[key] = aioboto3.Session()
    return session


def _botocore() -> ModuleType | None:
    """``botocore.exceptions`` once something imported it: before that, no exception can be
    one of botocore's."""
    return sys.modules.get("botocore.exceptions")


def read_errors() -> tuple[type[Exception], ...]:
    """What a call through an aioboto3 client may raise. A function, so that botocore is
    imported only once a client was opened (``except s3.read_errors() as exc``)."""
    import aiohttp
    import botocore.exceptions

    return (
        botocore.exceptions.BotoCoreError,
        botocore.exceptions.ClientError,
        OSError,
        asyncio.TimeoutError,
        aiohttp.ClientError,
    )


def not_found(exc: BaseException) -> bool:
    """``exc`` is botocore's answer that the object is not there."""
    botocore = _botocore()
    if botocore is None or not isinstance(exc, botocore.ClientError):
        return False
    return exc.response.get("Error", {}).get("Code") in NOT_FOUND


#: S3 error codes that mean the object is not there.
NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
#: S3 error codes about this object, not the store: retrying cannot help.
PER_OBJECT = frozenset({"EntityTooLarge", "InvalidArgument", "KeyTooLongError"})


def error(
    exc: Exception, what: str, *, missing: Callable[[], VoxlineError] | None = None
) -> VoxlineError:
    """The one translation of S3 client errors: a missing object is ``missing()`` (when the
    caller says what that means), a rejected object ``Permanent``, anything else about the
    store ``Systemic`` (down, unauthorised: the record waits)."""
    botocore = _botocore()
    if botocore is None or not isinstance(exc, botocore.ClientError):
        return Systemic(
            f"{what}: store unreachable: {type(exc).__name__}: {exc}",
            stage=Stage.STORE,
            error_type="s3_unreachable",
        )
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if missing is not None and (code in NOT_FOUND or status == 404):
        return missing()
    kind = Permanent if code in PER_OBJECT else Systemic
    return kind(
        f"{what}: {code or exc}",
        stage=Stage.STORE,
        http_status=status,
        error_type=f"s3_{code or 'error'}",
    )


#: S3 error codes that mean the credentials are wrong (not this object, not an outage).
BAD_CREDENTIALS = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"})


def access_failure(exc: Exception, endpoint_url: str | None) -> str | None:
    """One line for a store that cannot be used as configured: its TLS certificate is not
    trusted, or it refuses the credentials. None for anything else (an outage waits)."""
    where = endpoint_url or "the AWS S3 endpoint"
    botocore = _botocore()
    if botocore is None:
        return None
    if isinstance(exc, botocore.SSLError):
        bundle = os.environ.get("AWS_CA_BUNDLE")
        trusted_by = f"AWS_CA_BUNDLE ({bundle})" if bundle else "the default CA bundle"
        cause = str(exc.kwargs.get("error", exc))
        reason = cause.split("certificate verify failed: ", 1)[-1].split(" (_ssl", 1)[0]
        return f"S3 TLS failed: the certificate of {where} is not trusted by {trusted_by}: {reason}"
    if isinstance(exc, botocore.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in BAD_CREDENTIALS or status == 403:
            return (
                f"S3 refused access at {where} ({code or status}): check AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or the profile or role the AWS chain found) and what "
                "they may do on the bucket"
            )
    return None


async def check(endpoint_url: str | None, region: str | None, bucket: str) -> str | None:
    """``access_failure`` of one ``head_bucket``: what a start-up can say before any record
    is read (a record would otherwise wait for a store it can never reach). A HEAD through
    obstore answers first; only when it fails does aioboto3 ask again, to word the cause."""
    if await _answers(endpoint_url, region, bucket):
        return None
    try:
        async with client(endpoint_url, region, max_connections=1, read_timeout=10) as s3:
            await s3.head_bucket(Bucket=bucket)
    except Exception as exc:
        return access_failure(exc, endpoint_url)
    return None


async def _answers(endpoint_url: str | None, region: str | None, bucket: str) -> bool:
    """The store answers a HEAD in ``bucket`` with these credentials and this CA (a missing
    object or bucket is an answer: only TLS and credentials stop a start)."""
    import obstore

    from processor import objstore

    try:
        store = objstore.open_store(
            bucket, endpoint_url, region, max_connections=1, read_timeout=10
        )
        await obstore.head_async(store, ".voxline-start-check")
    except FileNotFoundError:
        return True
    except Exception:
        return False
    return True


class Connection:
    """An S3 client for the ``async with`` block (or until ``aclose``), opened on first use."""

    def __init__(
        self,
        endpoint_url: str | None,
        region: str | None,
        *,
        max_connections: int = 16,
        read_timeout: float = 60,
        session: aioboto3.Session | None = None,
    ) -> None:
        self._open = functools.partial(
            client,
            endpoint_url,
            region,
            max_connections=max_connections,
            read_timeout=read_timeout,
            session=session,
        )
        self._stack = contextlib.AsyncExitStack()
        self._client: S3Client | None = None
        self._entered = False
        self._opening = asyncio.Lock()

    async def __aenter__(self) -> Self:
        self._entered = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._stack.aclose()
        self._client = None
        self._entered = False

    async def opened(self) -> S3Client:
        """The client, opened now if this is its first use."""
        async with self._opening:
            if self._client is None:
                self._client = await self._stack.enter_async_context(self._open())
        return self._client

    @property
    def client(self) -> S3Client:
        """The client; until its first call opens it, a stand-in whose calls open it."""
        if not self._entered:
            raise RuntimeError(f"{type(self).__name__} used outside its 'async with' block")
        if self._client is not None:
            return self._client
        return cast("S3Client", _Unopened(self.opened))


class _Unopened:
    """Calls on a client not yet opened: each opens it first (paginators too)."""

    def __init__(self, opened: Callable[[], Awaitable[Any]]) -> None:
        self._opened = opened

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name == "get_paginator":
            return functools.partial(_Pages, self._opened)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await getattr(await self._opened(), name)(*args, **kwargs)

        return call


class _Pages:
    def __init__(self, opened: Callable[[], Awaitable[Any]], operation: str) -> None:
        self._opened, self._operation = opened, operation

    async def paginate(self, **kwargs: Any) -> AsyncIterator[Any]:
        paginator = (await self._opened()).get_paginator(self._operation)
        async for page in paginator.paginate(**kwargs):
            yield page
