"""The synthesis request: parsed once at the edge into frozen values.

``parse_request`` turns a record value into a ``Request`` or raises ``InvalidInput`` with a
message naming the offending field. Its rules are ``schemas/request.v1.json`` plus the
operator's limits (text length, metadata size).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from types import MappingProxyType

_EMPTY: Mapping[str, object] = MappingProxyType({})


@dataclasses.dataclass(frozen=True, slots=True)
class Reference:
    """A clone prompt: reference audio in the store and, optionally, its transcript."""

    audio_uri: str
    text: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Voice:
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
    params: Mapping[str, object] = _EMPTY
    backend: str | None = None
    deadline: dt.datetime | None = None
    metadata: Mapping[str, str] = MappingProxyType({})
