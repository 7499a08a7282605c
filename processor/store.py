"""The audio store seam and its S3 implementation (aioboto3)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import botocore.exceptions

from processor import s3

if TYPE_CHECKING:
    pass


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


class S3Store(s3.Connection):
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
        super().__init__(endpoint_url, region, max_connections=max_connections)
        self.bucket = bucket

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
            if exc.response.get("Error", {}).get("Code") in s3.NOT_FOUND:
                return False
            raise s3.error(exc, f"store {key}") from exc
        return True

    async def get(self, key: str) -> tuple[bytes, dict[str, Any]]:
        """The object's bytes and its head (for tests, reconcile and reference audio)."""
        resp = await self.client.get_object(Bucket=self.bucket, Key=key)
        async with resp["Body"] as body:
            data = await body.read()
        return data, {"ContentType": resp.get("ContentType"), "Metadata": resp.get("Metadata", {})}
