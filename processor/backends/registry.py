"""Every backend kind, once: its default text limit, whether it needs a URL, how it is built.

Adding a backend is one module in this package plus one line in ``_KINDS``. The CLI's choice
list and the configuration's checks read ``KINDS`` and ``REGISTRY``; the composition root calls
``build``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import httpx

from processor.backends.base import Backend
from processor.backends.cosyvoice import CosyVoiceBackend
from processor.backends.espeak import EspeakBackend
from processor.backends.fish import FishSpeechBackend
from processor.backends.openai import OpenAIBackend
from processor.backends.qwen import QwenTTSBackend

if TYPE_CHECKING:
    from processor.config import BackendConfig

Factory = Callable[["BackendConfig"], Backend]


@dataclasses.dataclass(frozen=True, slots=True)
class Kind:
    """A backend family as configuration sees it."""

    name: str
    #: Texts longer than this are split into chunks before synthesis.
    text_limit: int
    needs_url: bool
    factory: Factory


def _espeak(conf: BackendConfig) -> Backend:
    return EspeakBackend(conf.name, timeout=conf.timeout_s, **conf.options)


def _server(adapter: Callable[..., Backend], *, api_key: bool = True) -> Factory:
    """A factory for an HTTP adapter: its URL, timeouts, pool size (the window), key, options."""

    def build(conf: BackendConfig) -> Backend:
        http: dict[str, Any] = {
            "timeout": httpx.Timeout(conf.timeout_s, connect=conf.connect_timeout_s),
            "max_connections": conf.max_in_flight,
        }
        if api_key:
            http["api_key"] = conf.api_key
        return adapter(conf.name, conf.url or "", **http, **conf.options)

    return build


_KINDS = (
    Kind("espeak", 1000, needs_url=False, factory=_espeak),
    Kind("openai", 4096, needs_url=True, factory=_server(OpenAIBackend)),
    Kind("cosyvoice", 300, needs_url=True, factory=_server(CosyVoiceBackend, api_key=False)),
    Kind("fish", 1000, needs_url=True, factory=_server(FishSpeechBackend)),
    Kind("qwen", 500, needs_url=True, factory=_server(QwenTTSBackend)),
)

REGISTRY: Mapping[str, Kind] = MappingProxyType({kind.name: kind for kind in _KINDS})
#: The kind names, in the order the CLI lists them.
KINDS: tuple[str, ...] = tuple(REGISTRY)
DEFAULT_TEXT_LIMITS: Mapping[str, int] = MappingProxyType(
    {kind.name: kind.text_limit for kind in _KINDS}
)


def build(conf: BackendConfig) -> Backend:
    """The adapter for ``conf``; ``ConfigError`` naming the table for an unknown kind, a
    missing URL, or an option the adapter does not take (or takes another value of)."""
    from processor.config import ConfigError  # config imports this module

    kind = REGISTRY.get(conf.kind)
    if kind is None:
        raise ConfigError(f"[backends.{conf.name}]: unknown kind {conf.kind!r}")
    if kind.needs_url and not conf.url:
        raise ConfigError(f"[backends.{conf.name}]: url is required for kind {conf.kind!r}")
    try:
        return kind.factory(conf)
    except (TypeError, ValueError) as exc:  # an unknown or ill-valued key under options
        raise ConfigError(f"[backends.{conf.name}.options]: {exc}") from exc
