"""request_ids: the id a record's outcome goes under is found even in a rejected request,
including a malformed request inside a structured-mode CloudEvent (issue 14), so its failed
event is keyed by the caller's request_id, not by the record's coordinates."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.v1.event import CloudEvent

from processor import request
from processor.cloudevents_in import open_record
from processor.errors import InvalidInput
from processor.kafka.records import Record
from processor.request_ids import best_effort_request_id, request_id_of
from tests.unit.test_pipeline import World

ENVELOPE = {"specversion": "1.0", "id": "evt-1", "source": "/knative", "type": "tts.requested"}
#: Invalid as a request: no text, and an unknown field.
BAD_REQUEST = {"request_id": "ce-bad-1", "voice": 3, "colour": "blue"}


def structured(**members: Any) -> bytes:
    return json.dumps({**ENVELOPE, **members}).encode()


def test_the_sdks_structured_event_around_a_malformed_request_yields_its_request_id() -> None:
    attributes = {k: v for k, v in ENVELOPE.items() if k != "specversion"}
    event = CloudEvent(attributes=attributes, data=dict(BAD_REQUEST))
    message = ce_kafka.to_structured_event(event)
    opened = open_record(list(message.headers.items()), message.value)
    with pytest.raises(InvalidInput):  # the request itself is refused...
        request.parse_request(opened.value)
    # ...and its failed event is still keyed by the caller's request_id
    assert best_effort_request_id(message.value) == "ce-bad-1"
    assert request_id_of("tts.requests", 0, 7, b"some-key", message.value) == "ce-bad-1"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (structured(data=BAD_REQUEST), "ce-bad-1"),
        (structured(data=json.dumps(BAD_REQUEST)), "ce-bad-1"),  # data as a JSON string
        (structured(data='{"request_id": "ce-cut", "text": "trunc'), "ce-cut"),  # cut short
        (
            structured(data_base64=base64.b64encode(json.dumps(BAD_REQUEST).encode()).decode()),
            "ce-bad-1",
        ),
        (structured(data_base64="not base64!"), None),
        (structured(data={"request_id": "has spaces"}), None),  # not a usable id
        (structured(data=[1, 2]), None),
        (structured(), None),  # no data at all
        # an object without specversion is a plain request: its data is not looked into
        (json.dumps({"data": {"request_id": "inner"}}).encode(), None),
        # a top-level request_id wins over data's
        (structured(request_id="outer", data={"request_id": "inner"}), "outer"),
        (json.dumps(BAD_REQUEST).encode(), "ce-bad-1"),  # a plain invalid request, as before
    ],
    ids=[
        "data-object",
        "data-string",
        "data-truncated",
        "data-base64",
        "bad-base64",
        "unusable-id",
        "data-array",
        "no-data",
        "no-specversion",
        "top-level-wins",
        "plain",
    ],
)
def test_best_effort_request_id_looks_into_structured_cloudevents(
    value: bytes, expected: str | None
) -> None:
    assert best_effort_request_id(value) == expected


def test_without_an_id_the_key_then_the_coordinates_key_the_outcome() -> None:
    value = structured(data={"text": "no id"})
    assert request_id_of("tts.requests", 1, 9, b"key-1", value) == "key-1"
    assert request_id_of("tts.requests", 1, 9, b"bad key", value) == "tts.requests:1:9"


def test_request_still_exports_the_readers() -> None:
    assert request.best_effort_request_id is best_effort_request_id
    assert request.request_id_of is request_id_of


async def test_the_pipeline_keys_the_failed_event_of_a_structured_event_by_its_request_id() -> None:
    attributes = {k: v for k, v in ENVELOPE.items() if k != "specversion"}
    message = ce_kafka.to_structured_event(CloudEvent(attributes=attributes, data=BAD_REQUEST))
    headers = list(message.headers.items())
    world = World()
    bad = Record("requests", 0, 3, b"partition-key", message.value, 0, headers)
    assert await world.pipeline.handle(bad) == "failed"
    (event,) = world.events()
    assert (event["request_id"], event["status"]) == ("ce-bad-1", "failed")
    (published,) = world.sink.on("done")
    assert (published.key, published.header("ce_subject")) == (b"ce-bad-1", "ce-bad-1")
    (letter,) = world.dead_letters()
    assert letter.key == b"partition-key"  # the dead letter is the record as it came
