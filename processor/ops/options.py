"""Every setting's flag and environment variable, declared once, and the one function that turns
the parsed values into ``Settings``. A flag's default is the default of the settings field it
fills, so the command line and code that builds ``Settings`` agree. A command takes the groups
it needs (``KAFKA``, ``STORE``, ``RUN``); a setting it does not take keeps the field's default.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import click

from processor import config
from processor.backends.registry import KINDS
from processor.config import BackendConfig, BackendsConfig, ReferenceConfig
from processor.kafka.options import SASL_MECHANISMS, SECURITY_PROTOCOLS
from processor.settings import CacheSettings, KafkaSettings, Settings, StoreSettings

#: The command line serves /healthz, /readyz and /metrics unless told not to; ``Settings``
#: built in code (tests, the demo) does not.
DEFAULT_HTTP_PORT = 9400

#: Where a value goes, by the type whose field gives its default: the keyword arguments of
#: KafkaSettings, StoreSettings and Settings; the backend's go to ``config.single_backend``.
_GROUPS: Mapping[type[Any], str] = {
    KafkaSettings: "kafka",
    StoreSettings: "store",
    Settings: "settings",
    BackendConfig: "backend",
    BackendsConfig: "backend",
    ReferenceConfig: "backend",
    CacheSettings: "cache",
}
_FROM_FIELD: Any = object()


def field_default(owner: type[Any], name: str) -> Any:
    """The default of the dataclass field ``owner.name`` (its factory's value if it has one)."""
    for field in dataclasses.fields(owner):
        if field.name == name:
            if field.default is not dataclasses.MISSING:
                return field.default
            if field.default_factory is not dataclasses.MISSING:
                return field.default_factory()
    raise LookupError(f"{owner.__name__}.{name} has no default")


def _same(value: Any) -> Any:
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class Setting:
    """One flag with its environment variable, and the settings keyword its value fills
    (``group`` "config" for the file that replaces the backend flags)."""

    decls: tuple[str, ...]
    envvar: str
    group: str
    key: str
    default: Any
    help: str
    type: click.ParamType[Any, Any] | None = None
    show_default: bool = True
    convert: Callable[[Any], Any] = _same

    @property
    def name(self) -> str:
        """The parameter name click passes the value under."""
        name = click.Option(list(self.decls)).name
        assert name is not None
        return name

    def option(self) -> click.Option:
        return click.Option(
            list(self.decls),
            envvar=self.envvar,
            show_envvar=True,
            default=self.default,
            type=self.type,
            show_default=self.show_default,
            help=self.help,
        )


def _setting(
    owner: type[Any],
    flag: str,
    envvar: str,
    help: str,
    *,
    field: str | None = None,
    key: str | None = None,
    default: Any = _FROM_FIELD,
    **kw: Any,
) -> Setting:
    field = field or flag.removeprefix("--").replace("-", "_")
    if default is _FROM_FIELD:
        default = field_default(owner, field)
    return Setting((flag,), envvar, _GROUPS[owner], key or field, default, help, **kw)


_kafka = functools.partial(_setting, KafkaSettings)
_SECONDS, _COUNT = click.FloatRange(0), click.IntRange(0)
PARK_HELP = "Seconds a record may wait for its backend before it is parked; 0: never park."
RECORDS_HELP = "Records held at once; 0: 2x the sum of the backends' windows (at least 32)."
HELD_HELP = (
    "Records holding synthesized audio at once (others wait before their first backend call); "
    "0: a quarter of the backends' windows (at least 8)."
)
_store = functools.partial(_setting, StoreSettings)
_top = functools.partial(_setting, Settings)
_backend = functools.partial(_setting, BackendConfig)
_cache = functools.partial(_setting, CacheSettings)
_backends = functools.partial(_setting, BackendsConfig)


def _buckets(text: str) -> frozenset[str]:
    return frozenset(b.strip() for b in text.split(",") if b.strip())


def _port(port: int) -> int | None:
    return None if port < 0 else port


KAFKA: tuple[Setting, ...] = (
    _kafka(
        "--bootstrap-servers",
        "KAFKA_BOOTSTRAP_SERVERS",
        "Kafka bootstrap servers, comma-separated.",
    ),
    _kafka("--request-topic", "VOXLINE_REQUEST_TOPIC", "Topic the synthesis requests arrive on."),
    _kafka(
        "--completion-topic",
        "VOXLINE_COMPLETION_TOPIC",
        "Topic completion events (succeeded/failed) are published to.",
    ),
    _kafka(
        "--security-protocol",
        "KAFKA_SECURITY_PROTOCOL",
        "How to talk to the brokers.",
        type=click.Choice(SECURITY_PROTOCOLS),
    ),
    _kafka(
        "--sasl-mechanism",
        "KAFKA_SASL_MECHANISM",
        "SASL mechanism (with SASL_PLAINTEXT or SASL_SSL).",
        type=click.Choice(SASL_MECHANISMS),
    ),
    _kafka("--sasl-username", "KAFKA_SASL_USERNAME", "SASL user."),
    _kafka(
        "--sasl-password",
        "KAFKA_SASL_PASSWORD",
        "SASL password; never logged (prefer the environment variable to the flag).",
        show_default=False,
    ),
    _kafka("--ssl-cafile", "KAFKA_SSL_CAFILE", "CA bundle for TLS."),
    _kafka("--ssl-certfile", "KAFKA_SSL_CERTFILE", "Client cert (mTLS)."),
    _kafka("--ssl-keyfile", "KAFKA_SSL_KEYFILE", "Client key (mTLS)."),
    _kafka("--dlq-topic", "VOXLINE_DLQ_TOPIC", "Dead-letter topic."),
    _kafka("--retry-topic", "VOXLINE_RETRY_TOPIC", "Delay topic (default: request topic.retry)."),
)

STORE: tuple[Setting, ...] = (
    _store(
        "--s3-endpoint-url",
        "S3_ENDPOINT_URL",
        "S3-compatible endpoint; unset means AWS. Credentials come from the standard AWS "
        "chain (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, profiles, roles).",
        field="endpoint_url",
    ),
    _store("--s3-bucket", "S3_BUCKET", "Bucket for audio.", field="bucket"),
    _store("--s3-prefix", "S3_PREFIX", "Key prefix for audio objects.", field="prefix"),
    _store("--aws-region", "AWS_REGION", "S3 region.", field="region"),
)

#: The chunk cache (``voxline run`` and ``voxline cache``).
CACHE: tuple[Setting, ...] = (
    _cache(
        "--cache/--no-cache",
        "VOXLINE_CACHE",
        "Serve chunks already synthesized for the same inputs from the store (README: Chunk "
        "cache).",
        field="enabled",
    ),
    _cache(
        "--cache-prefix", "VOXLINE_CACHE_PREFIX", "Key prefix of cached chunks.", field="prefix"
    ),
    _cache(
        "--cache-bucket",
        "VOXLINE_CACHE_BUCKET",
        "Bucket for cached chunks; unset: the audio bucket.",
        field="bucket",
    ),
    _cache(
        "--cache-unseeded/--no-cache-unseeded",
        "VOXLINE_CACHE_UNSEEDED",
        "Also cache requests without a seed on backends that sample randomly.",
        field="unseeded",
    ),
    _cache(
        "--cache-max-bytes",
        "VOXLINE_CACHE_MAX_BYTES",
        "Size bound `voxline cache prune` keeps the cache under; 0: none.",
        field="max_bytes",
        type=click.IntRange(0),
    ),
)

#: Usage accounting (``voxline run`` and ``voxline usage``).
USAGE: tuple[Setting, ...] = (
    _top(
        "--usage-tenant-key",
        "VOXLINE_USAGE_TENANT_KEY",
        "Request metadata key naming the tenant usage is accounted to.",
    ),
    _top(
        "--usage-max-tenants",
        "VOXLINE_USAGE_MAX_TENANTS",
        "Distinct tenants the usage metrics label by name; later ones are 'other'.",
        type=click.IntRange(1),
    ),
)

#: What ``voxline run`` takes after KAFKA, in the order ``--help`` lists it.
RUN: tuple[Setting, ...] = (
    _kafka(
        "--group-instance-id",
        "VOXLINE_GROUP_INSTANCE_ID",
        "Static group membership: give each instance a stable id so a rolling restart "
        "within the session timeout does not rebalance.",
    ),
    _kafka(
        "--group-id",
        "VOXLINE_GROUP_ID",
        "Consumer group; run more instances with the same group to scale out.",
    ),
    *STORE,
    _backend(
        "--backend",
        "VOXLINE_BACKEND",
        "The TTS backend.",
        field="kind",
        default=field_default(Settings, "backends").default,
        type=click.Choice(KINDS),
    ),
    _backend(
        "--backend-url",
        "VOXLINE_BACKEND_URL",
        "Base URL of the backend server (openai: the URL before /v1/audio/speech).",
        field="url",
    ),
    _backend(
        "--backend-api-key",
        "VOXLINE_BACKEND_API_KEY",
        "Bearer key for the backend; never logged.",
        field="api_key",
        show_default=False,
    ),
    _backend(
        "--max-in-flight",
        "VOXLINE_MAX_IN_FLIGHT",
        "Records processed concurrently (the window).",
        type=click.IntRange(1, 4096),
    ),
    _backend(
        "--adaptive/--static",
        "VOXLINE_ADAPTIVE",
        "Let the backend's window find the server's capacity (from 4, between 1 and "
        "--max-in-flight), or pin it at --max-in-flight. Default: adaptive for every TTS "
        "server, static for espeak (a local process).",
        field="adaptive",
        default=None,
        show_default=False,
    ),
    _backends("--max-records", "VOXLINE_MAX_RECORDS", RECORDS_HELP, type=_COUNT),
    _backends("--max-audio-records", "VOXLINE_MAX_AUDIO_RECORDS", HELD_HELP, type=_COUNT),
    _backends(
        "--quality/--no-quality",
        "VOXLINE_QUALITY",
        "Check every chunk's audio (duration, silence, clipping, loops, ...) and synthesize "
        "a bad one again (README: Quality gate and mastering); with --config, its [quality].",
        field="quality",
        default=True,
    ),
    _top("--park-after", "VOXLINE_PARK_AFTER", PARK_HELP, field="park_after_s", type=_SECONDS),
    _top("--max-parks", "VOXLINE_MAX_PARKS", "Parks before retries_exhausted.", type=_COUNT),
    _top(
        "--max-uncommitted",
        "VOXLINE_MAX_UNCOMMITTED",
        "Records of one partition read but not yet committed before that partition pauses: "
        "bounds the work a crash redoes.",
        type=click.IntRange(1),
    ),
    _setting(
        ReferenceConfig,
        "--reference-buckets",
        "VOXLINE_REFERENCE_BUCKETS",
        "Comma-separated buckets that voice.reference.audio_uri may name (clone prompts); "
        "any other is invalid_input.",
        field="allowed_buckets",
        key="reference_buckets",
        default=",".join(sorted(field_default(ReferenceConfig, "allowed_buckets"))),
        convert=_buckets,
    ),
    Setting(
        ("--config", "config_path"),
        "VOXLINE_CONFIG",
        "config",
        "path",
        None,
        "TOML file declaring several named backends, each with its own window and limits "
        "(overrides --backend/--backend-url).",
        type=click.Path(exists=True, dir_okay=False),
    ),
    _top(
        "--max-text-chars",
        "VOXLINE_MAX_TEXT_CHARS",
        "Longest accepted text; longer is invalid_input.",
        type=click.IntRange(1),
    ),
    _backend(
        "--backend-timeout",
        "VOXLINE_BACKEND_TIMEOUT",
        "Seconds one backend call may take (synthesis is slow; a hung call is retried).",
        field="timeout_s",
        type=click.FloatRange(0.1),
    ),
    _backend(
        "--retry-attempts",
        "VOXLINE_RETRY_ATTEMPTS",
        "Backend calls per record for transient failures.",
        type=click.IntRange(1),
    ),
    _backend(
        "--retry-timeout",
        "VOXLINE_RETRY_TIMEOUT",
        "Seconds a record may spend on retries.",
        field="retry_timeout_s",
        type=click.FloatRange(0.1),
    ),
    _top(
        "--drain-timeout",
        "VOXLINE_DRAIN_TIMEOUT",
        "Seconds in-flight work gets to finish on shutdown or when partitions are revoked.",
        field="drain_timeout_s",
        type=click.FloatRange(0),
    ),
    _top(
        "--http-port",
        "VOXLINE_HTTP_PORT",
        "Port for /healthz, /readyz and /metrics (Prometheus); -1 turns it off.",
        default=DEFAULT_HTTP_PORT,
        type=click.IntRange(-1, 65535),
        convert=_port,
    ),
    _top(
        "--http-host",
        "VOXLINE_HTTP_HOST",
        "Address the HTTP endpoint binds (0.0.0.0 in a container).",
    ),
    _kafka(
        "--topic-partitions",
        "VOXLINE_TOPIC_PARTITIONS",
        "Partitions for topics created at start-up when missing; 0 never creates topics.",
        field="create_topics_partitions",
        type=click.IntRange(0),
    ),
)

_BY_NAME: Mapping[str, Setting] = {s.name: s for s in (*KAFKA, *RUN, *CACHE, *USAGE)}


def options(*groups: Iterable[Setting]) -> list[click.Parameter]:
    """Fresh click options for a command, in the order given."""
    return [setting.option() for group in groups for setting in group]


def settings_from_options(values: Mapping[str, Any]) -> Settings:
    """``Settings`` from a command's parsed values; names that are no setting (a command's own
    flags) are ignored, and a setting the command does not take keeps its default."""
    kwargs: defaultdict[str, dict[str, Any]] = defaultdict(dict)
    for name, value in values.items():
        setting = _BY_NAME.get(name)
        if setting is not None:
            kwargs[setting.group][setting.key] = setting.convert(value)
    path = kwargs["config"].get("path")
    backends = config.load(path) if path else config.single_backend(**kwargs["backend"])
    return Settings(
        kafka=KafkaSettings(**kwargs["kafka"]),
        store=StoreSettings(**kwargs["store"]),
        cache=CacheSettings(**kwargs["cache"]),
        backends=backends,
        **kwargs["settings"],
    )
