"""The chunk cache: a chunk's audio looked up by :mod:`processor.cache_key` before the backend
is called, and written after.

Rules (README, "Chunk cache"):

- ``cache: "use"`` (the default) looks up, then synthesizes and writes on a miss;
  ``"refresh"`` synthesizes and overwrites; ``"bypass"`` neither reads nor writes.
- An object's metadata carries the SHA-256 and length of its bytes; an object that does not
  match (corrupt, truncated) or is not a WAV is ignored, counted, and rewritten.
- A store that fails or is slower than ``lookup_timeout_s`` makes the lookup a miss, never a
  hold; a failed write is logged and counted, never fatal.
- Identical chunks in flight at the same time in this process are synthesized once
  (single-flight): the others wait for the first and share its audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence

import structlog

from processor.audio import wav_info
from processor.backends.base import Audio, Utterance
from processor.cache_bundle import bundle_name, pack, unpack
from processor.cache_key import cacheable, chunk_key, object_name
from processor.cache_store import CacheStore, S3CacheStore
from processor.config import BackendConfig
from processor.held import FOLLOWED
from processor.observability import Metrics
from processor.settings import CacheSettings, Settings

log = structlog.get_logger("voxline.cache")

MODES = ("use", "refresh", "bypass")
#: Seconds a cache write may take; past it the write is abandoned (and counted as failed).
WRITE_TIMEOUT_S = 10.0
#: Store failures in a row after which the cache is skipped (every lookup a miss, no writes)
#: for ``SKIP_S`` seconds, so a store that is down costs no record a timeout per chunk.
FAILURES_TO_SKIP = 3
SKIP_S = 5.0
#: Seconds the writes still in flight get when the processor stops (short: the drain budget
#: is for records, and a lost write only costs a later backend call).
SETTLE_S = 0.5


def audio_of(data: bytes) -> Audio:
    """A cached chunk's WAV bytes as ``Audio`` (``ValueError`` when it is no WAV)."""
    info = wav_info(data)
    return Audio(data, "wav", info.sample_rate, info.channels, info.duration_ms)


def intact(data: bytes, metadata: dict[str, str]) -> bool:
    """Whether the object's bytes match its integrity metadata."""
    return (
        metadata.get("bytes") == str(len(data))
        and metadata.get("sha256") == hashlib.sha256(data).hexdigest()
    )


