"""The wire schemas in ``schemas/``, loaded from the installed package or the source tree.

Wheel builds copy ``schemas/`` into the package as ``processor/schemas`` (hatch force-include);
editable installs and a plain checkout read ``<repo>/schemas`` instead.

jsonschema is imported when the first validator is made: a processor whose requests all pass
the compiled check (``processor.fastschema``) never loads it (about 2.5 MiB resident).
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.resources
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jsonschema
    from jsonschema.exceptions import ValidationError
    from jsonschema.protocols import Validator

_SOURCE_TREE = Path(__file__).resolve().parents[1] / "schemas"

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:[Zz]|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)


def load_schema(name: str) -> dict[str, Any]:
    """Return the parsed schema ``name``, e.g. ``"request.v1.json"``; a fresh copy each call."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"not a schema file name: {name!r}")
    packaged = importlib.resources.files("processor") / "schemas" / name
    if packaged.is_file():
        text = packaged.read_text(encoding="utf-8")
    else:
        text = (_SOURCE_TREE / name).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@functools.lru_cache(maxsize=256)
def _ecma_regex(pattern: str) -> re.Pattern[str]:
    # ECMA-262 `$` (no multiline flag) matches only at the very end; Python's also matches
    # before a final newline, which would let "abc\n" pass `^[a-z]+$`. Our patterns use `$`
    # only as the final anchor.
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def _pattern(
    validator: Validator, pattern: str, instance: object, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    from jsonschema.exceptions import ValidationError

    if isinstance(instance, str) and not _ecma_regex(pattern).search(instance):
        yield ValidationError(f"{instance[:80]!r} does not match {pattern!r}")


@functools.cache
def _validator_class() -> type[Validator]:
    """Draft 2020-12 with ECMA-262 end anchors and messages that never repr a huge string."""
    import jsonschema

    extended: type[Validator] = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
        jsonschema.Draft202012Validator, validators={"pattern": _pattern}
    )
    return extended


def validator(schema: Mapping[str, Any], *, formats: bool = False) -> Validator:
    """A validator for one of our schemas; ``formats``: assert ``format`` (date-time only)."""
    return _validator_class()(schema, format_checker=_format_checker() if formats else None)


def parse_rfc3339(value: str) -> dt.datetime:
    """Parse an RFC 3339 date-time (time zone required) into an aware UTC datetime.

    Raises ``ValueError`` for anything else, including impossible dates and times beyond
    year 9999 in UTC. A leap second (``:60``) is read as the first instant of the next minute;
    digits past microseconds are dropped.
    """
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise ValueError("not an RFC 3339 date-time with a time zone")
    year, month, day, hour, minute, second = (int(g) for g in match.group(1, 2, 3, 4, 5, 6))
    fraction, sign, off_h, off_m = match.group(7, 8, 9, 10)
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    leap = second == 60
    offset = dt.timedelta(0)
    if sign is not None:
        if int(off_h) > 23 or int(off_m) > 59:
            raise ValueError("time zone offset out of range")
        offset = dt.timedelta(hours=int(off_h), minutes=int(off_m)) * (-1 if sign == "-" else 1)
    try:
        stamp = dt.datetime(
            year, month, day, hour, minute, 59 if leap else second, micros, dt.timezone(offset)
        )
        return (stamp + dt.timedelta(seconds=1 if leap else 0)).astimezone(dt.UTC)
    except OverflowError as exc:
        raise ValueError("date-time out of range") from exc


def _is_date_time(instance: object) -> bool:
    if not isinstance(instance, str):
        return True  # format applies to strings only
    parse_rfc3339(instance)
    return True


@functools.cache
def _format_checker() -> jsonschema.FormatChecker:
    """Asserts ``format: date-time`` with our own RFC 3339 parser, so the check does not depend
    on which optional format packages jsonschema finds installed. No other format is asserted."""
    import jsonschema

    checker = jsonschema.FormatChecker(formats=())
    checker.checks("date-time", raises=ValueError)(_is_date_time)
    return checker
