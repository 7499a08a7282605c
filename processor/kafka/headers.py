"""Kafka record headers, read one way everywhere.

Headers are a list: a name may repeat, a value may be null, and a value need not be UTF-8.
The last value of a name wins (a later header is the later word). Pure: no client imports.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Headers as Kafka carries them: a value may be null.
RawHeaders = Sequence[tuple[str, bytes | None]]
#: Headers we write: every value present.
Headers = list[tuple[str, bytes]]


def header_value(headers: RawHeaders, name: str) -> str | None:
    """The last value of ``name`` as text (bad UTF-8 replaced), or None if absent or null."""
    found: str | None = None
    for key, value in headers:
        if key == name:
            found = None if value is None else bytes(value).decode("utf-8", "replace")
    return found


def without(headers: RawHeaders, prefixes: tuple[str, ...]) -> Headers:
    """The headers whose names do not start with any of ``prefixes`` (case-insensitive);
    null values become empty ones, which every client can write."""
    return [
        (k, b"" if v is None else bytes(v))
        for k, v in headers
        if not k.lower().startswith(prefixes)
    ]
