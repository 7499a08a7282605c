"""Where the real services are, and a quick real check that they answer."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os

import aioboto3
from aiokafka.admin import AIOKafkaAdminClient

DEFAULT_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "voxline",
    "AWS_SECRET_ACCESS_KEY": "voxline-secret",
    "AWS_REGION": "us-east-1",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Services:
    bootstrap_servers: str
    s3_endpoint_url: str
    bucket: str


def configured() -> Services:
    for key, value in DEFAULT_CREDENTIALS.items():
        os.environ.setdefault(key, value)
    return Services(
        bootstrap_servers=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        s3_endpoint_url=os.environ.get("S3_ENDPOINT_URL", "http://127.0.0.1:8333"),
        bucket=os.environ.get("S3_BUCKET", "voxline-audio"),
    )


async def _kafka_ok(bootstrap: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await asyncio.wait_for(admin.start(), 10)
        cluster = await asyncio.wait_for(admin.describe_cluster(), 10)
        return bool(cluster["brokers"])
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def _s3_ok(svc: Services) -> bool:
    try:
        async with aioboto3.Session().client("s3", endpoint_url=svc.s3_endpoint_url) as s3:
            await asyncio.wait_for(s3.head_bucket(Bucket=svc.bucket), 10)
        return True
    except Exception:
        return False


def discover() -> Services | None:
    """The configured services if both answer a real request, else None."""
    svc = configured()

    async def check() -> bool:
        return all(await asyncio.gather(_kafka_ok(svc.bootstrap_servers), _s3_ok(svc)))

    return svc if asyncio.run(check()) else None
