"""The S3 reference loader against the real S3 store: reference WAVs are uploaded under a unique
prefix of the ``voxline-refs`` bucket and read back through ``S3ReferenceLoader``. The pure
parts (URI parsing, the byte-bounded cache) are tested here too, next to their adapter."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any

import aioboto3
import botocore.exceptions
import pytest

from processor.audio import fix_streamed_wav, pcm_to_wav, wav_info
from processor.backends.base import ReferenceAudio
from processor.errors import InvalidInput, Stage, Systemic
from processor.references import (
    LoaderStats,
    ObjectRef,
    ReferenceCache,
    S3ReferenceLoader,
    parse_reference_uri,
    store_error,
)
from tests.integration.services import Services

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

pytestmark = pytest.mark.integration

BUCKET = "voxline-refs"
ALLOWED = frozenset({BUCKET})
REGION = "us-east-1"


def clip(sample_rate: int, ms: int, channels: int = 1) -> bytes:
    """A WAV of ``ms`` milliseconds of a non-silent ramp, the same in every channel."""
    frames = sample_rate * ms // 1000
    samples = (struct.pack("<h", (i * 37) % 20_000 - 10_000) * channels for i in range(frames))
    return pcm_to_wav(b"".join(samples), sample_rate, channels)


def streamed(wav: bytes) -> bytes:
    """``wav`` as a streaming writer leaves it: placeholder RIFF and data sizes."""
    return wav[:4] + b"\xff\xff\xff\xff" + wav[8:40] + b"\xff\xff\xff\xff" + wav[44:]


class Refs:
    """Uploads test objects under one unique prefix of the refs bucket."""

    def __init__(self, s3: S3Client, prefix: str) -> None:
        self.s3 = s3
        self.prefix = prefix

    async def put(self, name: str, data: bytes) -> str:
        key = f"{self.prefix}{name}"
        await self.s3.put_object(Bucket=BUCKET, Key=key, Body=data, ContentType="audio/wav")
        return f"s3://{BUCKET}/{key}"

    def uri(self, name: str) -> str:
        return f"s3://{BUCKET}/{self.prefix}{name}"


async def _ensure_bucket(s3: S3Client) -> None:
    try:
        await s3.head_bucket(Bucket=BUCKET)
    except botocore.exceptions.ClientError:
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            await s3.create_bucket(Bucket=BUCKET)


@pytest.fixture(scope="module")
def session() -> aioboto3.Session:
    """One session for the module: it caches the service model every new client loads."""
    return aioboto3.Session()


@pytest.fixture(scope="module")
async def refs(services: Services, session: aioboto3.Session) -> AsyncIterator[Refs]:
    async with session.client(
        "s3", endpoint_url=services.s3_endpoint_url, region_name=REGION
    ) as s3:
        await _ensure_bucket(s3)
        store = Refs(s3, f"tests/refs-{uuid.uuid4().hex[:8]}/")
        try:
            yield store
        finally:
            listed = await s3.list_objects_v2(Bucket=BUCKET, Prefix=store.prefix)
            for obj in listed.get("Contents", []):
                await s3.delete_object(Bucket=BUCKET, Key=obj["Key"])


def loader_for(services: Services, session: aioboto3.Session, **options: Any) -> S3ReferenceLoader:
    options.setdefault("allowed_buckets", ALLOWED)
    options.setdefault("session", session)
    return S3ReferenceLoader(services.s3_endpoint_url, REGION, **options)


@pytest.fixture
async def loader(services: Services, session: aioboto3.Session) -> AsyncIterator[S3ReferenceLoader]:
    async with loader_for(services, session) as opened:
        yield opened


async def invalid(load: Awaitable[ReferenceAudio], error_type: str) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        await load
    assert info.value.error_type == error_type, info.value
    assert info.value.stage is Stage.VALIDATE
    return info.value


# -- happy path and the cache -----------------------------------------------------------------


async def test_loads_a_checked_reference(refs: Refs, loader: S3ReferenceLoader) -> None:
    wav = clip(24_000, 1500)
    uri = await refs.put("alice.wav", wav)
    audio = await loader.load(uri)
    assert audio == ReferenceAudio(uri, wav, 24_000, 1, 1500)
    assert loader.stats == LoaderStats(heads=1, gets=1)
    assert loader.cached_bytes == len(wav)


async def test_a_streamed_wav_is_returned_canonical(refs: Refs, loader: S3ReferenceLoader) -> None:
    wav = clip(16_000, 500, channels=2)
    uri = await refs.put("streamed.wav", streamed(wav))
    audio = await loader.load(uri)
    assert audio.wav == wav == fix_streamed_wav(streamed(wav))
    assert (audio.sample_rate, audio.channels, audio.duration_ms) == (16_000, 2, 500)


async def test_a_second_load_is_a_cache_hit(refs: Refs, loader: S3ReferenceLoader) -> None:
    uri = await refs.put("cached.wav", clip(16_000, 800))
    first = await loader.load(uri)
    second = await loader.load(uri)
    assert second is first
    assert loader.stats == LoaderStats(heads=2, gets=1, cache_hits=1)


async def test_a_replaced_object_is_read_again(refs: Refs, loader: S3ReferenceLoader) -> None:
    uri = await refs.put("replaced.wav", clip(16_000, 800))
    assert (await loader.load(uri)).sample_rate == 16_000
    await refs.put("replaced.wav", clip(22_050, 800))
    again = await loader.load(uri)
    assert again.sample_rate == 22_050
    assert loader.stats.gets == 2
    assert loader.stats.cache_hits == 0
    assert (await loader.load(uri)) is again
    assert loader.cached_bytes == len(again.wav)  # the old version is gone from the cache


async def test_the_cache_is_bounded_by_bytes(
    refs: Refs, services: Services, session: aioboto3.Session
) -> None:
    a, b = clip(16_000, 1000), clip(16_000, 1000)
    uri_a, uri_b = await refs.put("lru-a.wav", a), await refs.put("lru-b.wav", b)
    async with loader_for(services, session, cache_bytes=len(a) + 100) as small:
        await small.load(uri_a)
        await small.load(uri_b)  # evicts a
        await small.load(uri_b)
        await small.load(uri_a)
        assert small.stats == LoaderStats(heads=4, gets=3, cache_hits=1, evictions=2)
        assert small.cached_bytes == len(a)


async def test_audio_bigger_than_the_cache_is_returned_uncached(
    refs: Refs, services: Services, session: aioboto3.Session
) -> None:
    uri = await refs.put("uncached.wav", clip(16_000, 300))
    async with loader_for(services, session, cache_bytes=100) as tiny:
        assert (await tiny.load(uri)).duration_ms == 300
        await tiny.load(uri)
        assert tiny.stats == LoaderStats(heads=2, gets=2)
        assert tiny.cached_bytes == 0


async def test_concurrent_loads_share_one_download(refs: Refs, loader: S3ReferenceLoader) -> None:
    uri = await refs.put("shared.wav", clip(16_000, 2000))
    results = await asyncio.gather(*(loader.load(uri) for _ in range(8)))
    assert all(r is results[0] for r in results)
    assert loader.stats == LoaderStats(heads=1, gets=1, shared=7)
    assert (await loader.load(uri)) is results[0]
    assert loader.stats.cache_hits == 1


async def test_a_cancelled_waiter_does_not_cancel_the_shared_download(
    refs: Refs, loader: S3ReferenceLoader
) -> None:
    uri = await refs.put("cancel.wav", clip(16_000, 1000))
    first = asyncio.create_task(loader.load(uri))
    second = asyncio.create_task(loader.load(uri))
    await asyncio.sleep(0)  # both are now waiting on the one download
    first.cancel()
    audio = await second
    assert audio.duration_ms == 1000
    with pytest.raises(asyncio.CancelledError):
        await first
    assert loader.stats == LoaderStats(heads=1, gets=1, shared=1)


async def test_concurrent_failures_are_shared_too(refs: Refs, loader: S3ReferenceLoader) -> None:
    uri = refs.uri("never-uploaded.wav")
    results = await asyncio.gather(*(loader.load(uri) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, InvalidInput) for r in results)
    assert loader.stats == LoaderStats(heads=1, shared=2)


# -- what the request named is unusable: InvalidInput -----------------------------------------


async def test_a_bucket_not_allowed_is_refused_before_any_request(
    loader: S3ReferenceLoader,
) -> None:
    error = await invalid(loader.load("s3://voxline-audio/x.wav"), "reference_not_allowed")
    assert "'voxline-audio'" in error.message
    assert "voxline-refs" in error.message
    assert loader.stats == LoaderStats()


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "voxline-refs/a.wav",
        "S3://voxline-refs/a.wav",
        "s3:/voxline-refs/a.wav",
        "https://127.0.0.1:8333/voxline-refs/a.wav",
        "s3://",
        "s3://voxline-refs",
        "s3://voxline-refs/",
        "s3:///a.wav",
        "s3://Voxline-Refs/a.wav",
        "s3://voxline-refs:8333/a.wav",
        "s3://user@voxline-refs/a.wav",
        "s3://voxline-refs/../voxline-audio/a.wav",
        "s3://voxline-refs/a/./b.wav",
        "s3://voxline-refs/a/..",
        "s3://voxline-refs/a\nb.wav",
        "s3://voxline-refs/a\x00.wav",
        "s3://voxline-refs/" + "k" * 1025,
    ],
)
async def test_anything_but_a_strict_s3_uri_is_refused(uri: str, loader: S3ReferenceLoader) -> None:
    await invalid(loader.load(uri), "reference_not_allowed")
    assert loader.stats == LoaderStats()


async def test_a_missing_key(refs: Refs, loader: S3ReferenceLoader) -> None:
    error = await invalid(loader.load(refs.uri("missing.wav")), "reference_not_found")
    assert "missing.wav" in error.message


async def test_too_large_is_refused_before_the_body_is_read(
    refs: Refs, services: Services, session: aioboto3.Session
) -> None:
    uri = await refs.put("large.wav", clip(16_000, 1000))
    async with loader_for(services, session, max_bytes=10_000) as small:
        error = await invalid(small.load(uri), "reference_too_large")
        assert "32044 bytes" in error.message
        assert small.stats == LoaderStats(heads=1, gets=0)


async def test_not_a_wav(refs: Refs, loader: S3ReferenceLoader) -> None:
    uri = await refs.put("song.mp3", b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb" * 500)
    await invalid(loader.load(uri), "reference_not_wav")


async def test_a_float_wav_is_not_a_pcm_wav(refs: Refs, loader: S3ReferenceLoader) -> None:
    wav = bytearray(clip(16_000, 100))
    wav[20:22] = (3).to_bytes(2, "little")  # WAVE_FORMAT_IEEE_FLOAT
    uri = await refs.put("float.wav", bytes(wav))
    error = await invalid(loader.load(uri), "reference_not_wav")
    assert "0x0003" in error.message


async def test_a_truncated_wav(refs: Refs, loader: S3ReferenceLoader) -> None:
    uri = await refs.put("truncated.wav", clip(16_000, 100)[:-1001])
    await invalid(loader.load(uri), "reference_not_wav")


async def test_an_empty_wav(refs: Refs, loader: S3ReferenceLoader) -> None:
    uri = await refs.put("empty.wav", pcm_to_wav(b"", 16_000))
    await invalid(loader.load(uri), "reference_empty")


async def test_too_long(refs: Refs, loader: S3ReferenceLoader) -> None:
    limit = await refs.put("30s.wav", clip(16_000, 30_000))
    assert (await loader.load(limit)).duration_ms == 30_000
    over = await refs.put("30s-and-a-bit.wav", clip(16_000, 30_010))
    error = await invalid(loader.load(over), "reference_too_long")
    assert "30010 ms" in error.message


async def test_rate_too_low(refs: Refs, loader: S3ReferenceLoader) -> None:
    uri = await refs.put("phone.wav", clip(8_000, 1000))
    error = await invalid(loader.load(uri), "reference_rate_too_low")
    assert "8000 Hz" in error.message


async def test_invalid_references_are_not_cached(refs: Refs, loader: S3ReferenceLoader) -> None:
    uri = await refs.put("fixed-later.wav", clip(8_000, 500))
    await invalid(loader.load(uri), "reference_rate_too_low")
    await refs.put("fixed-later.wav", clip(16_000, 500))
    assert (await loader.load(uri)).sample_rate == 16_000


# -- the store is unusable: Systemic ----------------------------------------------------------


async def test_an_unreachable_store_is_systemic(refs: Refs, session: aioboto3.Session) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with S3ReferenceLoader(
        f"http://127.0.0.1:{port}", REGION, allowed_buckets=ALLOWED, session=session
    ) as down:
        with pytest.raises(Systemic) as info:
            await down.load(refs.uri("any.wav"))
    assert info.value.stage is Stage.STORE
    assert info.value.error_type == "s3_unreachable"


async def test_wrong_credentials_are_systemic(refs: Refs, services: Services) -> None:
    uri = await refs.put("denied.wav", clip(16_000, 100))
    wrong = aioboto3.Session(
        aws_access_key_id="not-voxline", aws_secret_access_key="wrong", region_name=REGION
    )
    async with loader_for(services, wrong) as denied:
        with pytest.raises(Systemic) as info:
            await denied.load(uri)
    assert info.value.stage is Stage.STORE
    assert info.value.http_status == 403


async def test_load_outside_async_with_is_a_bug(
    services: Services, session: aioboto3.Session
) -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await loader_for(services, session).load(f"s3://{BUCKET}/a.wav")


def test_allowed_buckets_must_not_be_a_string() -> None:
    with pytest.raises(TypeError):
        S3ReferenceLoader(allowed_buckets=BUCKET)  # type: ignore[arg-type]


# -- the pure parts ---------------------------------------------------------------------------


def client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return botocore.exceptions.ClientError(response, "HeadObject")


@pytest.mark.parametrize(
    "exc", [client_error("404", 404), client_error("NoSuchKey", 404), client_error("", 404)]
)
def test_a_missing_object_is_the_requests_own_invalid_input(exc: Exception) -> None:
    error = store_error(exc, "s3://voxline-refs/gone.wav")

    assert isinstance(error, InvalidInput)
    assert (error.stage, error.error_type) == (Stage.VALIDATE, "reference_not_found")
    assert "s3://voxline-refs/gone.wav does not exist" in error.message


@pytest.mark.parametrize(
    ("exc", "error_type", "status"),
    [
        (client_error("AccessDenied", 403), "s3_AccessDenied", 403),
        (client_error("SlowDown", 503), "s3_SlowDown", 503),
        (ConnectionRefusedError(111, "Connection refused"), "s3_unreachable", None),
        (TimeoutError(), "s3_unreachable", None),
        (
            botocore.exceptions.EndpointConnectionError(endpoint_url="http://s3"),
            "s3_unreachable",
            None,
        ),
    ],
)
def test_an_unusable_store_is_systemic_at_the_store_stage(
    exc: Exception, error_type: str, status: int | None
) -> None:
    error = store_error(exc, "s3://voxline-refs/a.wav")

    assert isinstance(error, Systemic)
    assert (error.stage, error.error_type, error.http_status) == (Stage.STORE, error_type, status)


def test_parse_reference_uri() -> None:
    assert parse_reference_uri("s3://voxline-refs/a/b c.wav", ALLOWED) == ObjectRef(
        BUCKET, "a/b c.wav"
    )
    assert parse_reference_uri("s3://voxline-refs/a//b?x#y", ALLOWED).key == "a//b?x#y"
    assert parse_reference_uri("s3://voxline-refs/..a/b..", ALLOWED).key == "..a/b.."


def test_no_allowed_buckets_says_so() -> None:
    with pytest.raises(InvalidInput, match=r"allowed: none"):
        parse_reference_uri("s3://voxline-refs/a.wav", frozenset())


def audio(uri: str, size: int) -> ReferenceAudio:
    return ReferenceAudio(uri, b"\x00" * size, 16_000, 1, 1)


def test_cache_hits_only_at_the_same_etag() -> None:
    cache = ReferenceCache(100)
    cache.put("e1", audio("a", 10))
    assert cache.get("a", "e1") == audio("a", 10)
    assert cache.get("a", "e2") is None
    assert cache.get("b", "e1") is None
    cache.put("e2", audio("a", 20))
    assert cache.get("a", "e1") is None
    assert len(cache) == 1
    assert cache.size_bytes == 20


def test_cache_evicts_the_least_recently_used() -> None:
    cache = ReferenceCache(30)
    for name in "abc":
        cache.put("e", audio(name, 10))
    cache.get("a", "e")  # a is now the most recent
    cache.put("e", audio("d", 10))
    assert cache.get("b", "e") is None
    assert [n for n in "acd" if cache.get(n, "e")] == ["a", "c", "d"]
    cache.put("e", audio("big", 25))
    assert cache.size_bytes == 25
    assert len(cache) == 1
    assert cache.evictions == 4


def test_cache_keeps_nothing_bigger_than_itself() -> None:
    cache = ReferenceCache(10)
    cache.put("e", audio("a", 5))
    cache.put("e", audio("huge", 11))
    assert cache.get("huge", "e") is None
    assert cache.get("a", "e") is not None
    cache.put("e", audio("a", 11))  # a bigger new version drops the old one
    assert len(cache) == 0
    assert cache.size_bytes == 0
    with pytest.raises(ValueError, match="capacity_bytes"):
        ReferenceCache(-1)


def test_the_test_clips_are_what_they_say() -> None:
    info = wav_info(clip(16_000, 1000, channels=2))
    assert (info.sample_rate, info.channels, info.duration_ms) == (16_000, 2, 1000)
