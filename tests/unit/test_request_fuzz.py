"""``parse_request`` on hostile input: a ``Request`` or ``InvalidInput``, never anything else."""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor import schemas_loader
from processor.errors import InvalidInput, Stage
from processor.request import Request, best_effort_request_id, parse_request
from processor.schemas_loader import load_schema

ERROR_TYPES = {
    Stage.DECODE: {"record_too_large", "not_utf8", "not_json", "not_object"},
    Stage.VALIDATE: {"schema", "text_too_long", "metadata_too_large"},
}
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
SCHEMA = schemas_loader.validator(load_schema("request.v1.json"), formats=True)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(value: bytes | None) -> Request | InvalidInput:
    """Parse, and check everything a caller may rely on when it fails."""
    found = best_effort_request_id(value)
    assert found is None or REQUEST_ID.fullmatch(found)
    try:
        return parse_request(value)
    except InvalidInput as error:
        caught = error
    assert caught.error_type in ERROR_TYPES[caught.stage]
    assert isinstance(caught.message, str)
    assert 0 < len(caught.message) <= 1024
    caught.message.encode("utf-8")  # it must fit in a header and in JSON
    return caught


# --- strategies ---------------------------------------------------------------------------

safe_text = st.text(st.characters(codec="utf-8"), max_size=30)
finite = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.none() | st.booleans() | st.integers() | finite | safe_text
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(safe_text, children),
    max_leaves=20,
)


