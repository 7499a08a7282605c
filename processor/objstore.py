"""The audio upload's S3 client: obstore (Rust's ``object_store``), chosen by measurement
(issue 17: a 100 KB PUT costs about 0.5 ms of client CPU against aioboto3's 2.3 ms on this
machine). The same settings as ``processor.s3``: the endpoint (path-style addressing), the
region, the credentials of the standard AWS environment variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``; a profile or SSO login through boto3's chain
when no keys are set), and ``AWS_CA_BUNDLE`` as an extra trusted CA for an HTTPS endpoint.
Its errors become Voxline's error tree in ``error``, with the same error types as
``processor.s3.error`` (``s3_unreachable``, ``s3_<Code>``)."""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from obstore.exceptions import BaseError, PermissionDeniedError, UnauthenticatedError
from obstore.store import S3Store

from processor.errors import Permanent, Stage, Systemic, VoxlineError
from processor.s3 import NOT_FOUND, PER_OBJECT

if TYPE_CHECKING:
    from obstore.store import ClientConfig, S3Credential

__all__ = ["S3Store", "error", "open_store"]

_STATUS = re.compile(r"non-2xx status code: (\d{3})")
_CODE = re.compile(r"<Code>([A-Za-z0-9.]+)</Code>")
#: Keys of the standard chain that obstore reads itself from the environment.
_ENV_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
)


def open_store(
    bucket: str,
    endpoint_url: str | None,
    region: str | None,
    *,
    max_connections: int = 16,
    read_timeout: float = 60,
) -> S3Store:
    """An obstore S3 client for ``bucket``: path-style at ``endpoint_url`` (virtual-hosted
    AWS without one), one retry per call, bounded connect and request times."""
    options: ClientConfig = {
        "connect_timeout": dt.timedelta(seconds=5),
        "timeout": dt.timedelta(seconds=read_timeout),
        "pool_max_idle_per_host": str(max_connections),
    }
    if endpoint_url is not None and endpoint_url.startswith("http://"):
        options["allow_http"] = True
    bundle = os.environ.get("AWS_CA_BUNDLE")
    if bundle:
        options["root_certificate"] = Path(bundle).read_bytes()
    kwargs: dict[str, Any] = {}
    if endpoint_url is not None:
        kwargs["endpoint"] = endpoint_url
    credentials = _profile_credentials()
    if credentials is not None:
        kwargs["credential_provider"] = credentials
    return S3Store(
        bucket,
        region=region or os.environ.get("AWS_REGION") or "us-east-1",
        client_options=options,
        retry_config={"max_retries": 1, "retry_timeout": dt.timedelta(seconds=read_timeout)},
        **kwargs,
    )


def _profile_credentials() -> Callable[[], S3Credential] | None:
    """boto3's chain (profiles, SSO, ``credential_process``) when the environment names no
    credentials obstore reads itself; imported only then (botocore weighs tens of MiB)."""
    if any(os.environ.get(key) for key in _ENV_KEYS):
        return None
    config = Path(os.environ.get("AWS_CONFIG_FILE", "~/.aws/config")).expanduser()
    shared = Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"))
    if not (os.environ.get("AWS_PROFILE") or config.exists() or shared.expanduser().exists()):
        return None  # instance or task role: obstore asks the metadata endpoints itself
    import boto3  # type: ignore[import-untyped]
    from obstore.auth.boto3 import Boto3CredentialProvider

    provider: Callable[[], S3Credential] = Boto3CredentialProvider(boto3.Session())
    return provider


def error(
    exc: Exception, what: str, *, missing: Callable[[], VoxlineError] | None = None
) -> VoxlineError:
    """As ``processor.s3.error``: a missing object is ``missing()`` (when the caller says what
    that means), a rejected object ``Permanent``, anything else ``Systemic``."""
    text = str(exc).split("\n\nDebug source", 1)[0]
    status_match = _STATUS.search(text)
    if status_match is None and not isinstance(exc, FileNotFoundError):
        return Systemic(
            f"{what}: store unreachable: {type(exc).__name__}: {_clip(text)}",
            stage=Stage.STORE,
            error_type="s3_unreachable",
        )
    status = int(status_match.group(1)) if status_match else 404
    code_match = _CODE.search(text)
    code = code_match.group(1) if code_match else _code_of(exc, status)
    if missing is not None and (code in NOT_FOUND or status == 404):
        return missing()
    kind = Permanent if code in PER_OBJECT else Systemic
    return kind(f"{what}: {code}", stage=Stage.STORE, http_status=status, error_type=f"s3_{code}")


def _code_of(exc: Exception, status: int) -> str:
    if isinstance(exc, FileNotFoundError) or status == 404:
        return "NotFound"
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError) or status == 403:
        return "AccessDenied"
    return str(status) if isinstance(exc, BaseError) else "error"


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
