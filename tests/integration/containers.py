"""testcontainers route, for machines with a Docker engine (none on the project's CI machine,
so this path is exercised only by contributors who have Docker)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from tests.integration.services import Services


@contextmanager
def containers() -> Iterator[Services]:
    from testcontainers.kafka import KafkaContainer
    from testcontainers.minio import MinioContainer

    with KafkaContainer("apache/kafka:4.3.1").with_kraft() as kafka, MinioContainer() as minio:
        cfg = minio.get_config()
        os.environ["AWS_ACCESS_KEY_ID"] = cfg["access_key"]
        os.environ["AWS_SECRET_ACCESS_KEY"] = cfg["secret_key"]
        minio.get_client().make_bucket("voxline-audio")
        yield Services(
            bootstrap_servers=kafka.get_bootstrap_server(),
            s3_endpoint_url=f"http://{cfg['endpoint']}",
            bucket="voxline-audio",
        )
