"""schemas/asyncapi.yaml: valid for the AsyncAPI project's own parser, and every topic, header
and schema it names is the one the code uses (so the document cannot drift from the code)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from processor import cloudevents_in, events, request
from processor.errors import Reason, Stage
from processor.outcomes import TRUNCATED_HEADER
from processor.parking import retry_topic
from processor.settings import KafkaSettings

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
DOC_PATH = SCHEMAS / "asyncapi.yaml"
CHECKER = ROOT / "docs" / "asyncapi"
DOC: dict[str, Any] = yaml.safe_load(DOC_PATH.read_text())
COMPONENTS = DOC["components"]


def schema(name: str) -> dict[str, Any]:
    found: dict[str, Any] = COMPONENTS["schemas"][name]
    return found


def test_the_asyncapi_parser_finds_the_document_valid() -> None:
    parser = CHECKER / "node_modules" / "@asyncapi" / "parser"
    if (shutil.which("node") is None or not parser.is_dir()) and os.environ.get("CI") != "true":
        pytest.skip("node or docs/asyncapi/node_modules missing: run make setup")
    done = subprocess.run(
        ["node", "validate.mjs", str(DOC_PATH)],
        cwd=CHECKER,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "valid AsyncAPI 3.0.0" in done.stdout


def test_the_channels_are_the_topics_the_processor_uses() -> None:
    kafka = KafkaSettings()
    expected = {
        "requests": kafka.request_topic,
        "completions": kafka.completion_topic,
        "deadLetters": kafka.dlq_topic,
        "parked": retry_topic(kafka.request_topic, kafka.retry_topic),
    }
    channels = DOC["channels"]
    assert {name: channel["address"] for name, channel in channels.items()} == expected
    for channel in channels.values():
        assert channel["bindings"]["kafka"]["topic"] == channel["address"]
    group = DOC["operations"]["processRequests"]["bindings"]["kafka"]["groupId"]
    assert group["default"] == kafka.group_id


def test_completion_headers_are_the_ones_events_writes() -> None:
    written = [
        name
        for name, _ in events.ce_headers("r-1", "t", "succeeded", "/s", dt.datetime.now(dt.UTC))
    ]
    headers = schema("completionHeaders")
    assert headers["required"] == written
    assert set(headers["properties"]) == {*written, *events.CAUSATION_HEADERS}
    types = headers["properties"]["ce_type"]["enum"]
    assert types == [events.SUCCEEDED_TYPE, events.FAILED_TYPE]


def test_request_cloudevent_headers_are_the_ones_the_processor_reads() -> None:
    binary = schema("requestCloudEventHeaders")
    prefix = cloudevents_in.CE_PREFIX
    assert binary["required"] == [prefix + name for name in cloudevents_in.REQUIRED]
    assert binary["properties"]["ce_specversion"]["const"] == cloudevents_in.SPECVERSION
    assert cloudevents_in.CONTENT_TYPE in binary["properties"]
    structured = schema("structuredCloudEvent")
    assert structured["required"] == list(cloudevents_in.REQUIRED)
    message = COMPONENTS["messages"]["requestCloudEventStructured"]
    content_type = message["headers"]["properties"][cloudevents_in.CONTENT_TYPE]["const"]
    assert content_type == message["contentType"] == cloudevents_in.STRUCTURED_JSON


def test_dead_letter_headers_are_the_ones_outcomes_writes() -> None:
    now = dt.datetime.now(dt.UTC)
    failure = events.Failure(Stage.SYNTHESIZE, Reason.PERMANENT, "http_400", "no", 1, now, now, 400)
    written = [
        name
        for name, _ in events.dead_letter_headers(
            [("ce_id", b"1")],
            topic="t",
            partition=0,
            offset=0,
            timestamp_ms=0,
            group_id="g",
            processor="p",
            failure=failure,
        )
        if name.startswith("dlq.")
    ]
    headers = schema("deadLetterHeaders")
    assert set(headers["properties"]) == {*written, TRUNCATED_HEADER}
    assert set(headers["required"]) == set(written) - {"dlq.http.status"}
    assert headers["properties"]["dlq.stage"]["enum"] == [s.value for s in Stage]
    assert headers["properties"]["dlq.reason"]["enum"] == [r.value for r in Reason]


def test_park_headers_are_the_ones_parking_writes() -> None:
    source = (ROOT / "processor" / "parking.py").read_text()
    written = set(re.findall(r'"(park\.[a-z_.]+)"', source))
    headers = schema("parkHeaders")
    assert set(headers["properties"]) == written
    assert set(headers["required"]) == written


def file_refs(node: object) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in file_refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in file_refs(value)]
    return []


def test_every_schema_it_names_exists_and_requests_use_the_processors_schema() -> None:
    refs = [ref for ref in file_refs(DOC) if not ref.startswith("#")]
    assert refs, "the messages point at the JSON Schemas"
    for ref in refs:
        path, _, pointer = ref.partition("#")
        target: Any = json.loads((SCHEMAS / path).read_text())
        for part in filter(None, pointer.split("/")):
            target = target[part]  # KeyError: the pointer names nothing
    messages = COMPONENTS["messages"]
    for name in ("request", "requestCloudEventBinary"):
        ref = messages[name]["payload"]["schema"]["$ref"]
        named = json.loads((SCHEMAS / ref).read_text())
        assert named == request._SCHEMA  # the schema parse_request validates with
    for name in ("succeeded", "failed"):
        ref = messages[name]["payload"]["schema"]["$ref"]
        assert ref == f"./completion.v1.json#/$defs/{name}"
    assert schema("requestKey")["pattern"] == request._SCHEMA["properties"]["request_id"]["pattern"]
