"""A compiled yes/no check for our wire schemas (fastjsonschema), in front of jsonschema.

jsonschema walks the schema for every record (about 0.2 ms for a request); a compiled check
answers "valid" in a few microseconds. It only ever says yes for the common case: a record it
refuses (or cannot judge) is handed to jsonschema, which stays the authority and writes the
message, so an invalid record gets the same error as before. For that to hold, the compiled
check must never accept what jsonschema refuses, so it is given the same rules:

- patterns with ECMA-262 end anchors (``processor.schemas_loader._ecma_regex``);
- ``format: date-time`` asserted with the same RFC 3339 parser;
- only the keywords both read alike (``supported`` says which; a schema with any other
  keyword gets no compiled check, and every record goes to jsonschema).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import fastjsonschema

from processor.schemas_loader import parse_rfc3339

#: Keywords that draft 7 (what fastjsonschema compiles) and 2020-12 read alike.
SUPPORTED = frozenset(
    {
        "$schema", "$id", "title", "description", "default", "examples",
        "type", "enum", "const", "properties", "additionalProperties", "required",
        "propertyNames", "maxProperties", "minProperties", "items", "maxItems", "minItems",
        "uniqueItems", "minLength", "maxLength", "pattern", "format",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    }
)  # fmt: skip
#: Keywords whose value is a map of names to subschemas (the names are not keywords).
_MAPS = frozenset({"properties"})


def _keywords_ok(node: object) -> bool:
    if isinstance(node, list):
        return all(_keywords_ok(item) for item in node)
    if not isinstance(node, dict):
        return True
    for key, value in node.items():
        if key not in SUPPORTED:
            return False
        if key in _MAPS and isinstance(value, dict):
            if not all(_keywords_ok(sub) for sub in value.values()):
                return False
        elif key in ("enum", "const", "default", "examples"):
            continue
        elif not _keywords_ok(value):
            return False
    return True


def _ecma(schema: object) -> object:
    """Every ``pattern`` with ECMA-262's end anchor, as ``schemas_loader`` reads it."""
    if isinstance(schema, list):
        return [_ecma(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "pattern" and isinstance(value, str):
            out[key] = (
                value[:-1] + r"\Z" if value.endswith("$") and not value.endswith("\\$") else value
            )
        elif key in ("enum", "const", "default", "examples"):
            out[key] = value
        else:
            out[key] = _ecma(value)
    return out


def _date_time(value: str) -> bool:
    try:
        parse_rfc3339(value)
    except ValueError:
        return False
    return True


def compile_check(schema: Mapping[str, Any]) -> Callable[[object], bool] | None:
    """A function that says True only for documents jsonschema also accepts (False: ask
    jsonschema); None when the schema uses a keyword the compiled check does not read alike."""
    if not _keywords_ok(schema):
        return None
    draft7 = _ecma(copy.deepcopy(dict(schema)))
    assert isinstance(draft7, dict)
    draft7["$schema"] = "http://json-schema.org/draft-07/schema#"
    draft7.pop("$id", None)
    validate = fastjsonschema.compile(draft7, formats={"date-time": _date_time}, use_default=False)

    def check(document: object) -> bool:
        try:
            validate(document)
        except (fastjsonschema.JsonSchemaException, RecursionError, ValueError, TypeError):
            return False
        return True

    return check
