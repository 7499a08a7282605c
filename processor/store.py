"""The audio store seam and its S3 implementation (aioboto3)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

import botocore.exceptions

from processor import s3

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client


class AudioStore(Protocol):
    async def put(
        self, key: str, data: bytes, content_type: str, metadata: Mapping[str, str]
    ) -> str:
        """Store the object under ``key`` and return its ``s3://`` URI."""
        ...

    async def exists(self, key: str) -> bool: ...


def object_key(prefix: str, request_id: str, ext: str) -> str:
    """The contract's key. request_id is ``[A-Za-z0-9._:-]``, so it cannot add a ``/``."""
    return f"{prefix}{request_id}.{ext}"


class S3Store:
    """Puts are single PUT requests, which S3 makes visible atomically: a reader sees the
    whole object under its final key or none (no partial object)."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        max_connections: int = 16,
    ) -> None:
        self.bucket = bucket
        self._endpoint_url = endpoint_url
        self._region = region
        self._max_connections = max_connections
        self._stack = contextlib.AsyncExitStack()
        self._client: S3Client | None = None

    async def __aenter__(self) -> Self:
        self._client = await self._stack.enter_async_context(
            s3.client(self._endpoint_url, self._region, max_connections=self._max_connections)
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()
        self._client = None

    @property
    def client(self) -> S3Client:
        if self._client is None:
            raise RuntimeError("S3Store used outside its 'async with' block")
        return self._client

    async def put(
        self, key: str, data: bytes, content_type: str, metadata: Mapping[str, str]
    ) -> str:
        try:
            await self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                Metadata=dict(metadata),
            )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as exc:
            raise s3.error(exc, f"store {key}") from exc
        return f"s3://{self.bucket}/{key}"

    async def exists(self, key: str) -> bool:
        try:
            await self.client.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise s3.error(exc, f"store {key}") from exc
        return True

    async def get(self, key: str) -> tuple[bytes, dict[str, Any]]:
        """The object's bytes and its head (for tests, reconcile and reference audio)."""
        resp = await self.client.get_object(Bucket=self.bucket, Key=key)
        async with resp["Body"] as body:
            data = await body.read()
        return data, {"ContentType": resp.get("ContentType"), "Metadata": resp.get("Metadata", {})}