def maybe(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly plausible values (9 in 10), sometimes anything at all."""
    # one_of(good, good, ..., json_values) would not weight: identical branches are merged.
    # integers(0, 9) would not either: hypothesis favours the bounds.
    return st.sampled_from(range(10)).flatmap(lambda n: json_values if n == 9 else good)


zones = st.sampled_from(
    [dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)), dt.timezone(dt.timedelta(hours=-8))]
)
deadlines = st.datetimes(timezones=zones).map(dt.datetime.isoformat) | st.sampled_from(
    [
        "2030-01-01T00:00:00Z",
        "2030-01-01t00:00:00.5z",
        "2016-12-31T23:59:60Z",
        "2030-01-01T00:00:00",
        "2030-02-30T00:00:00Z",
        "2030-01-01 00:00:00Z",
        "tomorrow",
        "2030-01-01T00:00:00Z\n",
    ]
)
references = st.fixed_dictionaries(
    {"audio_uri": maybe(st.sampled_from(["s3://b/k.wav", "s3://b/", "s3:///k", "http://x/y"]))},
    optional={"text": maybe(safe_text)},
)
voices = st.fixed_dictionaries(
    {},
    optional={
        "preset": maybe(safe_text),
        "description": maybe(safe_text),
        "reference": maybe(references),
    },
)
request_ids = st.from_regex(r"[A-Za-z0-9._:-]{1,130}", fullmatch=True)
texts = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30)
optional_fields = {
    "voice": maybe(voices),
    "language": maybe(st.sampled_from(["auto", "en", "zh-Hans", "pt-BR", "EN", "e", "en\n"])),
    "format": maybe(st.sampled_from(["wav", "mp3", "flac", "opus", "pcm", "ogg", "WAV"])),
    "sample_rate": maybe(st.integers(8000, 192_000) | st.sampled_from([0, 7999, 192_001, 16e3])),
    "seed": maybe(st.integers(0, 2**32 - 1) | st.sampled_from([-1, 2**32, 7.0, 1.5])),
    "params": maybe(st.dictionaries(safe_text, scalars | json_values, max_size=4)),
    "backend": maybe(st.sampled_from(["espeak", "qwen3-tts", "Bad Name", "", "a" * 65])),
    "deadline": maybe(deadlines),
    "metadata": maybe(st.dictionaries(safe_text, maybe(safe_text), max_size=70)),
}
#: Mostly well-formed requests with some fields wrong, so both outcomes are common.
near_valid_docs = st.fixed_dictionaries(
    {"request_id": maybe(request_ids), "text": maybe(texts)}, optional=optional_fields
)
#: Anything goes, required fields included.
wild_docs = st.fixed_dictionaries(
    {},
    optional={
        "request_id": json_values | request_ids,
        "text": json_values,
        "langauge": json_values,
        **optional_fields,
        "voice": json_values | voices.map(lambda voice: {**voice, "style": "calm"}),
    },
)
request_docs = st.sampled_from(range(4)).flatmap(lambda n: wild_docs if n == 3 else near_valid_docs)


# --- properties ---------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes(value: bytes) -> None:
    outcome(value)


@FUZZ
@given(json_values, st.booleans())
def test_random_json_values(doc: Any, ascii_only: bool) -> None:
    result = outcome(json.dumps(doc, ensure_ascii=ascii_only).encode())
    if not isinstance(doc, dict):
        assert isinstance(result, InvalidInput)
        assert result.stage is Stage.DECODE


@FUZZ
@given(request_docs, st.booleans())
def test_parser_agrees_with_schema(doc: dict[str, Any], ascii_only: bool) -> None:
    result = outcome(json.dumps(doc, ensure_ascii=ascii_only).encode())

    expect_ok = SCHEMA.is_valid(doc)
    if expect_ok and "metadata" in doc:
        size = sum(len(k.encode()) + len(v.encode()) for k, v in doc["metadata"].items())
        expect_ok = size <= 4096
    if expect_ok:
        assert isinstance(result, Request), result
        assert result.request_id == doc["request_id"]
        assert result.text == doc["text"]
        assert result.metadata == doc.get("metadata", {})
        assert result.params == doc.get("params", {})
        assert result.seed == doc.get("seed")
        assert result.deadline is None or result.deadline.tzinfo is dt.UTC
    else:
        assert isinstance(result, InvalidInput), doc
        assert result.stage is Stage.VALIDATE


surrogate_pieces = st.sampled_from(
    ["a", "é", "\\u00e9", "\\ud800", "\\udfff", "\\ud83d", "\\ude00", "\\ud83d\\ude00", "\\\\ud800"]
)


@FUZZ
@given(st.lists(surrogate_pieces, min_size=1, max_size=6), st.sampled_from(["text", "key"]))
def test_surrogate_escapes(pieces: list[str], where: str) -> None:
    literal = "".join(pieces)
    if where == "text":
        raw = f'{{"request_id": "s", "text": "{literal}"}}'
    else:
        raw = f'{{"request_id": "s", "text": "t", "metadata": {{"{literal}": "v"}}}}'
    decoded = json.loads(raw)
    try:
        json.dumps(decoded, ensure_ascii=False).encode("utf-8")
        lone = False
    except UnicodeEncodeError:
        lone = True

    result = outcome(raw.encode())

    if lone:
        assert isinstance(result, InvalidInput)
        assert (result.stage, result.error_type) == (Stage.DECODE, "not_json")
        assert "surrogate" in result.message
    else:
        assert isinstance(result, Request)


@FUZZ
@given(st.text(st.characters(max_codepoint=0x1F), min_size=1, max_size=20))
def test_control_characters(controls: str) -> None:
    escaped = json.dumps({"request_id": "c", "text": "x" + controls})
    parsed = outcome(escaped.encode())
    assert isinstance(parsed, Request)
    assert parsed.text == "x" + controls
    # Unescaped, they are not allowed inside JSON strings (RFC 8259 section 7).
    raw = '{"request_id": "c", "text": "x' + controls + '"}'
    assert isinstance(outcome(raw.encode()), InvalidInput)


# --- targeted cases -----------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1_000, 10_000, 100_000])
@pytest.mark.parametrize(
    "template",
    [
        "{nest}",
        '{{"request_id": "d", "text": "t", "voice": {nest}}}',
        '{{"request_id": "d", "text": "t", "params": {{"p": {nest}}}}}',
        '{{"request_id": "d", "text": "t", "metadata": {{"m": {nest}}}}}',
        '{{"request_id": "d", "text": "t", "zz": {nest}}}',
    ],
)
@pytest.mark.parametrize(("opening", "closing"), [("[", "]"), ('{"a": ', "}")])
def test_deep_nesting(depth: int, template: str, opening: str, closing: str) -> None:
    raw = template.format(nest=opening * depth + "1" + closing * depth)
    result = outcome(raw.encode())
    assert isinstance(result, InvalidInput)
    assert result.stage in (Stage.DECODE, Stage.VALIDATE)


def test_nesting_around_the_recursion_limit() -> None:
    # Depths the decoder just manages, where only the validator (or its messages) runs out.
    limit = sys.getrecursionlimit()
    for depth in range(max(1, limit - 120), limit + 20, 7):
        nest = "[" * depth + "]" * depth
        result = outcome(f'{{"request_id": "d", "text": "t", "voice": {nest}}}'.encode())
        assert isinstance(result, InvalidInput)


def _at_stack_depth(frames: int, value: bytes) -> Request | InvalidInput:
    return outcome(value) if frames == 0 else _at_stack_depth(frames - 1, value)


def test_deep_nesting_from_a_deep_call_stack() -> None:
    nest = "[" * 400 + "]" * 400
    value = f'{{"request_id": "d", "text": "t", "seed": {nest}}}'.encode()
    for frames in (0, 200, 400, 600):
        assert isinstance(_at_stack_depth(frames, value), InvalidInput)


@pytest.mark.parametrize(
    "doc",
    [
        {"request_id": "h", "text": "x" * 1_000_000},
        {"request_id": "h" * 1_000_000, "text": "t"},
        {"request_id": "h", "text": "t", "metadata": {"k": "v" * 1_000_000}},
        {"request_id": "h", "text": "t", "metadata": {"k" * 1_000_000: "v"}},
        {"request_id": "h", "text": "t", "voice": {"preset": "p" * 1_000_000}},
        {"request_id": "h", "text": "t", "seed": "9" * 1_000_000},
        {"request_id": "h", "text": "t", "k" * 1_000_000: 1},
        {"request_id": "h", "text": "t", "params": {"p": ["x" * 1_000] * 1_000}},
    ],
)
def test_huge_values_give_short_messages(doc: dict[str, Any]) -> None:
    result = outcome(json.dumps(doc).encode())
    assert isinstance(result, InvalidInput)
    assert len(result.message) <= 300


@pytest.mark.parametrize(
    "raw",
    [
        b'{"request_id": "n", "text": "t", "seed": ' + b"1" * 5000 + b"}",
        b'{"request_id": "n", "text": "t", "seed": 1e400}',
        b'{"request_id": "n", "text": "t", "seed": -Infinity}',
        b'{"request_id": "n", "text": "t", "params": {"x": NaN}}',
        b'\xef\xbb\xbf{"request_id": "n", "text": "t"}',
        b'{"request_id": "n", "text": "t"} trailing',
        b'{"request_id": "n", "text": "t", "request_id": "m"}',
        b'{"request_id": "n", "text": "\xed\xa0\x80"}',
        b"\x00",
        b"null",
    ],
)
def test_odd_json_is_a_decode_error(raw: bytes) -> None:
    result = outcome(raw)
    assert isinstance(result, InvalidInput)
    assert result.stage is Stage.DECODE


def test_an_oversized_record_is_refused_before_decoding() -> None:
    value = b'{"request_id": "big", "text": "' + b"a" * 300_000 + b'"}'
    with pytest.raises(InvalidInput) as err:
        parse_request(value, max_text_chars=1_000_000, max_record_bytes=256 * 1024)
    assert err.value.error_type == "record_too_large"
    assert err.value.stage is Stage.DECODE
    assert parse_request(value, max_text_chars=1_000_000, max_record_bytes=400_000).text
