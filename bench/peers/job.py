"""The job every peer does for one request, written plainly: POST the text to the
OpenAI-compatible backend (httpx), PUT the audio to S3 (aioboto3), publish a completion event.

Transient backend failures (429, 5xx, connection errors) are retried with exponential backoff
and jitter, five attempts, as a careful author would; a request that still fails gets a failed
event, so every request ends with exactly one event, as with Voxline. Events are compact JSON
with the same ``"status":"succeeded"`` spelling as Voxline's, which the benchmark counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import random
import wave
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

import aioboto3
import httpx
from aiobotocore.config import AioConfig

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

ATTEMPTS = 5
RETRIABLE = frozenset({408, 425, 429, 500, 502, 503, 504})
#: topic, key, value -> awaits the broker's acknowledgement
Publish = Callable[[str, bytes, bytes], Awaitable[object]]


@dataclasses.dataclass(frozen=True)
class PeerSettings:
    """The subset of ``voxline run``'s environment the peers understand."""

    bootstrap_servers: str
    group_id: str
    request_topic: str
    completion_topic: str
    backend_url: str
    window: int
    s3_endpoint_url: str | None
    bucket: str
    prefix: str
    region: str | None
    #: Partitions of the request topic (FastStream's concurrency is bounded by them).
    partitions: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PeerSettings:
        e = os.environ if env is None else env
        return cls(
            bootstrap_servers=e.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
            group_id=e.get("VOXLINE_GROUP_ID", "peer"),
            request_topic=e.get("VOXLINE_REQUEST_TOPIC", "tts.requests"),
            completion_topic=e.get("VOXLINE_COMPLETION_TOPIC", "tts.completions"),
            backend_url=e["VOXLINE_BACKEND_URL"].rstrip("/"),
            window=int(e.get("VOXLINE_MAX_IN_FLIGHT", "8")),
            s3_endpoint_url=e.get("S3_ENDPOINT_URL"),
            bucket=e.get("S3_BUCKET", "voxline-audio"),
            prefix=e.get("S3_PREFIX", ""),
            region=e.get("AWS_REGION"),
            partitions=int(e.get("VOXLINE_TOPIC_PARTITIONS", "4")),
        )


class SynthesisFailed(Exception):
    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class Job:
    """Synthesize, upload, publish: one request, start to finish."""

    def __init__(
        self, settings: PeerSettings, http: httpx.AsyncClient, s3: S3Client, publish: Publish
    ) -> None:
        self.settings = settings
        self.http = http
        self.s3 = s3
        self.publish = publish
        self.url = f"{settings.backend_url}/v1/audio/speech"

    async def handle(self, request_id: str, text: str) -> str:
        try:
            audio, attempts = await self.synthesize(text)
        except SynthesisFailed as exc:
            body: dict[str, object] = {
                "request_id": request_id,
                "status": "failed",
                "reason": "retries_exhausted",
                "error": str(exc),
                "attempts": exc.attempts,
            }
            await self._event(request_id, body)
            return "failed"
        digest = hashlib.sha256(audio).hexdigest()
        key = f"{self.settings.prefix}{request_id}.wav"
        await self.s3.put_object(
            Bucket=self.settings.bucket,
            Key=key,
            Body=audio,
            ContentType="audio/wav",
            Metadata={"request_id": request_id, "sha256": digest},
        )
        with wave.open(io.BytesIO(audio), "rb") as reader:
            rate, channels, frames = (
                reader.getframerate(),
                reader.getnchannels(),
                reader.getnframes(),
            )
        body = {
            "request_id": request_id,
            "status": "succeeded",
            "audio": {
                "uri": f"s3://{self.settings.bucket}/{key}",
                "bytes": len(audio),
                "sha256": digest,
                "format": "wav",
                "sample_rate": rate,
                "channels": channels,
                "duration_ms": round(1000 * frames / rate),
            },
            "attempts": attempts,
        }
        await self._event(request_id, body)
        return "succeeded"

    async def synthesize(self, text: str) -> tuple[bytes, int]:
        payload = {"model": "tts-1", "input": text, "voice": "alloy", "response_format": "wav"}
        error = "no attempt made"
        for attempt in range(1, ATTEMPTS + 1):
            try:
                response = await self.http.post(self.url, json=payload)
            except httpx.TransportError as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200 and response.content:
                    return response.content, attempt
                error = f"HTTP {response.status_code}"
                if response.status_code not in RETRIABLE:
                    raise SynthesisFailed(error, attempt)
            if attempt < ATTEMPTS:
                await asyncio.sleep(min(10.0, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.5, 1))
        raise SynthesisFailed(error, ATTEMPTS)

    async def _event(self, request_id: str, body: dict[str, object]) -> None:
        value = json.dumps(body, separators=(",", ":")).encode()
        await self.publish(self.settings.completion_topic, request_id.encode(), value)


@contextlib.asynccontextmanager
async def clients(settings: PeerSettings) -> AsyncIterator[tuple[httpx.AsyncClient, S3Client]]:
    """An HTTP connection pool the size of the window, and an S3 client."""
    limits = httpx.Limits(
        max_connections=settings.window, max_keepalive_connections=settings.window
    )
    timeout = httpx.Timeout(120.0, connect=5.0)
    config = AioConfig(max_pool_connections=max(10, settings.window))
    session = aioboto3.Session()
    async with (
        httpx.AsyncClient(limits=limits, timeout=timeout) as http,
        session.client(
            "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.region, config=config
        ) as s3,
    ):
        yield http, s3
