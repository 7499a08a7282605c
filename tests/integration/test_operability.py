"""The running processor answers /healthz, /readyz and /metrics with live figures."""

from __future__ import annotations

import dataclasses
import socket

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import produce, request, running, unique_settings, wait_for_events
from tests.integration.services import Services

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_health_and_metrics_of_a_live_processor(services: Services) -> None:
    port = _free_port()
    settings = dataclasses.replace(unique_settings(services, "ops"), http_port=port)
    ids = [f"ops-{i}" for i in range(5)]
    async with running(settings), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        await produce(settings, [request(rid, "metrics please") for rid in ids])
        await produce(settings, [(b"ops-bad", b"not json")])
        await wait_for_events(settings, {*ids, "ops-bad"}, timeout=120)
        live, ready = await http.get("/healthz"), await http.get("/readyz")
        metrics = await http.get("/metrics")
    assert (live.status_code, ready.status_code) == (200, 200), (live.text, ready.text)
    samples = _samples(metrics.text)
    assert samples[("voxline_succeeded_total", (("backend", "espeak"),))] == 5
    reason = (("reason", "invalid_input"), ("stage", "decode"))
    assert samples[("voxline_dead_lettered_total", reason)] == 1
    topic = (("topic", settings.kafka.request_topic),)
    assert samples[("voxline_records_in_total", topic)] == 6
    assert samples[("voxline_backend_window_limit", (("backend", "espeak"),))] == 8
    assert samples[("voxline_breaker_state", (("backend", "espeak"),))] == 0
