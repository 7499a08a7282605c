"""The secured broker and HTTPS store of ``infra/secure.sh`` for the security tests: started
fresh by the fixture (and stopped after), its passwords and CAs, and ``voxline`` run as an
operator would run it, as one principal or another, configured by environment variables."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from processor.settings import KafkaSettings

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "infra" / "secure.sh"
#: Seconds ``infra/secure.sh start`` may take: its own waits are bounded (90 s each service).
START_TIMEOUT_S = 300
#: Variables of the outer environment that would configure the plaintext services.
PREFIXES = ("KAFKA_", "S3_", "AWS_", "VOXLINE_")


@dataclasses.dataclass(frozen=True, slots=True)
class Secured:
    values: dict[str, str]

    def password(self, user: str) -> str:
        return self.values[f"SECURE_{user.upper()}_PASSWORD"]

    @property
    def ca(self) -> str:
        return self.values["SECURE_CA"]

    @property
    def other_ca(self) -> str:
        return self.values["SECURE_OTHER_CA"]

    @property
    def secrets(self) -> list[str]:
        """Every password and key a log line must never show."""
        return [v for k, v in self.values.items() if k.endswith(("_PASSWORD", "_SECRET_KEY"))]

    def kafka(self, user: str) -> KafkaSettings:
        """``user``'s connection settings (what ``env`` says to ``voxline``)."""
        return KafkaSettings(
            bootstrap_servers=self.values["SECURE_KAFKA_BOOTSTRAP"],
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username=user,
            sasl_password=self.password(user),
            ssl_cafile=self.ca,
        )

    def env(self, user: str, **extra: str) -> dict[str, str]:
        """What ``user`` runs ``voxline`` with: SCRAM-SHA-512 over TLS, the HTTPS store with
        the test CA (``AWS_CA_BUNDLE``), debug logs; ``extra`` overrides."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIXES)}
        kafka = self.kafka(user)
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap_servers,
            KAFKA_SECURITY_PROTOCOL=kafka.security_protocol,
            KAFKA_SASL_MECHANISM=str(kafka.sasl_mechanism),
            KAFKA_SASL_USERNAME=user,
            KAFKA_SASL_PASSWORD=self.password(user),
            KAFKA_SSL_CAFILE=self.ca,
            S3_ENDPOINT_URL=self.values["SECURE_S3_ENDPOINT"],
            AWS_CA_BUNDLE=self.ca,
            AWS_ACCESS_KEY_ID=self.values["SECURE_S3_ACCESS_KEY"],
            AWS_SECRET_ACCESS_KEY=self.values["SECURE_S3_SECRET_KEY"],
            AWS_REGION="us-east-1",
            VOXLINE_HTTP_PORT="-1",
            VOXLINE_LOG_LEVEL="debug",
            VOXLINE_DRAIN_TIMEOUT="10",
        )
        env.update(extra)
        return env


def _in_use(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def ports() -> dict[str, str]:
    """The script's default ports, or the first block 10 ports further on (at most 4) that is
    free: another checkout's secured services may hold the defaults."""
    for shift in range(0, 50, 10):
        kafka, s3 = 9192 + shift, 7333 + shift
        wanted = [kafka, kafka + 1, *range(s3, s3 + 5), *range(s3 + 10000, s3 + 10005)]
        if not any(_in_use(p) for p in wanted):
            return {
                "SECURE_KAFKA_PORT": str(kafka),
                "SECURE_KAFKA_CONTROLLER_PORT": str(kafka + 1),
                "SECURE_S3_PORT": str(s3),
            }
    pytest.fail("no free ports for the secured services (9192-9233, 7333-7377, 17333-17377)")


def _script(
    verb: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), verb], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def start() -> Iterator[Secured]:
    """``infra/secure.sh reset`` and ``start`` (fresh state, so the fixed topics hold only
    this run's records), the values of ``env``; ``stop`` after."""
    _script("reset", dict(os.environ))
    env = {**os.environ, **ports()}
    started = _script("start", env, timeout=START_TIMEOUT_S)
    if started.returncode != 0:
        _script("stop", env)
        pytest.fail(f"infra/secure.sh start failed:\n{started.stdout}{started.stderr}")
    printed = _script("env", env).stdout
    try:
        yield Secured(dict(line.split("=", 1) for line in printed.split()))
    finally:  # 10 s to stop cleanly, then killed: the next start resets the state anyway
        _script("stop", {**env, "STOP_TIMEOUT": "10"})


def voxline(
    env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``voxline ARGS`` to its end (bounded: a hang fails the test)."""
    return subprocess.run(
        [sys.executable, "-m", "processor", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
