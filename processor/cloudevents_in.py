"""Requests that arrive as CloudEvents 1.0 on Kafka, opened at the edge.

The CloudEvents Kafka protocol binding has two content modes, and event platforms (Dapr
pub/sub, Knative Eventing's KafkaSink, Argo Events) use both:

- **binary**: the attributes are ``ce_*`` headers (``ce_specversion``, ``ce_id``,
  ``ce_source``, ``ce_type``, ...), the record's value is the request itself; a
  ``content-type`` header, if present, is the data's content type and must be JSON.
- **structured**: ``content-type: application/cloudevents+json``, the value is the whole
  event as JSON and the request is its ``data`` (a JSON object, a string holding JSON, or
  ``data_base64``).

A record with neither (no ``ce_specversion``, ``ce_id``, ``ce_source`` or ``ce_type`` header,
and no CloudEvents content type) is a plain request, as before. ``open_record`` hands back the
request bytes and the ``Envelope`` (None for a plain request); a malformed envelope raises
``InvalidInput`` (stage ``decode``, error type ``cloudevent``) whose message names the
attribute. The envelope's id, source and type go back out on the completion event as the
extension attributes ``events.CAUSATION_HEADERS`` names. Pure: no client imports.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import json
from typing import Any, Literal, NoReturn

from processor.errors import InvalidInput, Stage
from processor.events import causation_headers
from processor.kafka.headers import Headers, RawHeaders

CE_PREFIX = "ce_"
CONTENT_TYPE = "content-type"
STRUCTURED_JSON = "application/cloudevents+json"
SPECVERSION = "1.0"
ERROR_TYPE = "cloudevent"
REQUIRED = ("specversion", "id", "source", "type")

#: Any of these makes a record a binary-mode CloudEvent (an extension header alone, such as
#: ``ce_traceparent``, does not).
_REQUIRED_HEADERS = frozenset(CE_PREFIX + name for name in REQUIRED)

Mode = Literal["binary", "structured"]


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    """The CloudEvent a request arrived in: what the caller correlates the outcome by."""

    mode: Mode
    id: str
    source: str
    type: str

    def causation(self) -> Headers:
        """The completion event's headers that point back at this event."""
        return causation_headers(self.id, self.source, self.type)


@dataclasses.dataclass(frozen=True, slots=True)
class Opened:
    value: bytes | None
    envelope: Envelope | None = None


def open_record(headers: RawHeaders, value: bytes | None) -> Opened:
    """The request bytes inside the record and the envelope around them, if any."""
    content_type = _media_type(headers)
    if content_type.startswith("application/cloudevents"):
        if content_type != STRUCTURED_JSON:
            _fail(f"header {CONTENT_TYPE}", f"{content_type!r}: only {STRUCTURED_JSON} is read")
        return _structured(value)
    if any(name.lower() in _REQUIRED_HEADERS for name, _ in headers):
        return _binary(headers, value, content_type)
    return Opened(value)


def causation_of(headers: RawHeaders, value: bytes | None) -> Headers:
    """The causation headers for a record's completion event; none for a plain request or a
    malformed envelope. Never raises (it runs on the way to dead-lettering bad records)."""
    try:
        envelope = open_record(headers, value).envelope
    except InvalidInput:
        return []
    return envelope.causation() if envelope else []


def _binary(headers: RawHeaders, value: bytes | None, content_type: str) -> Opened:
    attributes: dict[str, str] = {}
    for name, raw in headers:
        lowered = name.lower()
        if not lowered.startswith(CE_PREFIX):
            continue
        where = f"header {name}"
        if raw is None:
            _fail(where, "has no value")
        try:
            attributes[lowered.removeprefix(CE_PREFIX)] = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            _fail(where, "is not valid UTF-8")
    if content_type and not _is_json(content_type):
        _fail(f"header {CONTENT_TYPE}", f"{content_type!r}: the request must be JSON")
    envelope = _envelope("binary", attributes, lambda attr: f"header {CE_PREFIX}{attr}")
    return Opened(value, envelope)


def _structured(value: bytes | None) -> Opened:
    try:  # duplicate keys refused, as parse_request refuses them (I-JSON)
        doc = json.loads(value or b"", object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError):
        _fail("$", "a structured-mode CloudEvent must be a JSON object; this is not valid JSON")
    if not isinstance(doc, dict):
        _fail("$", "a structured-mode CloudEvent must be a JSON object")

    def where(attr: str) -> str:
        return f"attribute $.{attr}"

    for attr, item in doc.items():
        if attr not in ("data", "data_base64") and not isinstance(item, str):
            _fail(where(attr), f"must be a string, got {type(item).__name__}")
    datacontenttype = doc.get("datacontenttype")
    if datacontenttype is not None and not _is_json(datacontenttype.split(";")[0].strip()):
        _fail(where("datacontenttype"), f"{datacontenttype!r}: the request must be JSON")
    envelope = _envelope("structured", doc, where)
    return Opened(_data(doc, where), envelope)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        _fail("$", "a structured-mode CloudEvent must not repeat a key (I-JSON)")
    return doc


def _data(doc: dict[str, Any], where: Any) -> bytes:
    if "data" in doc and "data_base64" in doc:
        _fail(where("data"), "data and data_base64 are both present; only one may be")
    if "data_base64" in doc:
        encoded = doc["data_base64"]
        if not isinstance(encoded, str):
            _fail(where("data_base64"), "must be a base64 string")
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            _fail(where("data_base64"), "is not valid base64")
    if "data" not in doc:
        _fail(where("data"), "missing: the request goes in data")
    data = doc["data"]
    if isinstance(data, dict):
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    if isinstance(data, str):  # some SDKs send JSON data as a JSON string
        return data.encode("utf-8", "surrogatepass")
    _fail(where("data"), "must be the request as a JSON object")


def _envelope(mode: Mode, attributes: dict[str, Any], where: Any) -> Envelope:
    for attr in REQUIRED:
        item = attributes.get(attr)
        if item is None:
            _fail(where(attr), "missing (required by CloudEvents 1.0)")
        if not item:
            _fail(where(attr), "must not be empty")
    if attributes["specversion"] != SPECVERSION:
        _fail(where("specversion"), f"{attributes['specversion']!r}: only {SPECVERSION} is read")
    if "time" in attributes and not _is_rfc3339(attributes["time"]):
        _fail(where("time"), f"{attributes['time']!r} is not an RFC 3339 timestamp")
    return Envelope(mode, attributes["id"], attributes["source"], attributes["type"])


def _media_type(headers: RawHeaders) -> str:
    found = ""
    for name, raw in headers:
        if name.lower() == CONTENT_TYPE and raw is not None:
            found = bytes(raw).decode("utf-8", "replace")
    return found.split(";")[0].strip().lower()


def _is_json(media_type: str) -> bool:
    lowered = media_type.lower()
    return lowered in ("application/json", "text/json") or lowered.endswith("+json")


def _is_rfc3339(text: str) -> bool:
    try:
        moment = dt.datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        return False
    return "T" in text.upper() and moment.tzinfo is not None


def _fail(where: str, problem: str) -> NoReturn:
    message = f"CloudEvent {where}: {problem}"
    raise InvalidInput(message[:300], stage=Stage.DECODE, error_type=ERROR_TYPE)
