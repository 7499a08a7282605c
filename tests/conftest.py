"""Shared fixtures. Integration tests need the real Kafka broker and S3 store: they use the
ones already running (``.ci/run`` starts them), start them with ``infra/`` scripts when they
are not, or use testcontainers where a Docker engine answers. They never skip: a missing
service is a failure."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.services import Services, discover

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    found = discover()
    if found is not None:
        yield found
        return
    if _docker_engine():
        from tests.integration.containers import containers

        with containers() as svc:
            yield svc
        return
    up = subprocess.run([str(ROOT / "infra" / "up.sh")], cwd=ROOT, check=False)
    found = discover()
    if up.returncode != 0 or found is None:
        pytest.fail(
            "the Kafka broker or the S3 store is not reachable and infra/up.sh could not "
            "start them (see .infra/*/*.log)",
            pytrace=False,
        )
    try:
        yield found
    finally:
        if os.environ.get("VOXLINE_KEEP_SERVICES") != "1":
            subprocess.run([str(ROOT / "infra" / "down.sh")], cwd=ROOT, check=False)


def _docker_engine() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
