"""No secret reaches a log line: a whole run's logs are scanned for the keys it was given."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fakes.openai_server import running_fake
from tests.faults.support import Fleet, processor_env
from tests.integration.harness import produce, request, unique_settings, wait_for_events
from tests.integration.services import Services

pytestmark = pytest.mark.integration
API_KEY = "sk-voxline-test-7f3a9c1e55d24b8e"


async def test_a_run_logs_no_secret(services: Services, tmp_path: Path) -> None:
    ids = [f"sec-{i}" for i in range(6)]
    # The first calls fail (and are logged with their errors); one is refused for a bad key.
    async with running_fake(api_key=API_KEY, fail_first_n=3) as fake:
        settings = unique_settings(services, "secrets")
        env = processor_env(
            settings, fake.url, VOXLINE_BACKEND_API_KEY=API_KEY, VOXLINE_LOG_LEVEL="debug"
        )
        await produce(settings, [request(rid, "secret-free speech") for rid in ids])
        fleet = Fleet(settings, env, tmp_path)
        run = await fleet.start("run")
        try:
            events = await wait_for_events(settings, set(ids), timeout=120)
        finally:
            await fleet.terminate(run)
        assert fake.stats()["last_authorization"] == f"Bearer {API_KEY}"
    assert all(e[0].json()["status"] == "succeeded" for e in events.values())
    text = run.log_text()
    assert "backend call failed" in text, "the run should have logged its failures"
    secrets = [API_KEY, os.environ["AWS_SECRET_ACCESS_KEY"]]
    for secret in secrets:
        assert secret not in text, "a secret leaked into the logs"
