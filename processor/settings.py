"""Settings as one frozen value. Only the CLI (the composition root) builds it from the
environment and flags; everything else receives it."""

from __future__ import annotations

import dataclasses
import socket

from processor import PROCESSOR_NAME, __version__


@dataclasses.dataclass(frozen=True, slots=True)
class KafkaSettings:
    bootstrap_servers: str = "localhost:9092"
    group_id: str = "voxline"
    request_topic: str = "tts.requests"
    completion_topic: str = "tts.completions"
    dlq_topic: str = "tts.requests.dlq"
    #: Create missing topics at start-up with this many partitions (0: never create).
    create_topics_partitions: int = 4
    client_id: str = dataclasses.field(default_factory=lambda: f"voxline-{socket.gethostname()}")
    #: Static membership: a restart with the same id within the session timeout keeps the
    #: partitions (no rebalance during rolling restarts).
    group_instance_id: str | None = None
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = dataclasses.field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class StoreSettings:
    endpoint_url: str | None = None
    bucket: str = "voxline-audio"
    prefix: str = ""
    region: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class RetrySettings:
    #: Backend calls per record, the first included.
    attempts: int = 5
    #: Seconds a record may spend retrying transient backend failures.
    timeout_s: float = 60.0
    wait_initial_s: float = 0.5
    wait_max_s: float = 10.0
    #: Ceiling of the wait between tries while a dependency is down for everyone.
    systemic_wait_max_s: float = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    kafka: KafkaSettings = KafkaSettings()
    store: StoreSettings = StoreSettings()
    retry: RetrySettings = RetrySettings()
    backend: str = "espeak"
    backend_url: str | None = None
    backend_api_key: str | None = dataclasses.field(default=None, repr=False)
    #: Seconds one backend call may take.
    backend_timeout_s: float = 120.0
    #: Concurrent calls per backend (the window); the adaptive window's ceiling.
    max_in_flight: int = 8
    #: Let each backend's window find its capacity between 1 and ``max_in_flight``.
    adaptive: bool = False
    #: Records the consumer holds at once; 0: 2x the sum of the backends' windows (min 32).
    max_records: int = 0
    #: Records of one partition started but not yet committed before it is paused: bounds
    #: what a crash makes us redo when one slow record holds the commit back.
    max_uncommitted: int = 1000
    #: Buckets reference audio (voice clones) may be read from.
    reference_buckets: frozenset[str] = frozenset()
    #: A TOML file declaring several named backends (``processor.config``).
    config_path: str | None = None
    max_text_chars: int = 20_000
    #: Seconds to let in-flight work finish on SIGTERM or when partitions are revoked.
    drain_timeout_s: float = 20.0
    commit_interval_s: float = 0.5
    #: Where /healthz, /readyz and /metrics are served; None: not served.
    http_host: str = "127.0.0.1"
    http_port: int | None = None

    @property
    def processor_id(self) -> str:
        return f"{PROCESSOR_NAME}@{__version__}"

    @property
    def event_source(self) -> str:
        return f"/voxline/{self.kafka.group_id}"
