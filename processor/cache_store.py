"""The chunk cache's objects in S3: read one with its metadata, write one, list and delete
(for ``voxline cache stats`` and ``prune``)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from processor import s3

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import ObjectIdentifierTypeDef


@dataclasses.dataclass(frozen=True, slots=True)
class CachedObject:
    key: str
    size: int
    last_modified: dt.datetime


class CacheStore(Protocol):
    async def read(self, key: str) -> tuple[bytes, Mapping[str, str]] | None:
        """The object's bytes and metadata, or None when there is none."""
        ...

    async def write(self, key: str, data: bytes, metadata: Mapping[str, str]) -> None: ...


class S3CacheStore(s3.Connection):
    """Cached chunks under ``prefix`` in ``bucket``. Errors are raised as they come: the
    cache decides that a store error is a miss."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        max_connections: int = 16,
        read_timeout: float = 10,
    ) -> None:
        super().__init__(
            endpoint_url, region, max_connections=max_connections, read_timeout=read_timeout
        )
        self.bucket = bucket
        self.prefix = prefix

    async def read(self, key: str) -> tuple[bytes, Mapping[str, str]] | None:
        try:
            resp = await self.client.get_object(Bucket=self.bucket, Key=key)
        except s3.read_errors() as exc:
            if s3.not_found(exc):
                return None
            raise
        async with resp["Body"] as body:
            data = await body.read()
        return data, dict(resp.get("Metadata", {}))

    async def write(self, key: str, data: bytes, metadata: Mapping[str, str]) -> None:
        await self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=data,
            ContentType="audio/wav" if key.endswith(".wav") else "application/octet-stream",
            Metadata=dict(metadata),
        )

    async def objects(self) -> AsyncIterator[CachedObject]:
        """Every cached chunk under the prefix."""
        paginator = self.client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                yield CachedObject(item["Key"], item["Size"], item["LastModified"])

    async def delete(self, keys: Sequence[str]) -> None:
        """Delete ``keys`` (at most 1000 per request, as S3 allows)."""
        for start in range(0, len(keys), 1000):
            batch: list[ObjectIdentifierTypeDef] = [{"Key": k} for k in keys[start : start + 1000]]
            await self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
            )
