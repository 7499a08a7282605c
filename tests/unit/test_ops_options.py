"""The command line's settings flags: declared once, defaults from the settings types, and one
way from parsed flags to ``Settings``."""

from __future__ import annotations

import dataclasses
from typing import Any

import click
import pytest
from click.testing import CliRunner

from processor.config import single_backend
from processor.ops.cli import main
from processor.ops.options import (
    CACHE,
    DEFAULT_HTTP_PORT,
    KAFKA,
    RUN,
    STORE,
    USAGE,
    Setting,
    field_default,
    settings_from_options,
)
from processor.ops.run import run
from processor.settings import KafkaSettings, Settings, StoreSettings

SETTINGS = (*KAFKA, *RUN, *CACHE, *USAGE)


def _options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and p.name != "help"]


def _defaults(command: click.Command, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What ``command`` parses from no flags and an environment without its variables."""
    for opt in _options(command):
        if isinstance(opt.envvar, str):
            monkeypatch.delenv(opt.envvar, raising=False)
    with command.make_context(command.name, []) as ctx:
        return dict(ctx.params)


def test_every_run_option_has_its_own_environment_variable() -> None:
    options = _options(run)
    envvars = [opt.envvar for opt in options]
    assert all(isinstance(e, str) and e for e in envvars), envvars
    assert all(opt.show_envvar for opt in options)
    assert len(set(envvars)) == len(envvars)


def test_run_takes_each_setting_once() -> None:
    names = [opt.name for opt in _options(run)]
    assert len(set(names)) == len(names)
    assert names == [s.name for s in SETTINGS]


def test_the_defaults_are_the_settings_types_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = settings_from_options(_defaults(run, monkeypatch))
    # The one deliberate difference: the command line serves metrics unless told not to.
    assert parsed == dataclasses.replace(Settings(), http_port=DEFAULT_HTTP_PORT)
    assert parsed.backends == single_backend()


@pytest.mark.parametrize(
    ("setting", "owner", "field"),
    [(s, KafkaSettings, s.key) for s in KAFKA] + [(s, StoreSettings, s.key) for s in STORE],
    ids=lambda v: v.name if isinstance(v, Setting) else "",
)
def test_a_connection_flag_defaults_to_its_field(setting: Setting, owner: type, field: str) -> None:
    assert setting.default == field_default(owner, field)


def _other(opt: click.Option, default: Any) -> Any:
    """A valid value for ``opt`` that is not its default."""
    if isinstance(opt.type, click.Choice):
        return next(c for c in opt.type.choices if c != default)
    if opt.is_flag:
        return not default
    if isinstance(opt.type, click.types.IntParamType | click.types.FloatParamType):
        return default + 1
    return "somewhere-else"


@pytest.mark.parametrize("name", [s.name for s in SETTINGS if s.group != "config"])
def test_every_flag_reaches_the_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    values = _defaults(run, monkeypatch) | {"backend_url": "http://tts.invalid"}
    opt = next(o for o in _options(run) if o.name == name)
    before = settings_from_options(values)
    after = settings_from_options(values | {name: _other(opt, values[name])})
    assert after != before


def test_http_port_minus_one_turns_the_endpoint_off() -> None:
    assert settings_from_options({"http_port": -1}).http_port is None
    assert settings_from_options({"http_port": 0}).http_port == 0


def test_reference_buckets_are_a_comma_separated_list() -> None:
    parsed = settings_from_options({"reference_buckets": " refs, more,,"})
    assert parsed.backends.references.allowed_buckets == {"refs", "more"}


def test_values_that_are_no_setting_are_ignored() -> None:
    assert settings_from_options({"dry_run": True, "reasons": ("permanent",)}) == Settings()


def test_a_config_file_replaces_the_backend_flags(tmp_path: Any) -> None:
    path = tmp_path / "voxline.toml"
    path.write_text('[backends.main]\nkind = "openai"\nurl = "http://tts.invalid"\n')
    parsed = settings_from_options({"config_path": str(path), "backend": "qwen"})
    assert parsed.backends.default == "main"
    assert parsed.backends.backends["main"].kind == "openai"


def test_a_bad_backend_setting_is_a_message_not_a_traceback() -> None:
    result = CliRunner().invoke(main, ["run", "--backend", "openai"], env={"VOXLINE_CONFIG": None})
    assert result.exit_code == 1
    assert "VOXLINE_BACKEND=openai needs VOXLINE_BACKEND_URL" in result.output


@pytest.mark.parametrize("verb", [["submit"], ["dlq", "list"], ["dlq", "replay"], ["reconcile"]])
def test_the_tools_take_the_same_connection_flags_as_run(verb: list[str]) -> None:
    command: click.Command = main
    for word in verb:
        assert isinstance(command, click.Group)
        command = command.commands[word]
    theirs = {(o.name, o.envvar, o.default) for o in _options(command)}
    ours = {(o.name, o.envvar, o.default) for o in _options(run)}
    kafka = {s.name for s in KAFKA}
    assert {t for t in theirs if t[0] in kafka} == {o for o in ours if o[0] in kafka}
