"""The producer examples (examples/producers/{go,typescript,java}) built and run against the
real broker and a running processor (espeak-ng backend): a valid request ends in exit 0 and an
object that exists; an invalid one is refused by the example's own schema check before anything
is sent; one the processor rejects ends non-zero with the processor's reason. The Go example
sends a CloudEvent and its completion event points back at it."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from processor.app import App
from processor.settings import Settings
from tests.integration import harness
from tests.integration.services import Services

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "producers"
SCHEMA = ROOT / "schemas" / "request.v1.json"
JAVA = EXAMPLES / "java"
COMMANDS = {
    "go": [str(EXAMPLES / "go" / "bin" / "voxline-produce")],
    "typescript": ["node", str(EXAMPLES / "typescript" / "dist" / "produce.js")],
    "java": [
        "java",
        "-cp",
        f"{JAVA / 'target' / 'classes'}{os.pathsep}{JAVA / 'target' / 'dependency' / '*'}",
        "dev.voxline.examples.Produce",
    ],
}
LANGUAGES = list(COMMANDS)
EXIT_FAILED, EXIT_INVALID = 1, 2


@pytest.fixture(scope="module")
def built() -> None:
    """What `make setup` does for the examples (infra/producers.sh): install and build, or
    nothing when nothing changed. A missing toolchain fails under CI and skips elsewhere."""
    missing = [tool for tool in ("go", "node", "npm", "java", "mvn") if not shutil.which(tool)]
    if missing and os.environ.get("CI") != "true":
        pytest.skip(f"toolchains missing: {', '.join(missing)}")
    t0 = time.monotonic()
    done = subprocess.run(
        [str(ROOT / "infra" / "producers.sh")], capture_output=True, text=True, timeout=540
    )
    assert done.returncode == 0, f"infra/producers.sh failed:\n{done.stdout}\n{done.stderr}"
    print(f"\nproducers built in {time.monotonic() - t0:.1f} s")


@pytest.fixture(scope="module")
async def processor(built: None, services: Services) -> AsyncIterator[tuple[Settings, App]]:
    settings = harness.unique_settings(services, "producers")
    async with harness.running(settings) as app:
        yield settings, app


async def produce(
    language: str, settings: Settings, *args: str, timeout_s: int = 90
) -> tuple[int, str, str]:
    """Run one example as a child process (the processor keeps running in this loop)."""
    kafka = settings.kafka
    argv = [
        *COMMANDS[language],
        "--bootstrap",
        kafka.bootstrap_servers,
        "--requests",
        kafka.request_topic,
        "--completions",
        kafka.completion_topic,
        "--schema",
        str(SCHEMA),
        "--timeout",
        f"{timeout_s}s" if language == "go" else str(timeout_s),
        *args,
    ]
    child = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(child.communicate(), timeout_s + 60)
    assert child.returncode is not None
    return child.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("language", LANGUAGES)
async def test_a_valid_request_succeeds_and_its_object_exists(
    language: str, processor: tuple[Settings, App], services: Services
) -> None:
    settings, _ = processor
    rid = f"{language}-valid-{time.monotonic_ns()}"
    t0 = time.monotonic()
    code, out, err = await produce(
        language, settings, "--id", rid, "--text", f"Hello from {language}."
    )
    print(f"{language}: valid request answered in {time.monotonic() - t0:.1f} s")
    assert code == 0, f"stdout: {out}\nstderr: {err}"
    uri = out.strip()
    assert uri == f"s3://{services.bucket}/{settings.store.prefix}{rid}.wav"
    objects = await harness.get_objects(services, [uri])
    data, head = objects[uri]
    assert data[:4] == b"RIFF"
    assert head["Metadata"]["request_id"] == rid


@pytest.mark.parametrize("language", LANGUAGES)
async def test_an_invalid_request_is_refused_before_sending(
    language: str, processor: tuple[Settings, App]
) -> None:
    settings, _ = processor
    rid = f"{language} has spaces"  # breaks the request_id pattern
    code, out, err = await produce(language, settings, "--id", rid)
    assert code == EXIT_INVALID, f"stdout: {out}\nstderr: {err}"
    assert "invalid request, not sent" in err
    assert "request_id" in err
    sent = await harness.read_topic(settings.kafka, settings.kafka.request_topic)
    assert rid.encode() not in {m.key for m in sent}


@pytest.mark.parametrize("language", LANGUAGES)
async def test_a_request_the_processor_rejects_exits_non_zero_with_the_reason(
    language: str, processor: tuple[Settings, App]
) -> None:
    settings, _ = processor
    rid = f"{language}-expired-{time.monotonic_ns()}"
    code, out, err = await produce(
        language, settings, "--id", rid, "--deadline", "2001-01-01T00:00:00Z"
    )
    assert code == EXIT_FAILED, f"stdout: {out}\nstderr: {err}"
    assert out.startswith("failed: expired: deadline 2001-01-01T00:00:00"), out


async def test_the_go_example_sends_a_cloudevent_and_its_event_points_back(
    processor: tuple[Settings, App],
) -> None:
    settings, _ = processor
    rid = f"go-cloudevent-{time.monotonic_ns()}"
    code, out, err = await produce("go", settings, "--id", rid)
    assert code == 0, f"stdout: {out}\nstderr: {err}"
    events = await harness.events_by_id(settings)
    (event,) = events[rid]
    assert event.headers["ce_causationsource"] == "/examples/producers/go"
    assert event.headers["ce_causationtype"] == "io.voxline.synthesis.requested.v1"
    assert f"(CloudEvent {event.headers['ce_causationid']})" in err
