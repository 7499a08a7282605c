"""Readiness of the secured broker (infra/secure.sh), by a real request over SASL_SSL.

    secure_ready.py --bootstrap HOST:PORT --cafile CA --user NAME [--timeout 90] [--pid PID]

The password is read from $SECURE_KAFKA_PASSWORD (never from the command line). Connects with
the processor's own connection options (SCRAM-SHA-512 over TLS), fetches cluster metadata and
finds a group coordinator; retried until the timeout, like infra/ready.py.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ready import _retry  # infra/ is not a package

from processor.kafka.options import connection_options
from processor.settings import KafkaSettings


async def check(bootstrap: str, cafile: str, user: str, limit_s: float, pid: int | None) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    kafka = KafkaSettings(
        bootstrap_servers=bootstrap,
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=user,
        sasl_password=os.environ["SECURE_KAFKA_PASSWORD"],
        ssl_cafile=cafile,
    )

    async def attempt() -> str:
        admin = AIOKafkaAdminClient(
            **connection_options(kafka), request_timeout_ms=5000, client_id="voxline-ready"
        )
        try:
            await asyncio.wait_for(admin.start(), 10)
            cluster = await asyncio.wait_for(admin.describe_cluster(), 10)
            if not cluster.get("brokers"):
                raise RuntimeError("metadata answer lists no broker")
            coordinator = await asyncio.wait_for(admin.find_coordinator("voxline"), 10)
        finally:
            await admin.close()
        return f"SASL_SSL as {user}, cluster {cluster.get('cluster_id')}, coordinator {coordinator}"

    return await _retry(f"secured kafka {bootstrap}", attempt, limit_s, pid)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--cafile", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--timeout", type=float, default=90.0)
    parser.add_argument("--pid", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    return asyncio.run(check(args.bootstrap, args.cafile, args.user, args.timeout, args.pid))


if __name__ == "__main__":
    sys.exit(main())
