"""Settings as one frozen value. Only the CLI builds it from the environment, flags and the
config file; everything else receives it."""

from __future__ import annotations

import dataclasses
import socket

from processor import PROCESSOR_NAME, __version__
from processor.config import BackendsConfig, single_backend
from processor.retry import HOLD_STEP_S, Policy


@dataclasses.dataclass(frozen=True, slots=True)
class KafkaSettings:
    bootstrap_servers: str = "localhost:9092"
    group_id: str = "voxline"
    request_topic: str = "tts.requests"
    completion_topic: str = "tts.completions"
    dlq_topic: str = "tts.requests.dlq"
    #: The delay topic for parked records; empty: the request topic's name plus ``.retry``.
    retry_topic: str = ""
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
class CacheSettings:
    """The chunk cache (``processor.cache``): synthesized chunks kept in the store by a hash
    of everything that determines their audio."""

    enabled: bool = False
    #: Key prefix in the audio bucket (or ``bucket``) for cached chunks.
    prefix: str = "cache/chunks/"
    #: Another bucket for the cache; None: the audio bucket.
    bucket: str | None = None
    #: Cache requests without a seed on backends that sample randomly (two calls would differ).
    unseeded: bool = False
    #: Size bound ``voxline cache prune`` keeps the cache under (0: no bound).
    max_bytes: int = 0
    #: Seconds a lookup may take before it counts as a miss (the store is slow or down).
    lookup_timeout_s: float = 2.0


@dataclasses.dataclass(frozen=True, slots=True)
class RetrySettings:
    """Pacing of retries; how many and for how long is each backend's (``BackendConfig``)."""

    wait_initial_s: float = 0.5
    wait_max_s: float = 10.0
    #: Ceiling of the wait between tries while a dependency is down for everyone.
    systemic_wait_max_s: float = 30.0

    def policy(self, attempts: int = 5, budget_s: float = 60.0) -> Policy:
        """The retry policy of a step with this pacing."""
        hold = (HOLD_STEP_S, self.systemic_wait_max_s)
        return Policy(attempts, budget_s, (self.wait_initial_s, self.wait_max_s), hold)


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """The whole configuration tree: flags, environment and ``VOXLINE_CONFIG`` end up here."""

    kafka: KafkaSettings = KafkaSettings()
    store: StoreSettings = StoreSettings()
    retry: RetrySettings = RetrySettings()
    cache: CacheSettings = CacheSettings()
    #: Usage metrics are labelled by the tenant this metadata key names (first N, then other).
    usage_tenant_key: str = "tenant"
    usage_max_tenants: int = 100
    #: The named backends, their windows and limits (``VOXLINE_CONFIG``, or the single
    #: backend ``VOXLINE_BACKEND`` names).
    backends: BackendsConfig = dataclasses.field(default_factory=single_backend)
    #: Records of one partition started but not yet committed before it is paused: bounds
    #: what a crash makes us redo when one slow record holds the commit back.
    max_uncommitted: int = 1000
    max_text_chars: int = 20_000
    #: Seconds a record may hold in memory for a backend that cannot take it (breaker open, a
    #: long Retry-After) before it is parked on the retry topic; 0: never park.
    park_after_s: float = 10.0
    #: Parks of one record before it is dead-lettered ``retries_exhausted``.
    max_parks: int = 20
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