class ChunkCache:
    def __init__(
        self,
        store: CacheStore,
        settings: CacheSettings,
        metrics: Metrics,
        *,
        slots: int = 16,
        gate: str = "unchecked",
    ) -> None:
        self.store = store
        #: What the quality gate said of the chunks this cache writes: "passed" when it is on
        #: (a chunk is written only once the gate passed it), "unchecked" when it is off.
        self.gate = gate
        self.settings = settings
        self.metrics = metrics
        #: Chunks being made, and whether another record waits for one (``held.FOLLOWED``).
        self._flights: dict[str, tuple[asyncio.Future[Audio], asyncio.Event]] = {}
        #: Writes that outlive their chunk's task (held so they are not garbage-collected).
        self._writes: set[asyncio.Future[None]] = set()
        #: Store calls at once (the client's connections): the timeouts then bound a call to
        #: the store, not the wait for a connection behind a burst of lookups.
        self._slots = asyncio.Semaphore(slots)
        self._failures = 0
        self._skip_until = 0.0

    def _skipping(self) -> bool:
        return time.monotonic() < self._skip_until

    def _failed(self) -> None:
        self._failures += 1
        if self._failures >= FAILURES_TO_SKIP:
            self._failures = 0
            self._skip_until = time.monotonic() + SKIP_S
            log.warning("chunk cache skipped: the store keeps failing", seconds=SKIP_S)

    def fine(self, conf: BackendConfig, call: Utterance, mode: str) -> bool:
        """Whether a request's chunks go to the cache (then they are cut one sentence each)."""
        return mode != "bypass" and cacheable(conf, call, unseeded=self.settings.unseeded)

    def key(self, conf: BackendConfig, call: Utterance, mode: str) -> str | None:
        """The object name of ``call``'s chunk, or None when the cache must not serve it."""
        if mode == "bypass" or not cacheable(conf, call, unseeded=self.settings.unseeded):
            self.metrics.cache("lookup", "uncacheable" if mode != "bypass" else "bypass")
            return None
        return object_name(self.settings.prefix, chunk_key(conf, call))

    async def through(
        self, key: str, mode: str, make: Callable[[], Awaitable[Audio]]
    ) -> tuple[Audio, bool]:
        """The chunk's audio and whether it came without a backend call (a hit, or another
        task's call for the same chunk)."""
        if mode == "refresh":
            audio = await make()
            await self._kept(self.write(key, audio))
            return audio, False
        while (entry := self._flights.get(key)) is not None:
            flight, followed = entry
            followed.set()  # its maker stops waiting for room: we may hold some
            await asyncio.wait({flight})
            if not flight.cancelled():
                self.metrics.cache("lookup", "shared")
                return flight.result(), True
            # The first caller failed or was cancelled: the next one tries itself.
        mine: asyncio.Future[Audio] = asyncio.get_running_loop().create_future()
        followed = asyncio.Event()
        self._flights[key] = (mine, followed)
        try:
            hit = await self.lookup(key)
            if hit is not None:
                mine.set_result(hit)
                return hit, True
            token = FOLLOWED.set(followed)
            try:
                audio = await make()
            finally:
                FOLLOWED.reset(token)
            mine.set_result(audio)
            await self._kept(self.write(key, audio))
            return audio, False
        finally:
            if not mine.done():
                mine.cancel()  # the waiters try on their own; no exception left unretrieved
            if self._flights.get(key, (None,))[0] is mine:
                del self._flights[key]

    async def bundled(self, keys: Sequence[str], mode: str) -> dict[str, Audio]:
        """The chunks of ``keys`` found in the request's bundle (``processor.cache_bundle``):
        every one when the request was seen before, all but the edited ones after an edit."""
        if mode != "use" or len(keys) < 2:
            return {}
        name = bundle_name(self.settings.prefix, keys)
        data = await self._fetch(name, "bundle")
        if data is None:
            return {}
        try:
            parts = unpack(data)
            found = {key: audio_of(parts[key]) for key in set(keys) if key in parts}
        except (ValueError, TypeError) as exc:
            self.metrics.cache("bundle", "corrupt")
            log.warning("cache bundle is malformed; ignored", key=name, error=repr(exc))
            return {}
        whole = len(found) == len(set(keys))
        self.metrics.cache("bundle", "hit" if whole else "partial" if found else "stale")
        return found

    async def keep_bundle(self, keys: Sequence[str], parts: Sequence[Audio], mode: str) -> None:
        """Write the request's bundle (its chunks in order), as a chunk is written."""
        if mode == "bypass" or len(keys) < 2:
            return
        data = pack(keys, [part.data for part in parts])
        await self._kept(self._put(bundle_name(self.settings.prefix, keys), data, "bundle_write"))

    async def _kept(self, write: Coroutine[None, None, None]) -> None:
        """Finish ``write``; if the chunk's task is cancelled meanwhile (a sibling chunk failed),
        the write still finishes, so a replay of the record does not pay for this chunk again."""
        done = asyncio.ensure_future(write)
        self._writes.add(done)
        done.add_done_callback(self._writes.discard)
        await asyncio.shield(done)

    async def settle(self, timeout: float) -> None:
        """Let writes still in flight finish, for at most ``timeout`` seconds (on the way out)."""
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=timeout)

    async def lookup(self, key: str) -> Audio | None:
        """The cached chunk, or None: missing, corrupt, or the store failing or slow."""
        data = await self._fetch(key, "lookup")
        if data is None:
            return None
        try:
            audio = audio_of(data)
        except ValueError:
            self.metrics.cache("lookup", "corrupt")
            log.warning("cache object is not a WAV; ignored", key=key)
            return None
        self.metrics.cache("lookup", "hit")
        return audio

    async def _fetch(self, key: str, op: str) -> bytes | None:
        """The object's bytes if they match its integrity metadata; None when it is missing or
        corrupt or the store fails or is slow (each counted under ``op``)."""
        async with self._slots:
            if self._skipping():
                self.metrics.cache(op, "skipped")
                return None
            try:
                read = self.store.read(key)
                found = await asyncio.wait_for(read, self.settings.lookup_timeout_s)
            except Exception as exc:  # any store trouble is a miss, never a hold
                self._failed()
                self.metrics.cache(op, "error")
                log.warning("cache lookup failed; a miss", key=key, error=repr(exc))
                return None
        self._failures = 0
        if found is None:
            self.metrics.cache(op, "miss")
            return None
        data, metadata = found
        if not intact(data, dict(metadata)):
            self.metrics.cache(op, "corrupt")
            log.warning("cache object fails its integrity check; ignored", key=key)
            return None
        return data

    async def write(self, key: str, audio: Audio) -> None:
        """Store the chunk with its integrity metadata; a failure is logged and counted."""
        await self._put(key, audio.data, "write")

    async def _put(self, key: str, data: bytes, op: str) -> None:
        metadata = {
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": str(len(data)),
            "gate": self.gate,
        }
        async with self._slots:
            if self._skipping():
                self.metrics.cache(op, "skipped")
                return
            try:
                put = self.store.write(key, data, metadata)
                await asyncio.wait_for(put, WRITE_TIMEOUT_S)
            except Exception as exc:
                self._failed()
                self.metrics.cache(op, "failed")
                log.warning("cache write failed", key=key, error=repr(exc))
                return
        self._failures = 0
        self.metrics.cache(op, "ok")


@contextlib.asynccontextmanager
async def open_cache(settings: Settings, metrics: Metrics) -> AsyncIterator[ChunkCache | None]:
    """The chunk cache the settings ask for (None when it is off), open for the block."""
    conf = settings.cache
    if not conf.enabled:
        yield None
        return
    store = S3CacheStore(
        conf.bucket or settings.store.bucket,
        conf.prefix,
        endpoint_url=settings.store.endpoint_url,
        region=settings.store.region,
        max_connections=max(16, settings.backends.record_window),
    )
    async with store:
        gate = "passed" if settings.backends.quality.enabled else "unchecked"
        slots = max(16, settings.backends.record_window)
        cache = ChunkCache(store, conf, metrics, slots=slots, gate=gate)
        try:
            yield cache
        finally:
            await cache.settle(SETTLE_S)
