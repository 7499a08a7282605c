"""Named backends from ``VOXLINE_CONFIG`` (TOML), or one backend from the environment.

Example (see the README for one per backend family)::

    default_backend = "cosy"

    [references]
    allowed_buckets = ["voxline-refs"]

    [backends.cosy]
    kind = "cosyvoice"
    url = "http://127.0.0.1:50000"
    max_in_flight = 12          # the window's ceiling: concurrent calls to this backend
    adaptive = true             # the default: find the window between min_ and max_in_flight
    text_limit = 300            # longer text is split at sentence boundaries
    timeout_s = 120
    retry_attempts = 5
    retry_timeout_s = 120
    api_key_env = "COSY_KEY"    # the key itself never goes in the file
    [backends.cosy.options]     # passed to the adapter
    version = 2
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from processor.backends.registry import DEFAULT_TEXT_LIMITS, KINDS
from processor.held import audio_window
from processor.lanes import Lane
from processor.quality import Thresholds, thresholds_from
from processor.ratelimit import RateConfig

#: A backend's rate limits (``processor.ratelimit``), each a number; 0 or absent: no limit. They are
#: the whole consumer group's: each member takes its share of the partitions.
RATE_KEYS = ("requests_per_s", "requests_burst", "chars_per_min", "chars_burst")

_BACKEND_KEYS = {
    "kind",
    "url",
    "api_key_env",
    "text_limit",
    "timeout_s",
    "connect_timeout_s",
    "max_in_flight",
    "min_in_flight",
    "initial_in_flight",
    "adaptive",
    "retry_attempts",
    "retry_timeout_s",
    "options",
    "lexicons",
    "mastering",
    *RATE_KEYS,
}
_TOP_KEYS = {
    "default_backend",
    "backends",
    "references",
    "max_records",
    "max_audio_records",
    "lanes",
    "quality",
}
_REFERENCE_KEYS = {"allowed_buckets", "max_bytes", "max_duration_s", "min_sample_rate"}


class ConfigError(ValueError):
    """The configuration file or settings are wrong; the message says where."""


#: Backends whose window stays fixed unless ``adaptive`` says otherwise: espeak-ng runs as a
#: local process per call, bounded by the CPU, with no server to overload. Every TTS server's
#: window is adaptive by default (it finds the server's capacity below ``max_in_flight``).
FIXED_WINDOW_KINDS = frozenset({"espeak"})


def adaptive_by_default(kind: str) -> bool:
    """Whether a backend of ``kind`` gets the adaptive window unless told otherwise."""
    return kind not in FIXED_WINDOW_KINDS


@dataclasses.dataclass(frozen=True, slots=True)
class BackendConfig:
    name: str
    kind: str
    url: str | None = None
    api_key: str | None = dataclasses.field(default=None, repr=False)
    text_limit: int = 1000
    timeout_s: float = 120.0
    connect_timeout_s: float = 5.0
    #: The window: fixed, or the ceiling of the adaptive one, which starts at
    #: ``initial_in_flight`` and never goes below ``min_in_flight``.
    max_in_flight: int = 8
    min_in_flight: int = 1
    initial_in_flight: int = 4
    adaptive: bool = True
    retry_attempts: int = 5
    retry_timeout_s: float = 60.0
    options: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    rate: RateConfig = dataclasses.field(default_factory=RateConfig)
    #: PLS lexicons (``s3://``) applied to every request to this backend, after the request's.
    lexicons: tuple[str, ...] = ()
    #: The mastering profile of requests that name none (``processor.mastering``).
    mastering: str = "none"


@dataclasses.dataclass(frozen=True, slots=True)
class ReferenceConfig:
    allowed_buckets: frozenset[str] = frozenset()
    max_bytes: int = 10 * 2**20
    max_duration_s: float = 30.0
    min_sample_rate: int = 16_000


@dataclasses.dataclass(frozen=True, slots=True)
class BackendsConfig:
    default: str
    backends: Mapping[str, BackendConfig]
    references: ReferenceConfig = ReferenceConfig()
    #: Records held by the consumer at once; 0: twice the backends' windows (at least 32).
    max_records: int = 0
    #: Priority lanes (``[[lanes]]``, ``processor.lanes``); none: one lane, the request topic.
    lanes: tuple[Lane, ...] = ()
    #: The quality gate (``[quality]``, ``processor.quality``); on unless ``enabled = false``.
    quality: Thresholds = dataclasses.field(default_factory=Thresholds)
    #: Records holding synthesized audio at once (``processor.held``); 0: a quarter of the
    #: backends' windows, at least 8.
    max_audio_records: int = 0

    @property
    def audio_window(self) -> int:
        if self.max_audio_records > 0:
            return self.max_audio_records
        return audio_window(sum(b.max_in_flight for b in self.backends.values()))

    @property
    def record_window(self) -> int:
        if self.max_records > 0:
            return self.max_records
        # Room for records waiting on a busy backend while the others keep their windows
        # full; much more makes records finish in convoys (the benchmark saw bursts of 4x).
        return max(32, 2 * sum(b.max_in_flight for b in self.backends.values()))


def single_backend(
    kind: str = "espeak",
    *,
    url: str | None = None,
    api_key: str | None = None,
    max_in_flight: int = 8,
    adaptive: bool | None = None,
    timeout_s: float = 120.0,
    retry_attempts: int = 5,
    retry_timeout_s: float = 60.0,
    max_records: int = 0,
    max_audio_records: int = 0,
    reference_buckets: frozenset[str] = frozenset(),
    quality: bool = True,
) -> BackendsConfig:
    """The one backend ``VOXLINE_BACKEND`` names, when there is no config file (``adaptive``
    None: the kind's default, :func:`adaptive_by_default`; ``quality``: the quality gate with
    its default bounds, ``VOXLINE_QUALITY``)."""
    if kind not in KINDS:
        raise ConfigError(f"VOXLINE_BACKEND: unknown backend {kind!r} (known: {', '.join(KINDS)})")
    if kind != "espeak" and not url:
        raise ConfigError(f"VOXLINE_BACKEND={kind} needs VOXLINE_BACKEND_URL")
    cfg = BackendConfig(
        name=kind,
        kind=kind,
        url=url,
        api_key=api_key,
        text_limit=DEFAULT_TEXT_LIMITS[kind],
        timeout_s=timeout_s,
        max_in_flight=max_in_flight,
        initial_in_flight=min(4, max_in_flight),
        adaptive=adaptive_by_default(kind) if adaptive is None else adaptive,
        retry_attempts=retry_attempts,
        retry_timeout_s=retry_timeout_s,
    )
    return BackendsConfig(
        default=kind,
        backends={kind: cfg},
        references=ReferenceConfig(allowed_buckets=reference_buckets),
        max_records=max_records,
        quality=Thresholds(enabled=quality),
        max_audio_records=max_audio_records,
    )


def load(path: str | Path, environ: Mapping[str, str] | None = None) -> BackendsConfig:
    """Read and check a TOML file; every error names the file and the key."""
    env = os.environ if environ is None else environ
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse(data, env, source=str(path))


def parse(
    data: Mapping[str, Any], env: Mapping[str, str], *, source: str = "config"
) -> BackendsConfig:
    _no_unknown(data, _TOP_KEYS, source)
    tables = data.get("backends")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f"{source}: [backends.NAME] tables are required (at least one)")
    backends = {name: _backend(name, table, env, source) for name, table in tables.items()}
    default = data.get("default_backend", next(iter(backends)))
    if default not in backends:
        raise ConfigError(
            f"{source}: default_backend {default!r} is not one of {', '.join(sorted(backends))}"
        )
    refs = data.get("references", {})
    if not isinstance(refs, dict):
        raise ConfigError(f"{source}: [references] must be a table")
    _no_unknown(refs, _REFERENCE_KEYS, f"{source}: [references]")
    references = ReferenceConfig(
        allowed_buckets=frozenset(_typed(refs, "allowed_buckets", list, [], source)),
        max_bytes=_typed(refs, "max_bytes", int, 10 * 2**20, source),
        max_duration_s=float(_typed(refs, "max_duration_s", (int, float), 30.0, source)),
        min_sample_rate=_typed(refs, "min_sample_rate", int, 16_000, source),
    )
    max_records = _typed(data, "max_records", int, 0, source)
    lanes = tuple(
        _lane(i, t, source) for i, t in enumerate(_typed(data, "lanes", list, [], source))
    )
    try:
        quality = thresholds_from(data.get("quality", {}), f"{source}: [quality]", env)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    held = _typed(data, "max_audio_records", int, 0, source)
    if held < 0:
        raise ConfigError(f"{source}: max_audio_records must be 0 (the default) or more")
    return BackendsConfig(default, backends, references, max_records, lanes, quality, held)


def _lane(index: int, table: Any, source: str) -> Lane:
    where = f"{source}: [[lanes]] #{index + 1}"
    if not isinstance(table, dict) or not isinstance(table.get("topic"), str):
        raise ConfigError(f"{where}: a table with a topic is required")
    _no_unknown(table, {"topic", "priority", "share"}, where)
    share = float(_typed(table, "share", (int, float), 0.0, where))
    if not 0 <= share < 1:
        raise ConfigError(f"{where}: share must be at least 0 and below 1")
    return Lane(table["topic"], _typed(table, "priority", int, 0, where), share)


def _backend(name: str, table: Any, env: Mapping[str, str], source: str) -> BackendConfig:
    where = f"{source}: [backends.{name}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    _no_unknown(table, _BACKEND_KEYS, where)
    kind = table.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where}: kind must be one of {', '.join(KINDS)}, not {kind!r}")
    url = _typed(table, "url", str, None, where)
    if kind != "espeak" and not url:
        raise ConfigError(f"{where}: url is required for kind {kind!r}")
    key_env = _typed(table, "api_key_env", str, None, where)
    if key_env is not None and key_env not in env:
        raise ConfigError(f"{where}: api_key_env names {key_env}, which is not set")
    max_in = _typed(table, "max_in_flight", int, 8, where)
    min_in = _typed(table, "min_in_flight", int, 1, where)
    initial = _typed(table, "initial_in_flight", int, min(4, max_in), where)
    if not 1 <= min_in <= initial <= max_in:
        raise ConfigError(f"{where}: need 1 <= min_in_flight <= initial_in_flight <= max_in_flight")
    options = _typed(table, "options", dict, {}, where)
    cfg = BackendConfig(
        name=name,
        kind=kind,
        url=url,
        api_key=env[key_env] if key_env else None,
        text_limit=_typed(table, "text_limit", int, DEFAULT_TEXT_LIMITS[kind], where),
        timeout_s=float(_typed(table, "timeout_s", (int, float), 120.0, where)),
        connect_timeout_s=float(_typed(table, "connect_timeout_s", (int, float), 5.0, where)),
        max_in_flight=max_in,
        min_in_flight=min_in,
        initial_in_flight=initial,
        adaptive=_typed(table, "adaptive", bool, adaptive_by_default(kind), where),
        retry_attempts=_typed(table, "retry_attempts", int, 5, where),
        retry_timeout_s=float(_typed(table, "retry_timeout_s", (int, float), 60.0, where)),
        mastering=_mastering(table, where),
        options=MappingProxyType(dict(options)),
        rate=RateConfig(**{k: float(_typed(table, k, (int, float), 0, where)) for k in RATE_KEYS}),
        lexicons=tuple(_typed(table, "lexicons", list, [], where)),
    )
    if not all(isinstance(u, str) and u.startswith("s3://") for u in cfg.lexicons):
        raise ConfigError(f"{where}: lexicons must be a list of s3://bucket/key strings")
    if min(dataclasses.astuple(cfg.rate)) < 0:
        raise ConfigError(f"{where}: {', '.join(RATE_KEYS)} must not be negative")
    if cfg.text_limit < 1 or cfg.retry_attempts < 1 or cfg.timeout_s <= 0:
        raise ConfigError(f"{where}: text_limit, retry_attempts and timeout_s must be positive")
    return cfg


def _typed(table: Mapping[str, Any], key: str, kind: Any, default: Any, where: str) -> Any:
    value = table.get(key, default)
    if value is default:
        return value
    # bool is an int in Python; a number where a bool is wanted (or back) is a mistake.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{where}: {key} has the wrong type ({type(value).__name__})")
    return value


def _no_unknown(table: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")


def _mastering(table: Mapping[str, Any], where: str) -> str:
    name = _typed(table, "mastering", str, "none", where)
    if name not in ("none", "ebu-r128", "podcast", "acx"):
        raise ConfigError(
            f"{where}: mastering must be none, ebu-r128, podcast or acx, not {name!r}"
        )
    return str(name)
