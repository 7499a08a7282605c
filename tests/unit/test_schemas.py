"""The wire schemas, their examples, and ``parse_request`` agreeing with them."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jsonschema
import pytest

from processor import schemas_loader
from processor.errors import InvalidInput, Stage
from processor.request import best_effort_request_id, parse_request
from processor.schemas_loader import load_schema, parse_rfc3339

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
REQUESTS = SCHEMAS / "examples" / "request"
COMPLETIONS = SCHEMAS / "examples" / "completion"

# invalid/ file -> (stage, error_type, JSON path the message must contain, or None)
INVALID_REQUESTS: dict[str, tuple[Stage, str, str | None]] = {
    "not-json.txt": (Stage.DECODE, "not_json", None),
    "truncated.json": (Stage.DECODE, "not_json", None),
    "empty-file.json": (Stage.DECODE, "not_json", None),
    "not-utf8.json": (Stage.DECODE, "not_utf8", None),
    "nan-number.json": (Stage.DECODE, "not_json", None),
    "duplicate-key.json": (Stage.DECODE, "not_json", None),
    "array-instead-of-object.json": (Stage.DECODE, "not_object", None),
    "string-instead-of-object.json": (Stage.DECODE, "not_object", None),
    "missing-request-id.json": (Stage.VALIDATE, "schema", "$.request_id"),
    "missing-text.json": (Stage.VALIDATE, "schema", "$.text"),
    "request-id-bad-chars.json": (Stage.VALIDATE, "schema", "$.request_id"),
    "request-id-too-long.json": (Stage.VALIDATE, "schema", "$.request_id"),
    "request-id-not-string.json": (Stage.VALIDATE, "schema", "$.request_id"),
    "text-empty.json": (Stage.VALIDATE, "schema", "$.text"),
    "text-only-whitespace.json": (Stage.VALIDATE, "schema", "$.text"),
    "text-wrong-type.json": (Stage.VALIDATE, "schema", "$.text"),
    "text-too-long.json": (Stage.VALIDATE, "text_too_long", "$.text"),
    "format-unknown.json": (Stage.VALIDATE, "schema", "$.format"),
    "seed-negative.json": (Stage.VALIDATE, "schema", "$.seed"),
    "seed-float.json": (Stage.VALIDATE, "schema", "$.seed"),
    "seed-too-large.json": (Stage.VALIDATE, "schema", "$.seed"),
    "sample-rate-too-low.json": (Stage.VALIDATE, "schema", "$.sample_rate"),
    "language-bad.json": (Stage.VALIDATE, "schema", "$.language"),
    "backend-bad.json": (Stage.VALIDATE, "schema", "$.backend"),
    "params-nested-object.json": (Stage.VALIDATE, "schema", "$.params.speed"),
    "metadata-value-not-string.json": (Stage.VALIDATE, "schema", "$.metadata.attempt"),
    "metadata-too-many-keys.json": (Stage.VALIDATE, "schema", "$.metadata"),
    "unknown-top-level-field.json": (Stage.VALIDATE, "schema", "$.langauge"),
    "deadline-not-a-date.json": (Stage.VALIDATE, "schema", "$.deadline"),
    "deadline-no-timezone.json": (Stage.VALIDATE, "schema", "$.deadline"),
    "deadline-impossible-date.json": (Stage.VALIDATE, "schema", "$.deadline"),
    "voice-wrong-type.json": (Stage.VALIDATE, "schema", "$.voice"),
    "voice-unknown-field.json": (Stage.VALIDATE, "schema", "$.voice.speed"),
    "voice-preset-wrong-type.json": (Stage.VALIDATE, "schema", "$.voice.preset"),
    "reference-bad-uri.json": (Stage.VALIDATE, "schema", "$.voice.reference.audio_uri"),
    "reference-missing-uri.json": (Stage.VALIDATE, "schema", "$.voice.reference.audio_uri"),
    "text-type-unknown.json": (Stage.VALIDATE, "schema", "$.text_type"),
    "marks-unknown.json": (Stage.VALIDATE, "schema", "$.marks[1]"),
    "subtitles-unknown.json": (Stage.VALIDATE, "schema", "$.subtitles[0]"),
    "lexicons-not-s3.json": (Stage.VALIDATE, "schema", "$.lexicons[0]"),
}

# Schema-valid JSON that the processor still refuses (operator limits, I-JSON).
PROCESSOR_REJECTS: dict[str, tuple[Stage, str, str]] = {
    "metadata-over-4kib.json": (Stage.VALIDATE, "metadata_too_large", "$.metadata"),
    "lone-surrogate.json": (Stage.DECODE, "not_json", "$.text"),
}

# Contract (CONTRACT.md, "Completion event"): the fields each outcome carries.
SUCCEEDED_FIELDS = {
    "request_id",
    "status",
    "audio",
    "backend",
    "attempts",
    "chunks",
    "timings",
    "metadata",
}
FAILED_FIELDS = {
    "request_id",
    "status",
    "reason",
    "error",
    "dead_letter",
    "attempts",
    "metadata",
}
AUDIO_FIELDS = {"uri", "bytes", "sha256", "format", "sample_rate", "channels", "duration_ms"}
TIMING_FIELDS = {"queued_ms", "synth_ms", "store_ms", "total_ms"}


def _files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_file())


def _ids(paths: list[Path]) -> list[str]:
    return [path.name for path in paths]


def _reject(_: str) -> None:
    raise ValueError("not I-JSON")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({key for key, _ in pairs}) != len(pairs):
        raise ValueError("duplicate key")
    return dict(pairs)


def load_ijson(path: Path) -> Any:
    """Load a file as strict I-JSON: UTF-8, no NaN/Infinity, no duplicate keys."""
    return json.loads(
        path.read_bytes().decode("utf-8"), parse_constant=_reject, object_pairs_hook=_unique
    )


def _validator(name: str) -> jsonschema.protocols.Validator:
    return schemas_loader.validator(load_schema(name), formats=True)


def _subschemas(node: Any) -> Iterator[tuple[str, Any]]:
    """(name, schema) for every property and map-value schema, recursively."""
    if isinstance(node, dict):
        yield from node.get("properties", {}).items()
        if isinstance(node.get("additionalProperties"), dict):
            yield "additionalProperties", node["additionalProperties"]
        for value in node.values():
            yield from _subschemas(value)
    elif isinstance(node, list):
        for item in node:
            yield from _subschemas(item)


# --- the schemas themselves ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["request.v1.json", "completion.v1.json"])
def test_schema_is_valid_2020_12_with_id_and_descriptions(name: str) -> None:
    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://voxline.dev/schemas/{name}"
    undescribed = [field for field, sub in _subschemas(schema) if "description" not in sub]
    assert undescribed == []


def test_load_schema_refuses_paths() -> None:
    with pytest.raises(ValueError, match="not a schema file name"):
        load_schema("../pyproject.toml")


def test_request_schema_text_limit_is_the_parser_default() -> None:
    schema = load_schema("request.v1.json")
    assert schema["properties"]["text"]["maxLength"] == 20_000
    assert schema["additionalProperties"] is False
    assert schema["properties"]["voice"]["additionalProperties"] is False


def test_enough_examples() -> None:
    assert len(_files(REQUESTS / "valid")) >= 8
    assert len(_files(REQUESTS / "invalid")) >= 12
    assert {path.name for path in _files(REQUESTS / "invalid")} == set(INVALID_REQUESTS)
    assert {path.name for path in _files(REQUESTS / "processor-rejects")} == set(PROCESSOR_REJECTS)


# --- request examples: schema and parser agree --------------------------------------------

VALID_REQUESTS = _files(REQUESTS / "valid")


@pytest.mark.parametrize("path", VALID_REQUESTS, ids=_ids(VALID_REQUESTS))
def test_valid_request_example(path: Path) -> None:
    doc = load_ijson(path)
    _validator("request.v1.json").validate(doc)

    request = parse_request(path.read_bytes())

    voice = doc.get("voice", {})
    reference = voice.get("reference")
    assert request.request_id == doc["request_id"]
    assert request.text == doc["text"]
    assert request.voice.preset == voice.get("preset")
    assert request.voice.description == voice.get("description")
    if reference is None:
        assert request.voice.reference is None
    else:
        assert request.voice.reference is not None
        assert request.voice.reference.audio_uri == reference["audio_uri"]
        assert request.voice.reference.text == reference.get("text")
    assert request.language == doc.get("language", "auto")
    assert request.format == doc.get("format", "wav")
    assert request.sample_rate == doc.get("sample_rate")
    assert request.seed == doc.get("seed")
    assert request.backend == doc.get("backend")
    assert isinstance(request.params, MappingProxyType)
    assert request.params == doc.get("params", {})
    assert isinstance(request.metadata, MappingProxyType)
    assert request.metadata == doc.get("metadata", {})
    if "deadline" in doc:
        assert request.deadline == dt.datetime.fromisoformat(doc["deadline"])
        assert request.deadline is not None
        assert request.deadline.tzinfo is dt.UTC
    else:
        assert request.deadline is None
    assert best_effort_request_id(path.read_bytes()) == doc["request_id"]


INVALID_REQUEST_FILES = _files(REQUESTS / "invalid")


@pytest.mark.parametrize("path", INVALID_REQUEST_FILES, ids=_ids(INVALID_REQUEST_FILES))
def test_invalid_request_example(path: Path) -> None:
    stage, error_type, field = INVALID_REQUESTS[path.name]
    try:
        doc = load_ijson(path)
    except ValueError:
        assert stage is Stage.DECODE  # not I-JSON: no schema can accept it
    else:
        assert not _validator("request.v1.json").is_valid(doc)

    with pytest.raises(InvalidInput) as caught:
        parse_request(path.read_bytes())

    error = caught.value
    assert (error.stage, error.error_type) == (stage, error_type)
    assert len(error.message) <= 300
    if field is not None:
        assert error.message.startswith(field + ":") or error.message.startswith(field + " "), (
            error.message
        )


REJECTED_FILES = _files(REQUESTS / "processor-rejects")


@pytest.mark.parametrize("path", REJECTED_FILES, ids=_ids(REJECTED_FILES))
def test_schema_valid_but_rejected_by_processor(path: Path) -> None:
    stage, error_type, field = PROCESSOR_REJECTS[path.name]
    assert _validator("request.v1.json").is_valid(json.loads(path.read_bytes()))

    with pytest.raises(InvalidInput) as caught:
        parse_request(path.read_bytes())

    assert (caught.value.stage, caught.value.error_type) == (stage, error_type)
    assert caught.value.message.startswith(field + ":")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("request-id-bad-chars.json", None),
        ("voice-preset-wrong-type.json", "voice-preset"),
        ("truncated.json", "trunc-1"),
        ("not-utf8.json", "latin1"),  # found by the leading-member fallback
        ("array-instead-of-object.json", None),
        ("empty-file.json", None),
    ],
)
def test_best_effort_request_id(name: str, expected: str | None) -> None:
    assert best_effort_request_id((REQUESTS / "invalid" / name).read_bytes()) == expected


def test_best_effort_request_id_of_nothing() -> None:
    assert best_effort_request_id(None) is None


# --- parser specifics the examples do not pin down ----------------------------------------


def test_message_names_the_field_like_the_brief() -> None:
    value = b'{"request_id": "a", "text": "hi", "voice": {"preset": 3}}'
    with pytest.raises(InvalidInput, match=r"^\$\.voice\.preset: 3 is not of type 'string'$"):
        parse_request(value)


def test_text_limit_is_the_operators() -> None:
    value = json.dumps({"request_id": "long", "text": "a" * 25_000}).encode()
    assert len(parse_request(value, max_text_chars=30_000).text) == 25_000
    with pytest.raises(InvalidInput) as caught:
        parse_request(value)
    assert caught.value.error_type == "text_too_long"
    short = b'{"request_id": "short", "text": "hello world"}'
    with pytest.raises(InvalidInput, match="limit of 5"):
        parse_request(short, max_text_chars=5)


def test_metadata_limit_is_configurable() -> None:
    value = b'{"request_id": "m", "text": "hi", "metadata": {"k": "vvvv"}}'
    assert parse_request(value, max_metadata_bytes=5).metadata == {"k": "vvvv"}
    with pytest.raises(InvalidInput) as caught:
        parse_request(value, max_metadata_bytes=4)
    assert caught.value.error_type == "metadata_too_large"


def test_integral_floats_become_ints() -> None:
    request = parse_request(b'{"request_id": "f", "text": "hi", "seed": 7.0, "sample_rate": 16e3}')
    assert (request.seed, request.sample_rate) == (7, 16000)
    assert isinstance(request.seed, int)
    assert isinstance(request.sample_rate, int)


def test_request_id_with_trailing_newline_is_refused() -> None:
    # Python's `$` matches before a final newline; ECMA-262's (the schema's dialect) does not.
    with pytest.raises(InvalidInput, match=r"^\$\.request_id:"):
        parse_request(b'{"request_id": "abc\\n", "text": "hi"}')


def test_request_is_frozen() -> None:
    request = parse_request(b'{"request_id": "f", "text": "hi", "params": {"speed": 1}}')
    with pytest.raises(AttributeError):
        request.text = "changed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        request.params["speed"] = 2  # type: ignore[index]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2030-01-01T00:00:00Z", dt.datetime(2030, 1, 1, tzinfo=dt.UTC)),
        ("2030-01-01t01:30:00+01:30", dt.datetime(2030, 1, 1, tzinfo=dt.UTC)),
        ("2029-12-31T23:00:00-01:00", dt.datetime(2030, 1, 1, tzinfo=dt.UTC)),
        ("2030-01-01T00:00:00.1234567z", dt.datetime(2030, 1, 1, 0, 0, 0, 123456, dt.UTC)),
        ("2016-12-31T23:59:60Z", dt.datetime(2017, 1, 1, tzinfo=dt.UTC)),
    ],
)
def test_parse_rfc3339(text: str, expected: dt.datetime) -> None:
    assert parse_rfc3339(text) == expected
    assert parse_rfc3339(text).tzinfo is dt.UTC


@pytest.mark.parametrize(
    "text",
    [
        "2030-01-01T00:00:00",
        "2030-01-01 00:00:00Z",
        "2030-02-30T00:00:00Z",
        "2030-01-01T24:00:00Z",
        "2030-01-01T00:00:00+24:00",
        "9999-12-31T23:59:59-01:00",
        "2030-01-01",
        "٢٠٣٠-01-01T00:00:00Z",
    ],
)
def test_parse_rfc3339_refuses(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the contract is "a ValueError"
        parse_rfc3339(text)


# --- completion examples ------------------------------------------------------------------

VALID_COMPLETIONS = _files(COMPLETIONS / "valid")


@pytest.mark.parametrize("path", VALID_COMPLETIONS, ids=_ids(VALID_COMPLETIONS))
def test_valid_completion_example(path: Path) -> None:
    event = load_ijson(path)
    _validator("completion.v1.json").validate(event)
    assert path.name.startswith(event["status"])
    if event["status"] == "succeeded":
        assert set(event) == SUCCEEDED_FIELDS
        assert set(event["audio"]) == AUDIO_FIELDS
        assert set(event["timings"]) == TIMING_FIELDS
        assert event["audio"]["uri"].endswith(f"{event['request_id']}.{event['audio']['format']}")
    else:
        assert set(event) == FAILED_FIELDS
        assert set(event["error"]) == {"type", "message"}
        assert set(event["dead_letter"]) == {"topic", "partition", "offset"}


def test_completion_examples_cover_both_outcomes() -> None:
    statuses = {load_ijson(path)["status"] for path in VALID_COMPLETIONS}
    assert statuses == {"succeeded", "failed"}


def test_failed_example_carries_a_real_parser_message() -> None:
    event = load_ijson(COMPLETIONS / "valid" / "failed-invalid-input.json")
    with pytest.raises(InvalidInput) as caught:
        parse_request((REQUESTS / "invalid" / "unknown-top-level-field.json").read_bytes())
    assert event["error"] == {"type": caught.value.error_type, "message": caught.value.message}


INVALID_COMPLETIONS = _files(COMPLETIONS / "invalid")


@pytest.mark.parametrize("path", INVALID_COMPLETIONS, ids=_ids(INVALID_COMPLETIONS))
def test_invalid_completion_example(path: Path) -> None:
    assert not _validator("completion.v1.json").is_valid(load_ijson(path))
