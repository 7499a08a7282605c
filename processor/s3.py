"""One way to open an S3 client: the audio store, the reference loader and the operator tools
all connect through ``client``. Credentials come from the standard AWS chain."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import aioboto3
from aiobotocore.config import AioConfig

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
    return (session or aioboto3.Session()).client(
        "s3", endpoint_url=endpoint_url, region_name=region, config=config
    )
