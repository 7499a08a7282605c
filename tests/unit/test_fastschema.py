"""The compiled check in front of jsonschema never passes a request jsonschema refuses."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor import fastschema, schemas_loader
from processor.schemas_loader import load_schema

SCHEMA = load_schema("request.v1.json")
CHECK = fastschema.compile_check(SCHEMA)
JSONSCHEMA = schemas_loader.validator(SCHEMA, formats=True)
GOOD: dict[str, Any] = {"request_id": "r-1", "text": "Hello."}


def test_the_request_schema_gets_a_compiled_check() -> None:
    assert CHECK is not None
    assert CHECK(GOOD)


def test_a_keyword_it_does_not_read_alike_gets_none() -> None:
    assert fastschema.compile_check({"type": "object", "$defs": {}}) is None
    assert fastschema.compile_check({"properties": {"a": {"dependentRequired": {}}}}) is None


@pytest.mark.parametrize(
    "change",
    [
        {"request_id": "r-1\n"},  # ECMA-262: `$` is the very end
        {"request_id": ""},
        {"text": " \n "},
        {"deadline": "2025-13-01T00:00:00Z"},  # matches the pattern, not a date
        {"deadline": "9999-12-31T23:59:59-01:00"},  # past year 9999 in UTC
        {"sample_rate": True},
        {"seed": 1.5},
        {"voice": {"reference": {"audio_uri": "s3://b/"}}},
        {"marks": ["sentence", "sentence"]},
        {"unknown": 1},
        {"metadata": {"k": 1}},
    ],
)
def test_it_refuses_what_jsonschema_refuses(change: dict[str, Any]) -> None:
    doc = {**GOOD, **change}
    assert not JSONSCHEMA.is_valid(doc)
    assert CHECK is not None
    assert not CHECK(doc)


def test_it_leaves_the_document_as_it_was() -> None:
    doc = dict(GOOD)
    assert CHECK is not None
    assert CHECK(doc)
    assert doc == GOOD  # no defaults filled in


fields = st.fixed_dictionaries(
    {"request_id": st.from_regex(r"[A-Za-z0-9._:-]{1,8}\n?", fullmatch=True)},
    optional={
        "text": st.text(max_size=5),
        "language": st.sampled_from(["auto", "en", "zh-CN", "EN", "e", "en\n"]),
        "sample_rate": st.sampled_from([16000, 16000.0, 7, True, "16000", 10**9]),
        "deadline": st.sampled_from(
            ["2025-06-01T12:00:00Z", "2025-06-01T12:00:60Z", "2025-02-30T00:00:00Z", "x", 5]
        ),
        "format": st.sampled_from(["wav", "mp3", "WAV", None]),
        "params": st.dictionaries(st.text(max_size=3), st.integers(), max_size=2) | st.none(),
        "marks": st.lists(st.sampled_from(["sentence", "word", "x"]), max_size=3),
        "metadata": st.dictionaries(st.text(max_size=3), st.text(max_size=3) | st.integers()),
    },
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields)
def test_it_never_passes_what_jsonschema_refuses(doc: dict[str, Any]) -> None:
    assert CHECK is not None
    if CHECK(doc):
        assert JSONSCHEMA.is_valid(doc), doc


def test_jsonschema_is_loaded_only_for_a_record_the_compiled_check_does_not_pass() -> None:
    """A processor whose requests are all valid never holds jsonschema (about 2.5 MiB)."""
    program = """
import sys
import processor.app, processor.ops.cli
from processor.errors import InvalidInput
from processor.request import parse_request
limits = dict(max_text_chars=1000, max_record_bytes=10_000)
parse_request(b'{"request_id": "a", "text": "Hello."}', **limits)
print("jsonschema" in sys.modules)
try:
    parse_request(b'{"request_id": "a"}', **limits)
except InvalidInput as exc:
    print(exc.message)
print("jsonschema" in sys.modules)
"""
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.splitlines() == ["False", "$.text: required field is missing", "True"]
