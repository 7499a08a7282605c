"""The audio store seam and its S3 implementation: puts, heads and gets through obstore
(``processor.objstore``, the cheaper client per call); ``client`` is the aioboto3 client for
what obstore does not offer here (the operator tools' listings)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import obstore

from processor import objstore, s3

#: What obstore raises: its own errors, and OSError subclasses (FileNotFoundError, timeouts).
_ERRORS = (obstore.exceptions.BaseError, OSError)


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
        self._objects = objstore.open_store(
            bucket, endpoint_url, region, max_connections=max_connections
        )

    async def put(
        self, key: str, data: bytes, content_type: str, metadata: Mapping[str, str]
    ) -> str:
        attributes: dict[str, str] = {**metadata, "Content-Type": content_type}
        try:
            await obstore.put_async(
                self._objects, key, data, attributes=attributes, use_multipart=False
            )
        except _ERRORS as exc:
            raise objstore.error(exc, f"store {key}") from exc
        return f"s3://{self.bucket}/{key}"

    async def exists(self, key: str) -> bool:
        try:
            await obstore.head_async(self._objects, key)
        except FileNotFoundError:
            return False
        except _ERRORS as exc:
            raise objstore.error(exc, f"store {key}") from exc
        return True

    async def get(self, key: str) -> tuple[bytes, dict[str, Any]]:
        """The object's bytes and its head (for tests, reconcile and reference audio)."""
        try:
            got = await obstore.get_async(self._objects, key)
            data = bytes(await got.bytes_async())
        except _ERRORS as exc:
            raise objstore.error(exc, f"store {key}") from exc
        attributes = dict(got.attributes)
        content_type = attributes.pop("Content-Type", None)
        for name in _STANDARD:
            attributes.pop(name, None)
        return data, {"ContentType": content_type, "Metadata": attributes}


_STANDARD = ("Content-Disposition", "Content-Encoding", "Content-Language", "Cache-Control")
