"""Reference audio (clone prompts) read from S3: the ``ReferenceLoader`` the backends use.

A request names its clone prompt as ``voice.reference.audio_uri = "s3://bucket/key"``. The
producer chooses the URI, so the loader treats it as untrusted input: only buckets the operator
listed may be read, the object's size is checked before its body is downloaded, and the audio is
checked to be a usable PCM WAV before any backend sees it.

Errors (see ``processor.errors``):

* ``InvalidInput`` (``stage=validate``), dead-lettered: the request names something unusable.
  ``error_type`` is one of ``reference_not_allowed`` (not a strict ``s3://bucket/key``, or a
  bucket outside ``allowed_buckets``), ``reference_not_found``, ``reference_too_large``,
  ``reference_not_wav``, ``reference_empty``, ``reference_too_long``, ``reference_rate_too_low``.
* ``Systemic`` (``stage=store``), never dead-lettered, the record waits: the store cannot be
  read at all (connection refused, timeouts, 5xx, access denied). The stage is ``store`` rather
  than ``synthesize`` because the S3 store is what is down, not the TTS server: a per-backend
  circuit breaker must not count it against the backend.

Decisions:

* **Freshness over requests saved.** Every load (or group of concurrent loads of one URI) makes
  one HEAD for the object's ETag; the cache is keyed by URI and ETag, so an object replaced under
  the same key is read again on the very next load, with no TTL to tune. A HEAD is small next
  to a synthesis call. The ETag cached is the one the GET returned, so it names the bytes
  actually checked.
* **One download per URI at a time.** Concurrent loads of one URI share a single HEAD+GET (a
  dict of in-progress tasks); a caller cancelled while waiting does not cancel the others.
* **Bounded memory.** The cache is an LRU bounded by the total bytes of the WAVs it holds; a WAV
  bigger than the whole cache is returned but not cached.
* **Canonical WAVs.** The WAV handed to backends is rewritten with a canonical 44-byte header
  (``fix_streamed_wav``): streamed placeholder sizes are fixed, extra chunks dropped.
* Keys with ``.`` or ``..`` path segments are refused: some S3-compatible stores normalise the
  path, and ``s3://allowed/../other/key`` must not escape the allowed bucket.
* A HEAD has no body, so S3 answers a missing *bucket* with a bare 404 like a missing key: a
  listed bucket that does not exist reads as ``reference_not_found``. With AWS, grant the
  loader ``s3:ListBucket`` too, or a missing key answers 403 and reads as ``Systemic``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import re
from collections import OrderedDict
from typing import TYPE_CHECKING

from processor import s3
from processor.audio import fix_streamed_wav, wav_info
from processor.backends.base import ReferenceAudio
from processor.errors import InvalidInput, Stage, VoxlineError

if TYPE_CHECKING:
    import aioboto3
    from types_aiobotocore_s3 import S3Client

_SCHEME = "s3://"
#: S3 bucket naming rules (3-63 chars, lower-case letters, digits, dots, hyphens).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_MAX_KEY_BYTES = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclasses.dataclass(frozen=True, slots=True)
class ObjectRef:
    """Where a reference lives."""

    bucket: str
    key: str


@dataclasses.dataclass(frozen=True, slots=True)
class ReferenceLimits:
    """What makes reference audio usable."""

    max_bytes: int = 10 * 2**20
    max_duration_ms: int = 30_000
    min_sample_rate: int = 16_000

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_duration_ms", "min_sample_rate"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True, slots=True)
class LoaderStats:
    """Counters of one loader, for tests and metrics."""

    heads: int = 0
    #: GET requests made (bodies downloaded or started).
    gets: int = 0
    #: Loads answered from the cache (after a HEAD showed the object unchanged).
    cache_hits: int = 0
    #: Loads that joined a load of the same URI already in progress.
    shared: int = 0
    #: Cache entries dropped to make room.
    evictions: int = 0


def _invalid(message: str, error_type: str) -> InvalidInput:
    return InvalidInput(message, stage=Stage.VALIDATE, error_type=error_type)


def _not_allowed(uri: str, why: str) -> InvalidInput:
    return _invalid(f"reference audio_uri {uri!r}: {why}", "reference_not_allowed")


def parse_reference_uri(uri: str, allowed_buckets: frozenset[str]) -> ObjectRef:
    """The bucket and key of a strict ``s3://bucket/key`` in an allowed bucket.

    Raises ``InvalidInput`` (``reference_not_allowed``) for anything else.
    """
    if not uri.startswith(_SCHEME):
        raise _not_allowed(uri, "must be s3://bucket/key")
    bucket, slash, key = uri[len(_SCHEME) :].partition("/")
    if not slash or not key or not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise _not_allowed(uri, "must be s3://bucket/key with a valid bucket name and a key")
    if bucket not in allowed_buckets:
        allowed = ", ".join(sorted(allowed_buckets)) or "none"
        raise _not_allowed(uri, f"bucket {bucket!r} is not allowed (allowed: {allowed})")
    if _CONTROL.search(key) or len(key.encode()) > _MAX_KEY_BYTES:
        raise _not_allowed(uri, "the key has control characters or is over 1024 bytes")
    if any(part in (".", "..") for part in key.split("/")):
        raise _not_allowed(uri, "the key has '.' or '..' path segments")
    return ObjectRef(bucket, key)


def check_size(uri: str, size: int, limits: ReferenceLimits) -> None:
    """``InvalidInput`` (``reference_too_large``) for an object over ``max_bytes``."""
    if size > limits.max_bytes:
        raise _invalid(
            f"reference {uri} is {size} bytes, over the limit of {limits.max_bytes}",
            "reference_too_large",
        )


def check_reference(uri: str, data: bytes, limits: ReferenceLimits) -> ReferenceAudio:
    """The checked, canonical reference audio in ``data``; ``InvalidInput`` if unusable."""
    check_size(uri, len(data), limits)
    try:
        info = wav_info(data)
        wav = fix_streamed_wav(data)
    except ValueError as exc:
        raise _invalid(f"reference {uri} is not a PCM WAV: {exc}", "reference_not_wav") from None
    if info.frames == 0:
        raise _invalid(f"reference {uri} holds no audio", "reference_empty")
    if info.duration_ms > limits.max_duration_ms:
        raise _invalid(
            f"reference {uri} is {info.duration_ms} ms long, over the limit of "
            f"{limits.max_duration_ms} ms",
            "reference_too_long",
        )
    if info.sample_rate < limits.min_sample_rate:
        raise _invalid(
            f"reference {uri} is sampled at {info.sample_rate} Hz, under the minimum of "
            f"{limits.min_sample_rate} Hz",
            "reference_rate_too_low",
        )
    return ReferenceAudio(uri, wav, info.sample_rate, info.channels, info.duration_ms)


class ReferenceCache:
    """An LRU of checked references keyed by URI, each stored with the ETag it was read at,
    bounded by the total bytes of the WAVs it holds."""

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must not be negative, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self._entries: OrderedDict[str, tuple[str, ReferenceAudio]] = OrderedDict()
        self._bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, uri: str, etag: str) -> ReferenceAudio | None:
        """The reference if cached at this very ETag (and marks it recently used)."""
        entry = self._entries.get(uri)
        if entry is None or entry[0] != etag:
            return None
        self._entries.move_to_end(uri)
        return entry[1]

    def put(self, etag: str, audio: ReferenceAudio) -> None:
        """Cache ``audio`` at ``etag``, replacing any other version of its URI; evicts the least
        recently used until it fits. Audio bigger than the whole cache is not cached."""
        self._drop(audio.uri)
        if len(audio.wav) > self.capacity_bytes:
            return
        while self._bytes + len(audio.wav) > self.capacity_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self.evictions += 1
        self._entries[audio.uri] = (etag, audio)
        self._bytes += len(audio.wav)

    def _drop(self, uri: str) -> None:
        entry = self._entries.pop(uri, None)
        if entry is not None:
            self._bytes -= len(entry[1].wav)


def store_error(exc: Exception, uri: str) -> VoxlineError:
    """What a failed HEAD/GET means: the object is missing (``InvalidInput``), or the store is
    unusable (``Systemic``)."""
    return s3.error(
        exc,
        f"cannot read reference {uri}",
        missing=lambda: _invalid(f"reference {uri} does not exist", "reference_not_found"),
    )


class S3ReferenceLoader(s3.Connection):
    """Loads, checks and caches reference audio from S3 (see the module docstring).

    Use inside ``async with``: it opens one S3 client with a small connection pool.
    """

    def __init__(
        self,
        endpoint_url: str | None = None,
        region: str | None = None,
        *,
        allowed_buckets: frozenset[str],
        session: aioboto3.Session | None = None,
        max_bytes: int = 10 * 2**20,
        max_duration_ms: int = 30_000,
        min_sample_rate: int = 16_000,
        cache_bytes: int = 64 * 2**20,
        max_connections: int = 4,
    ) -> None:
        if isinstance(allowed_buckets, str):
            raise TypeError("allowed_buckets must be a set of bucket names, not a string")
        self.allowed_buckets = frozenset(allowed_buckets)
        self.limits = ReferenceLimits(max_bytes, max_duration_ms, min_sample_rate)
        super().__init__(
            endpoint_url,
            region,
            max_connections=max_connections,
            read_timeout=30,
            session=session,
        )
        self._cache = ReferenceCache(cache_bytes)
        self._inflight: dict[str, asyncio.Task[ReferenceAudio]] = {}
        self._stats = LoaderStats()

    async def aclose(self) -> None:
        """Cancel loads in progress and close the client."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await super().aclose()

    @property
    def stats(self) -> LoaderStats:
        """A snapshot of the counters (``evictions`` from the cache)."""
        return dataclasses.replace(self._stats, evictions=self._cache.evictions)

    @property
    def cached_bytes(self) -> int:
        return self._cache.size_bytes

    def _count(self, **fields: int) -> None:
        self._stats = dataclasses.replace(
            self._stats, **{k: getattr(self._stats, k) + v for k, v in fields.items()}
        )

    async def load(self, uri: str) -> ReferenceAudio:
        """The checked reference at ``uri`` (see the module docstring for what it raises)."""
        ref = parse_reference_uri(uri, self.allowed_buckets)
        client = self.client
        task = self._inflight.get(uri)
        if task is None:
            task = asyncio.create_task(self._fetch(client, uri, ref))
            self._inflight[uri] = task
            task.add_done_callback(functools.partial(self._forget, uri))
        else:
            self._count(shared=1)
        # Shielded: one waiter cancelled must not cancel the download the others wait for.
        return await asyncio.shield(task)

    def _forget(self, uri: str, task: asyncio.Task[ReferenceAudio]) -> None:
        if self._inflight.get(uri) is task:
            del self._inflight[uri]
        if not task.cancelled():
            task.exception()  # retrieved here in case every waiter was cancelled

    async def _fetch(self, client: S3Client, uri: str, ref: ObjectRef) -> ReferenceAudio:
        self._count(heads=1)
        try:
            head = await client.head_object(Bucket=ref.bucket, Key=ref.key)
        except s3.read_errors() as exc:
            raise store_error(exc, uri) from exc
        cached = self._cache.get(uri, head.get("ETag", ""))
        if cached is not None:
            self._count(cache_hits=1)
            return cached
        check_size(uri, head.get("ContentLength", 0), self.limits)
        etag, data = await self._get(client, uri, ref)
        audio = check_reference(uri, data, self.limits)
        self._cache.put(etag, audio)
        return audio

    async def _get(self, client: S3Client, uri: str, ref: ObjectRef) -> tuple[str, bytes]:
        """The ETag and bytes of the object; its size is checked again before the body is read
        (it may have been replaced since the HEAD)."""
        self._count(gets=1)
        try:
            resp = await client.get_object(Bucket=ref.bucket, Key=ref.key)
            body = resp["Body"]
            # Read through the StreamingBody itself, not what its ``async with`` yields (the raw
            # aiohttp response): it checks the length and maps errors to botocore's.
            async with body:
                check_size(uri, resp.get("ContentLength", 0), self.limits)
                data = await body.read()
        except s3.read_errors() as exc:
            raise store_error(exc, uri) from exc
        return resp.get("ETag", ""), data
