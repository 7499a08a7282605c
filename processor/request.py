"""The synthesis request: parsed once at the edge into frozen values.

``parse_request`` turns a record value into a ``Request`` or raises ``InvalidInput`` with a
message naming the offending field. Its rules are ``schemas/request.v1.json`` plus the
operator's limits (text length, metadata size).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import functools
import json
import math
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NoReturn

from processor import fastschema, schemas_loader
from processor.errors import InvalidInput, Stage
from processor.request_ids import best_effort_request_id as best_effort_request_id
from processor.request_ids import request_id_of as request_id_of
from processor.schemas_loader import load_schema

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError
    from jsonschema.protocols import Validator

_EMPTY: Mapping[str, object] = MappingProxyType({})
_EMPTY_STR: Mapping[str, str] = MappingProxyType({})


@dataclasses.dataclass(frozen=True, slots=True)
class Reference:
    """A clone prompt: reference audio in the store and, optionally, its transcript."""

    audio_uri: str
    text: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Voice:
    """Who speaks: a named speaker, a designed voice (instruct), a clone prompt, or defaults."""

    preset: str | None = None
    description: str | None = None
    reference: Reference | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    request_id: str
    text: str
    voice: Voice = Voice()
    language: str = "auto"
    format: str = "wav"
    sample_rate: int | None = None
    seed: int | None = None
    # default_factory: on 3.11 a mappingproxy is unhashable, which dataclasses reject as a default
    params: Mapping[str, object] = dataclasses.field(default_factory=lambda: _EMPTY)
    backend: str | None = None
    deadline: dt.datetime | None = None
    metadata: Mapping[str, str] = dataclasses.field(default_factory=lambda: _EMPTY_STR)
    cache: str = "use"  # the chunk cache: use | refresh | bypass (processor.cache)
    text_type: str = "text"  # text | ssml (processor.ssml)
    lexicons: tuple[str, ...] = ()  # s3:// PLS files (processor.lexicon)
    marks: frozenset[str] = frozenset()  # sentence | ssml | word (processor.marks)
    subtitles: frozenset[str] = frozenset()  # srt | vtt (processor.subtitles)
    mastering: str | None = None  # none | ebu-r128 | podcast | acx; None: the backend's default


#: Longest error message ``parse_request`` produces (it also lands in a dead-letter header).
MAX_MESSAGE_CHARS = 300
#: Defaults of the operator limits (the contract's "20,000" and "4 KiB").
DEFAULT_MAX_TEXT_CHARS = 20_000
DEFAULT_MAX_METADATA_BYTES = 4096
#: A request is JSON around at most 20,000 characters of text (up to 4 bytes each in UTF-8).
DEFAULT_MAX_RECORD_BYTES = 256 * 1024

_SCHEMA = load_schema("request.v1.json")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SIMPLE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DEADLINE_HINT = "is not an RFC 3339 date-time with a time zone, e.g. 2025-06-01T12:00:00Z"


def _runtime_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    # The schema's text maxLength documents the default; the operator's max_text_chars rules.
    runtime = copy.deepcopy(dict(schema))
    del runtime["properties"]["text"]["maxLength"]
    return runtime


@functools.cache
def _validator() -> Validator:
    """jsonschema's validator, made (and jsonschema imported) for the first record that the
    compiled check does not pass."""
    return schemas_loader.validator(_runtime_schema(_SCHEMA), formats=True)


#: The compiled yes/no in front of :func:`_validator` (processor.fastschema): most records are
#: valid, and jsonschema still judges and words every one it does not pass.
_VALID = fastschema.compile_check(_runtime_schema(_SCHEMA))


def parse_request(
    value: bytes | None,
    *,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> Request:
    """Decode and validate a request record's value into a ``Request``.

    Raises ``InvalidInput`` and nothing else: at stage ``decode`` (error types
    ``record_too_large``, ``not_utf8``, ``not_json``, ``not_object``) or ``validate``
    (``schema``, ``text_too_long``, ``metadata_too_large``), with a message of at most
    ``MAX_MESSAGE_CHARS`` characters that names the offending field as a JSON path where there
    is one.
    """
    if value is not None and len(value) > max_record_bytes:
        # Checked before decoding: a huge record costs nothing to refuse.
        raise InvalidInput(
            f"$: record is {len(value)} bytes, more than the {max_record_bytes} allowed",
            stage=Stage.DECODE,
            error_type="record_too_large",
        )
    doc = _decode(value)
    _validate(doc)
    _check_limits(doc, max_text_chars, max_metadata_bytes)
    return _build(doc)


class _NotIJson(ValueError):
    """Valid JSON grammar that we still refuse (I-JSON, RFC 7493)."""


def _reject_constant(name: str) -> NoReturn:
    raise _NotIJson(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _NotIJson(f"number {_clip(text, 40)} is out of range")
    return number


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _NotIJson(f"duplicate key {_show(key)}")
            seen.add(key)
    return obj


_DECODER = json.JSONDecoder(
    parse_float=_finite_float, parse_constant=_reject_constant, object_pairs_hook=_unique_keys
)


def _decode(value: bytes | None) -> dict[str, Any]:
    if not value:
        raise _decode_error("not_json", "$: record value is empty (null or zero bytes)")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        message = f"$: not valid UTF-8 ({exc.reason} at byte {exc.start})"
        raise _decode_error("not_utf8", message) from None
    try:
        doc = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise _decode_error("not_json", f"$: not valid JSON: {exc.msg} ({where})") from None
    except _NotIJson as exc:
        raise _decode_error("not_json", f"$: not valid JSON: {exc}") from None
    except ValueError:  # int() refuses more digits than sys.get_int_max_str_digits()
        raise _decode_error("not_json", "$: not valid JSON: a number has too many digits") from None
    except RecursionError:
        raise _decode_error("not_json", "$: not valid JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise _decode_error("not_object", f"$: expected a JSON object, got {_json_type(doc)}")
    if "\\u" in text:  # lone surrogates can only come from \u escapes
        _reject_lone_surrogates(doc)
    return doc


def _decode_error(error_type: str, message: str) -> InvalidInput:
    return InvalidInput(_clip(message), stage=Stage.DECODE, error_type=error_type)


def _reject_lone_surrogates(doc: dict[str, Any]) -> None:
    # Iterative, so that nesting as deep as the decoder allowed cannot overflow the stack here.
    stack: list[tuple[object, tuple[str | int, ...]]] = [(doc, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            for key, item in node.items():
                if _SURROGATE.search(key):
                    raise _decode_error("not_json", f"{_json_path(path)}: key {_SURROGATE_MSG}")
                stack.append((item, (*path, key)))
        elif isinstance(node, list):
            stack.extend((item, (*path, index)) for index, item in enumerate(node))
        elif isinstance(node, str) and _SURROGATE.search(node):
            raise _decode_error("not_json", f"{_json_path(path)}: {_SURROGATE_MSG}")


_SURROGATE_MSG = "contains a lone surrogate escape (e.g. \\ud800), which has no UTF-8 encoding"


def _validate(doc: dict[str, Any]) -> None:
    if _VALID is not None and _VALID(doc):
        return
    try:
        from jsonschema.exceptions import best_match

        error = best_match(_validator().iter_errors(doc))
    except RecursionError:
        error = None
        message = "$: nested too deeply"
    else:
        if error is None:
            return
        message = _describe(error)
    raise InvalidInput(_clip(message), stage=Stage.VALIDATE, error_type="schema")


def _check_limits(doc: dict[str, Any], max_text_chars: int, max_metadata_bytes: int) -> None:
    text_chars = len(doc["text"])
    if text_chars > max_text_chars:
        message = f"$.text: {text_chars} characters, more than the limit of {max_text_chars}"
        raise InvalidInput(message, stage=Stage.VALIDATE, error_type="text_too_long")
    metadata: dict[str, str] = doc.get("metadata", {})
    size = sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())
    if size > max_metadata_bytes:
        message = f"$.metadata: {size} bytes of UTF-8, more than the limit of {max_metadata_bytes}"
        raise InvalidInput(message, stage=Stage.VALIDATE, error_type="metadata_too_large")


def _build(doc: dict[str, Any]) -> Request:
    deadline = doc.get("deadline")
    return Request(
        request_id=doc["request_id"],
        text=doc["text"],
        voice=_voice(doc.get("voice")),
        language=doc.get("language", "auto"),
        format=doc.get("format", "wav"),
        sample_rate=_int_or_none(doc.get("sample_rate")),
        seed=_int_or_none(doc.get("seed")),
        params=MappingProxyType(dict(doc.get("params", {}))),
        backend=doc.get("backend"),
        deadline=None if deadline is None else schemas_loader.parse_rfc3339(deadline),
        metadata=MappingProxyType(dict(doc.get("metadata", {}))),
        cache=doc.get("cache", "use"),
        text_type=doc.get("text_type", "text"),
        lexicons=tuple(doc.get("lexicons", ())),
        marks=frozenset(doc.get("marks", ())),
        subtitles=frozenset(doc.get("subtitles", ())),
        mastering=doc.get("mastering"),
    )


def _voice(voice: dict[str, Any] | None) -> Voice:
    if not voice:
        return Voice()
    reference = voice.get("reference")
    return Voice(
        preset=voice.get("preset"),
        description=voice.get("description"),
        reference=None
        if reference is None
        else Reference(reference["audio_uri"], reference.get("text")),
    )


def _int_or_none(number: float | None) -> int | None:
    # JSON Schema counts 16000.0 as an integer; the request carries a real int.
    return None if number is None else int(number)


# --- messages -----------------------------------------------------------------------------


def _describe(error: ValidationError) -> str:
    path = list(error.absolute_path)
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    # Typed as "maybe unset" by the stubs; always set on errors from iter_errors.
    keyword: Any = error.validator
    expected: Any = error.validator_value
    instance: Any = error.instance
    if keyword == "required":
        missing = next((name for name in expected if name not in instance), "?")
        return f"{_json_path([*path, missing])}: required field is missing"
    if keyword == "additionalProperties" and expected is False:
        allowed = list(schema.get("properties", {}))
        extra = [key for key in instance if key not in allowed]
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        names = ", ".join(allowed)
        return f"{_json_path([*path, extra[0]])}: unknown field{more}; allowed: {names}"
    subject = _json_path(path)
    if "propertyNames" in error.schema_path:
        subject += " key"
    return f"{subject}: {_complaint(keyword, expected, instance, schema, error.message)}"


def _complaint(
    keyword: str, expected: Any, instance: Any, schema: Mapping[str, Any], fallback: str
) -> str:
    shown = _show(instance)
    if keyword == "type":
        types = [expected] if isinstance(expected, str) else list(expected)
        return f"{shown} is not of type {', '.join(map(repr, types))}"
    if keyword == "enum":
        return f"{shown} is not one of {', '.join(map(repr, expected))}"
    if keyword == "minimum":
        return f"{shown} is less than the minimum of {expected}"
    if keyword == "maximum":
        return f"{shown} is greater than the maximum of {expected}"
    if keyword == "minLength":
        return "must not be empty" if not instance else f"{shown} is shorter than {expected}"
    if keyword == "maxLength":
        return f"{len(instance)} characters, more than {expected}"
    if keyword == "maxProperties":
        return f"{len(instance)} entries, more than {expected}"
    if keyword == "format" or (keyword == "pattern" and "format" in schema):
        return f"{shown} {_DEADLINE_HINT}" if schema.get("format") == "date-time" else fallback
    if keyword == "pattern":
        if expected == "\\S":
            return "must contain a character other than whitespace"
        return f"{shown} does not match {expected!r}"
    return fallback


def _json_path(parts: Iterable[str | int]) -> str:
    out = ["$"]
    for part in parts:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _SIMPLE_KEY.fullmatch(part) and len(part) <= 64:
            out.append(f".{part}")
        else:
            out.append(f"[{_show(part)}]")
    return "".join(out)


def _show(value: object) -> str:
    """A short rendering of a JSON value for messages; never the whole of a huge one."""
    if isinstance(value, str):
        return repr(value[:40]) + (f"… ({len(value)} chars)" if len(value) > 40 else "")
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, list):
        return "[…]" if value else "[]"
    if isinstance(value, dict):
        return "{…}" if value else "{}"
    return _clip(repr(value), 40)


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"


def _clip(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    if len(message) > limit:
        message = message[: limit - 1] + "…"
    # Never hand on a string that cannot be encoded (it becomes a header and JSON elsewhere).
    return message.encode("utf-8", "backslashreplace").decode("utf-8")
