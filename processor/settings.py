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
    max_in_flight: int = 8
    max_text_chars: int = 20_000
    #: Seconds to let in-flight work finish on SIGTERM or when partitions are revoked.
    drain_timeout_s: float = 20.0
    commit_interval_s: float = 0.5

    @property
    def processor_id(self) -> str:
        return f"{PROCESSOR_NAME}@{__version__}"

    @property
    def event_source(self) -> str:
        return f"/voxline/{self.kafka.group_id}"
