"""Best-effort readers of a record's request id: the id its outcome is published under, found
even in a request ``parse_request`` rejects (so its failed event is keyed by that id).

Pure and never raising: these run on already-bad input on the way to a dead letter. A
structured-mode CloudEvent (the request in ``data`` or ``data_base64``, as Dapr and Knative
send it) is looked into, so a malformed request inside a well-formed envelope still yields
its request_id.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_LEADING_REQUEST_ID = re.compile(rb'\A\s*\{\s*"request_id"\s*:\s*"([A-Za-z0-9._:-]{1,128})"')
_USABLE_KEY = _REQUEST_ID


def best_effort_request_id(value: bytes | None) -> str | None:
    """The record's ``request_id`` if one can be found, even in an invalid request; never raises.

    Used to key the failed event for a record ``parse_request`` rejected. Looks at the top-level
    ``request_id`` of a JSON object; in a structured-mode CloudEvent (an object with
    ``specversion``), at the ``request_id`` of its ``data`` (an object, a string holding JSON,
    or ``data_base64``); when the value is not JSON at all (e.g. truncated), at a
    ``request_id`` that is the object's first member.
    """
    try:
        if not value:
            return None
        try:
            doc = json.loads(value)
        except (ValueError, RecursionError):
            match = _LEADING_REQUEST_ID.match(value)
            return match.group(1).decode("ascii") if match else None
        if not isinstance(doc, dict):
            return None
        found = _id_in(doc)
        if found is None and isinstance(doc.get("specversion"), str):
            found = _id_in(_structured_data(doc))
        return found
    except Exception:  # the contract is "never raises": this runs on already-bad input
        return None


def _id_in(doc: object) -> str | None:
    candidate = doc.get("request_id") if isinstance(doc, dict) else None
    if isinstance(candidate, str) and _REQUEST_ID.fullmatch(candidate):
        return candidate
    return None


def _structured_data(envelope: dict[str, Any]) -> object:
    """The request a structured-mode CloudEvent carries, decoded as far as it goes."""
    data = envelope.get("data")
    if isinstance(data, dict):
        return data
    raw: bytes | None = None
    if isinstance(data, str):  # some SDKs send JSON data as a JSON string
        raw = data.encode("utf-8", "surrogatepass")
    elif isinstance(envelope.get("data_base64"), str):
        raw = base64.b64decode(envelope["data_base64"], validate=True)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        match = _LEADING_REQUEST_ID.match(raw)
        return {"request_id": match.group(1).decode("ascii")} if match else None


def request_id_of(
    topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
) -> str:
    """The id the processor publishes a record's outcome under: the value's request_id, else
    the key when it is a usable id, else the record's coordinates. The pipeline publishes
    under it and reconcile accounts by it."""
    found = best_effort_request_id(value)
    if found:
        return found
    if key:
        try:
            text = key.decode()
        except UnicodeDecodeError:
            text = ""
        if text.isascii() and _USABLE_KEY.fullmatch(text):
            return text
    return f"{topic}:{partition}:{offset}"
