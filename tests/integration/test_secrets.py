"""No secret reaches a log line: a whole run's logs are scanned for the keys it was given."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.fakes.openai_server import running_fake
from tests.integration.harness import produce, request, unique_settings, wait_for_events
from tests.integration.services import Services

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
API_KEY = "sk-voxline-test-7f3a9c1e55d24b8e"


async def test_a_run_logs_no_secret(services: Services, tmp_path: Path) -> None:
    ids = [f"sec-{i}" for i in range(6)]
    log = tmp_path / "run.log"
    # The first calls fail (and are logged with their errors); one is refused for a bad key.
    async with running_fake(api_key=API_KEY, fail_first_n=3) as fake:
        settings = unique_settings(services, "secrets")
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "VOXLINE_GROUP_ID": settings.kafka.group_id,
            "VOXLINE_REQUEST_TOPIC": settings.kafka.request_topic,
            "VOXLINE_COMPLETION_TOPIC": settings.kafka.completion_topic,
            "VOXLINE_DLQ_TOPIC": settings.kafka.dlq_topic,
            "S3_ENDPOINT_URL": settings.store.endpoint_url or "",
            "S3_PREFIX": settings.store.prefix,
            "VOXLINE_BACKEND": "openai",
            "VOXLINE_BACKEND_URL": fake.url,
            "VOXLINE_BACKEND_API_KEY": API_KEY,
            "VOXLINE_HTTP_PORT": "-1",
            "VOXLINE_LOG_LEVEL": "debug",
        }
        await produce(settings, [request(rid, "secret-free speech") for rid in ids])
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "processor",
                "run",
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=out,
            )
            try:
                events = await wait_for_events(settings, set(ids), timeout=120)
            finally:
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), timeout=60)
        assert fake.stats()["last_authorization"] == f"Bearer {API_KEY}"
    assert all(e[0].json()["status"] == "succeeded" for e in events.values())
    text = log.read_text(encoding="utf-8", errors="replace")
    assert "backend call failed" in text, "the run should have logged its failures"
    secrets = [API_KEY, os.environ["AWS_SECRET_ACCESS_KEY"]]
    for secret in secrets:
        assert secret not in text, "a secret leaked into the logs"
