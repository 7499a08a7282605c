"""S3, once: the audio store, the reference loader and the operator tools open their client
with ``client`` (credentials from the standard AWS chain), and S3 errors become Voxline's
error tree in ``error``."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Self

import aioboto3
import botocore.exceptions
from aiobotocore.config import AioConfig

from processor.errors import Permanent, Stage, Systemic, VoxlineError

if TYPE_CHECKING:
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
    key = tuple(os.environ.get(name) for name in _SESSION_ENV)
    session = _SESSIONS.get(key)
    if session is None:
        session = _SESSIONS[key] = aioboto3.Session()
    return session


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
    if not isinstance(exc, botocore.exceptions.ClientError):
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
    if isinstance(exc, botocore.exceptions.SSLError):
        bundle = os.environ.get("AWS_CA_BUNDLE")
        trusted_by = f"AWS_CA_BUNDLE ({bundle})" if bundle else "the default CA bundle"
        cause = str(exc.kwargs.get("error", exc))
        reason = cause.split("certificate verify failed: ", 1)[-1].split(" (_ssl", 1)[0]
        return f"S3 TLS failed: the certificate of {where} is not trusted by {trusted_by}: {reason}"
    if isinstance(exc, botocore.exceptions.ClientError):
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
    is read (a record would otherwise wait for a store it can never reach)."""
    try:
        async with client(endpoint_url, region, max_connections=1, read_timeout=10) as s3:
            await s3.head_bucket(Bucket=bucket)
    except Exception as exc:
        return access_failure(exc, endpoint_url)
    return None


class Connection:
    """An S3 client held open from ``async with`` entry to exit (or ``aclose``)."""

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

    async def __aenter__(self) -> Self:
        self._client = await self._stack.enter_async_context(self._open())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._stack.aclose()
        self._client = None

    @property
    def client(self) -> S3Client:
        if self._client is None:
            raise RuntimeError(f"{type(self).__name__} used outside its 'async with' block")
        return self._client
