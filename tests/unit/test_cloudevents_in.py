"""CloudEvents in: records the official CloudEvents SDK for Python writes in binary and
structured mode are opened into the request they carry; malformed envelopes are refused as
invalid_input naming the attribute; plain requests pass through untouched."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.v1.event import CloudEvent

from processor.cloudevents_in import ERROR_TYPE, causation_of, open_record
from processor.errors import InvalidInput, Stage
from processor.events import CAUSATION_HEADERS
from processor.kafka.headers import RawHeaders
from processor.request import parse_request

REQUEST = {"request_id": "ce-1", "text": "Hello from an event platform.", "language": "en"}


def sdk_event(**attributes: Any) -> CloudEvent:
    base = {"id": "evt-42", "source": "/dapr/orders", "type": "com.example.tts.requested"}
    return CloudEvent(attributes={**base, **attributes}, data=dict(REQUEST))


def as_record(message: ce_kafka.KafkaMessage) -> tuple[RawHeaders, bytes]:
    return list(message.headers.items()), message.value


def test_binary_mode_from_the_sdk_opens_to_the_request() -> None:
    headers, value = as_record(
        ce_kafka.to_binary_event(sdk_event(datacontenttype="application/json"))
    )
    opened = open_record(headers, value)
    assert opened.envelope is not None
    assert opened.envelope.mode == "binary"
    assert (opened.envelope.id, opened.envelope.source) == ("evt-42", "/dapr/orders")
    assert parse_request(opened.value).request_id == "ce-1"


def test_structured_mode_from_the_sdk_opens_to_its_data() -> None:
    headers, value = as_record(ce_kafka.to_structured_event(sdk_event()))
    assert dict(headers)["content-type"] == b"application/cloudevents+json"
    opened = open_record(headers, value)
    assert opened.envelope is not None
    assert opened.envelope.mode == "structured"
    assert opened.envelope.type == "com.example.tts.requested"
    request = parse_request(opened.value)
    assert (request.request_id, request.language) == ("ce-1", "en")


def test_structured_data_base64_and_json_string_data() -> None:
    envelope = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}
    raw = json.dumps(REQUEST).encode()
    for data in ({"data_base64": base64.b64encode(raw).decode()}, {"data": raw.decode()}):
        value = json.dumps({**envelope, **data}).encode()
        opened = open_record([("content-type", b"application/cloudevents+json")], value)
        assert parse_request(opened.value).request_id == "ce-1"


def test_a_plain_request_passes_through_unchanged() -> None:
    value = json.dumps(REQUEST).encode()
    headers: RawHeaders = [("content-type", b"application/json"), ("traceparent", b"00-x")]
    opened = open_record(headers, value)
    assert opened.envelope is None
    assert opened.value is value
    assert causation_of(headers, value) == []


def test_an_extension_header_alone_does_not_make_a_cloudevent() -> None:
    value = json.dumps(REQUEST).encode()
    opened = open_record(
        [("ce_traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")], value
    )
    assert opened.envelope is None
    assert opened.value is value


def test_a_content_type_with_parameters_still_means_structured_mode() -> None:
    headers = [("content-type", b"application/cloudevents+json; charset=utf-8")]
    opened = open_record(headers, structured())
    assert opened.envelope is not None
    assert opened.envelope.mode == "structured"


def test_causation_headers_carry_the_request_events_id_source_and_type() -> None:
    headers, value = as_record(ce_kafka.to_binary_event(sdk_event()))
    got = dict(causation_of(headers, value))
    assert set(got) == set(CAUSATION_HEADERS)
    assert got["ce_causationid"] == b"evt-42"
    assert got["ce_causationsource"] == b"/dapr/orders"
    assert got["ce_causationtype"] == b"com.example.tts.requested"


def binary_headers(**overrides: bytes | None) -> list[tuple[str, bytes | None]]:
    base: dict[str, bytes | None] = {
        "ce_specversion": b"1.0",
        "ce_id": b"1",
        "ce_source": b"/s",
        "ce_type": b"t",
    }
    base.update(overrides)
    return [(k, v) for k, v in base.items() if k != "drop"]


STRUCTURED = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data": REQUEST}


def structured(**changes: Any) -> bytes:
    doc = {k: v for k, v in {**STRUCTURED, **changes}.items() if v is not None}
    return json.dumps(doc).encode()


CT = ("content-type", b"application/cloudevents+json")
BAD: list[tuple[str, RawHeaders, bytes, str]] = [
    ("no id", [h for h in binary_headers() if h[0] != "ce_id"], b"{}", "header ce_id: missing"),
    ("empty source", binary_headers(ce_source=b""), b"{}", "header ce_source: must not be empty"),
    ("old spec", binary_headers(ce_specversion=b"0.3"), b"{}", "header ce_specversion: '0.3'"),
    ("null header", binary_headers(ce_type=None), b"{}", "header ce_type: has no value"),
    ("bad utf-8", binary_headers(ce_id=b"\xff"), b"{}", "header ce_id: is not valid UTF-8"),
    ("bad time", binary_headers(ce_time=b"yesterday"), b"{}", "header ce_time: 'yesterday'"),
    (
        "xml data",
        [*binary_headers(), ("content-type", b"application/xml")],
        b"<r/>",
        "header content-type: 'application/xml'",
    ),
    ("not json", [CT], b"{", "CloudEvent $: a structured-mode CloudEvent must be a JSON object"),
    ("array", [CT], b"[]", "CloudEvent $: a structured-mode CloudEvent must be a JSON object"),
    (
        "repeated key",
        [CT],
        structured()[:-1] + b', "data": {"request_id": "a", "text": "b", "text": "c"}}',
        "CloudEvent $: a structured-mode CloudEvent must not repeat a key",
    ),
    ("no type", [CT], structured(type=None), "attribute $.type: missing"),
    ("number id", [CT], structured(id=7), "attribute $.id: must be a string"),
    ("no data", [CT], structured(data=None), "attribute $.data: missing"),
    ("list data", [CT], structured(data=[1]), "attribute $.data: must be the request"),
    ("bad b64", [CT], structured(data=None, data_base64="%%"), "$.data_base64: is not valid"),
    (
        "xml content",
        [CT],
        structured(datacontenttype="application/xml"),
        "attribute $.datacontenttype: 'application/xml'",
    ),
    (
        "batch",
        [("content-type", b"application/cloudevents-batch+json")],
        b"[]",
        "header content-type: 'application/cloudevents-batch+json'",
    ),
]


@pytest.mark.parametrize(
    ("headers", "value", "names"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_a_malformed_envelope_is_invalid_input_naming_the_attribute(
    headers: RawHeaders, value: bytes, names: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        open_record(headers, value)
    error = caught.value
    assert names in error.message
    assert (error.stage, error.error_type) == (Stage.DECODE, ERROR_TYPE)
    assert causation_of(headers, value) == []


def test_a_valid_envelope_around_an_invalid_request_fails_on_the_request() -> None:
    opened = open_record([CT], structured(data={"request_id": "x"}))
    with pytest.raises(InvalidInput) as caught:
        parse_request(opened.value)
    assert caught.value.message == "$.text: required field is missing"
