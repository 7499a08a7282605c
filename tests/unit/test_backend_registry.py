"""The registry (``processor/backends/registry.py``): one entry per kind, and ``build`` turning a
backend's configuration into its adapter."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest

from processor.backends.cosyvoice import CosyVoiceBackend
from processor.backends.espeak import EspeakBackend
from processor.backends.fish import FishSpeechBackend
from processor.backends.openai import OpenAIBackend
from processor.backends.qwen import QwenTTSBackend
from processor.backends.registry import DEFAULT_TEXT_LIMITS, KINDS, REGISTRY, build
from processor.config import BackendConfig, ConfigError
from processor.errors import Transient
from tests.fakes.openai_server import running_fake
from tests.unit.backend_helpers import utterance

pytestmark = pytest.mark.timeout(30)

URL = "http://127.0.0.1:9"


def conf(kind: str, **fields: Any) -> BackendConfig:
    fields.setdefault("url", None if kind == "espeak" else URL)
    return BackendConfig(name=f"my-{kind}", kind=kind, **fields)


def test_the_kinds_and_their_text_limits() -> None:
    assert KINDS == ("espeak", "openai", "cosyvoice", "fish", "qwen")
    assert dict(DEFAULT_TEXT_LIMITS) == {
        "espeak": 1000,
        "openai": 4096,
        "cosyvoice": 300,
        "fish": 1000,
        "qwen": 500,
    }
    assert tuple(kind for kind in KINDS if REGISTRY[kind].needs_url) == KINDS[1:]


@pytest.mark.parametrize(
    ("kind", "adapter"),
    [
        ("espeak", EspeakBackend),
        ("openai", OpenAIBackend),
        ("cosyvoice", CosyVoiceBackend),
        ("fish", FishSpeechBackend),
        ("qwen", QwenTTSBackend),
    ],
)
async def test_build_makes_the_kinds_adapter_under_the_configured_name(
    kind: str, adapter: type[Any]
) -> None:
    async with contextlib.aclosing(build(conf(kind))) as backend:
        assert isinstance(backend, adapter)
        assert backend.name == f"my-{kind}"


async def test_options_reach_the_adapter() -> None:
    options = {"version": 1, "default_speaker": "中文女"}

    async with contextlib.aclosing(build(conf("cosyvoice", options=options))) as backend:
        assert isinstance(backend, CosyVoiceBackend)
        assert (backend.version, backend.sample_rate) == (1, 22050)


async def test_the_key_and_timeout_reach_the_http_adapter() -> None:
    async with running_fake(api_key="sk-1", latency_ms=2000) as fake:
        backend = build(conf("openai", url=fake.url, api_key="sk-1", timeout_s=0.3))
        started = time.monotonic()
        async with contextlib.aclosing(backend):
            with pytest.raises(Transient) as caught:
                await backend.synthesize(utterance())

        assert caught.value.error_type == "timeout"
        assert time.monotonic() - started < 1.5
        assert fake.stats()["last_authorization"] == "Bearer sk-1"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (conf("openai", options={"voice": "x"}), "[backends.my-openai.options]: "),
        (conf("cosyvoice", options={"version": 4}), "[backends.my-cosyvoice.options]: "),
        (conf("qwen", options={"default_speaker": "nobody"}), "[backends.my-qwen.options]: "),
        (conf("espeak", options={"max_concurrency": 0}), "[backends.my-espeak.options]: "),
        (conf("openai", url=None), "[backends.my-openai]: url is required for kind 'openai'"),
        (conf("festival"), "[backends.my-festival]: unknown kind 'festival'"),
    ],
)
def test_a_wrong_configuration_is_a_config_error_naming_the_table(
    config: BackendConfig, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        build(config)

    assert str(caught.value).startswith(message)
