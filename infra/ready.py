"""Readiness checks for the local Kafka broker and S3 store, by real requests.

    ready.py kafka [--bootstrap HOST:PORT] [--timeout 90] [--pid PID]
    ready.py s3    [--endpoint URL] [--bucket NAME ...] [--create] [--timeout 90] [--pid PID]

kafka: fetches cluster metadata with aiokafka's admin client, requires at least one
broker in the answer, and asks for a group coordinator (so consumer groups work at once).
s3: head_bucket (aioboto3) on every bucket; with --create, a bucket that does not exist
is created through the S3 API. Both retry until the timeout and exit 1
with a message saying what failed last. --pid: give up early if that process has exited.

Defaults come from the same variables the processor reads (see infra/env.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any


def _pid_alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) still answers kill(0).
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


async def _retry(
    what: str, attempt: Callable[[], Awaitable[str]], limit_s: float, pid: int | None
) -> int:
    deadline = time.monotonic() + limit_s
    last = "no answer yet"
    while True:
        if not _pid_alive(pid):
            print(f"{what}: process {pid} exited before it became ready ({last})", file=sys.stderr)
            return 1
        try:
            print(f"{what}: ready: {await attempt()}")
            return 0
        except Exception as exc:  # any failure means "not ready yet"
            last = f"{type(exc).__name__}: {exc}".strip()
        if time.monotonic() >= deadline:
            print(f"{what}: not ready after {limit_s:g}s; last error: {last}", file=sys.stderr)
            return 1
        await asyncio.sleep(0.5)


async def check_kafka(bootstrap: str, limit_s: float, pid: int | None) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    async def attempt() -> str:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=5000, client_id="voxline-ready"
        )
        try:
            await asyncio.wait_for(admin.start(), 10)
            cluster: dict[str, Any] = await asyncio.wait_for(admin.describe_cluster(), 10)
            if not cluster.get("brokers"):
                raise RuntimeError("metadata answer lists no broker")
            # Also wait for the group coordinator: on a fresh broker the first FindCoordinator
            # creates __consumer_offsets, and consumer groups fail until it is online.
            coordinator = await asyncio.wait_for(admin.find_coordinator("voxline-ready"), 10)
        finally:
            await admin.close()
        brokers = cluster["brokers"]
        listed = ", ".join(f"{b['node_id']}@{b['host']}:{b['port']}" for b in brokers)
        return (
            f"cluster {cluster.get('cluster_id')}, controller {cluster.get('controller_id')}, "
            f"brokers {listed}, group coordinator {coordinator}"
        )

    return await _retry(f"kafka {bootstrap}", attempt, limit_s, pid)


async def check_s3(
    endpoint: str, buckets: list[str], create: bool, limit_s: float, pid: int | None
) -> int:
    import aioboto3
    from aiobotocore.config import AioConfig
    from botocore.exceptions import ClientError

    session = aioboto3.Session(
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "voxline"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "voxline-secret"),
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
    )
    config = AioConfig(
        connect_timeout=3,
        read_timeout=5,
        retries={"max_attempts": 1},
        s3={"addressing_style": "path"},
    )

    async def attempt() -> str:
        async with session.client("s3", endpoint_url=endpoint, config=config) as s3:
            made = []
            for bucket in buckets:
                try:
                    await s3.head_bucket(Bucket=bucket)
                except ClientError as exc:
                    code = str(exc.response.get("Error", {}).get("Code", ""))
                    if not (create and code in ("404", "NoSuchBucket", "NotFound")):
                        raise
                    await s3.create_bucket(Bucket=bucket)
                    await s3.head_bucket(Bucket=bucket)
                    made.append(bucket)
        created = f" (created {', '.join(made)})" if made else ""
        return f"buckets {', '.join(buckets)}{created}"

    return await _retry(f"s3 {endpoint}", attempt, limit_s, pid)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="service", required=True)
    for name in ("kafka", "s3"):
        p = sub.add_parser(name)
        p.add_argument("--timeout", type=float, default=90.0, help="seconds (default 90)")
        p.add_argument("--pid", type=int, default=None, help="stop waiting if this pid exits")
    k = sub.choices["kafka"]
    k.add_argument(
        "--bootstrap",
        default=os.environ.get(
            "KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}"
        ),
    )
    s = sub.choices["s3"]
    s.add_argument(
        "--endpoint",
        default=os.environ.get(
            "S3_ENDPOINT_URL", f"http://127.0.0.1:{os.environ.get('S3_PORT', '8333')}"
        ),
    )
    s.add_argument(
        "--bucket",
        action="append",
        default=None,
        help="repeatable (default: $S3_BUCKET or voxline-audio)",
    )
    s.add_argument("--create", action="store_true", help="create buckets that do not exist")
    args = parser.parse_args()

    # aiokafka and botocore log every failed attempt; the final message says what failed.
    logging.basicConfig(level=logging.CRITICAL)

    if args.service == "kafka":
        return asyncio.run(check_kafka(args.bootstrap, args.timeout, args.pid))
    buckets = args.bucket or [os.environ.get("S3_BUCKET", "voxline-audio")]
    return asyncio.run(check_s3(args.endpoint, buckets, args.create, args.timeout, args.pid))


if __name__ == "__main__":
    sys.exit(main())
