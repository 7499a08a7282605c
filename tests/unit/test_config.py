"""The backends configuration: the example file parses, and every mistake is named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from processor import config
from processor.backends.registry import KINDS
from processor.config import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "voxline.toml"


def test_the_example_file_declares_every_family() -> None:
    conf = config.load(EXAMPLE, {"FISH_API_KEY": "s3cr3t-key"})
    assert conf.default == "espeak"
    assert {b.kind for b in conf.backends.values()} == set(KINDS)
    cosy = conf.backends["cosy"]
    assert cosy.adaptive
    assert (cosy.min_in_flight, cosy.max_in_flight) == (1, 16)
    assert cosy.options["version"] == 2
    assert conf.backends["fish"].api_key == "s3cr3t-key"
    assert "s3cr3t-key" not in repr(conf.backends["fish"]), "keys stay out of reprs and logs"
    assert conf.references.allowed_buckets == {"voxline-refs"}
    assert conf.record_window == 2 * (2 + 16 + 2 + 8 + 4)


def test_environment_gives_one_backend() -> None:
    conf = config.single_backend(
        "openai", url="http://x", max_in_flight=6, retry_attempts=3, retry_timeout_s=9.0
    )
    (only,) = conf.backends.values()
    assert (only.kind, only.max_in_flight, only.text_limit) == ("openai", 6, 4096)
    assert conf.record_window == 32


def minimal(**backend: Any) -> dict[str, Any]:
    return {"backends": {"b": {"kind": "openai", "url": "http://x", **backend}}}


@pytest.mark.parametrize(
    ("data", "env", "needle"),
    [
        ({}, {}, "[backends.NAME] tables are required"),
        ({"backends": {"b": {"kind": "nope"}}}, {}, "kind must be one of"),
        ({"backends": {"b": {"kind": "openai"}}}, {}, "url is required"),
        (minimal(colour="red"), {}, "unknown key(s) colour"),
        (minimal(max_in_flight="8"), {}, "max_in_flight has the wrong type"),
        (minimal(adaptive=1), {}, "adaptive has the wrong type"),
        (minimal(max_in_flight=True), {}, "max_in_flight has the wrong type"),
        (minimal(min_in_flight=5, max_in_flight=4), {}, "min_in_flight <= initial_in_flight"),
        (minimal(api_key_env="NOPE"), {}, "NOPE, which is not set"),
        (minimal(text_limit=0), {}, "must be positive"),
        ({**minimal(), "default_backend": "zz"}, {}, "default_backend 'zz' is not one of b"),
        ({**minimal(), "extra": 1}, {}, "unknown key(s) extra"),
        ({**minimal(), "references": {"allowed": []}}, {}, "unknown key(s) allowed"),
    ],
)
def test_mistakes_are_named(data: dict[str, Any], env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.parse(data, env, source="f.toml")
    assert needle in str(err.value)
    assert str(err.value).startswith("f.toml")


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[backends\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(bad)


def test_unknown_environment_backend() -> None:
    with pytest.raises(ConfigError, match="unknown backend"):
        config.single_backend("x")
    with pytest.raises(ConfigError, match="needs VOXLINE_BACKEND_URL"):
        config.single_backend("fish")
