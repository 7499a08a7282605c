"""Object keys never escape the prefix: any request_id that ``parse_request`` accepts maps to a
key inside ``{prefix}``, one path segment deep, never ``..`` or ``.``."""

from __future__ import annotations

import json
import posixpath

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from processor.errors import InvalidInput
from processor.request import parse_request
from processor.store import object_key

FORMATS = ("wav", "mp3", "flac", "opus", "pcm")
PROPERTY = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: What the contract allows, weighted towards the dot-heavy ids a path check would trip on.
allowed_ids = st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True) | st.text(
    alphabet=".:-", min_size=1, max_size=8
)
#: Anything at all, path tricks included: whatever parse_request accepts must be safe.
hostile_ids = (
    st.text(max_size=140)
    | st.sampled_from(["..", ".", "../x", "a/../../b", "/abs", "a\\..\\b", "%2e%2e", "..\u2215x"])
    | st.builds(lambda a, b: f"{a}/{b}", st.text(max_size=5), st.text(max_size=5))
)
prefixes = st.sampled_from(["", "tests/", "audio/2026/", "a/b/c/", "plain"]) | st.from_regex(
    r"([a-z0-9]{1,6}/){0,3}", fullmatch=True
)


def accepted(request_id: str) -> str | None:
    """The request_id parse_request hands on, or None when it refuses the record."""
    value = json.dumps({"request_id": request_id, "text": "hello"}).encode()
    try:
        return parse_request(value).request_id
    except InvalidInput:
        return None


def assert_inside(prefix: str, request_id: str, ext: str) -> None:
    key = object_key(prefix, request_id, ext)
    assert key.startswith(prefix)
    rest = key[len(prefix) :]
    assert "/" not in rest, key
    assert "\\" not in rest, key
    assert rest not in ("", ".", ".."), key
    assert ".." not in rest.split("/"), key
    if prefix.endswith("/"):
        # Normalising the key (as a filesystem-backed store might) keeps it under the prefix.
        assert posixpath.normpath(key).startswith(prefix.rstrip("/") + "/") or prefix == "/"


@PROPERTY
@given(allowed_ids, prefixes, st.sampled_from(FORMATS))
@example("..", "tests/", "wav")
@example(".", "a/b/", "pcm")
@example("." * 128, "", "wav")
def test_accepted_ids_stay_inside_the_prefix(request_id: str, prefix: str, ext: str) -> None:
    parsed = accepted(request_id)
    assert parsed == request_id  # the contract's alphabet is accepted as is
    assert_inside(prefix, parsed, ext)


@PROPERTY
@given(hostile_ids | allowed_ids, prefixes, st.sampled_from(FORMATS))
def test_whatever_parse_request_accepts_stays_inside_the_prefix(
    request_id: str, prefix: str, ext: str
) -> None:
    parsed = accepted(request_id)
    if parsed is not None:
        assert_inside(prefix, parsed, ext)


@given(hostile_ids)
@example("../x")
@example("a/b")
@example("/abs")
def test_ids_with_a_path_separator_are_refused(request_id: str) -> None:
    if "/" in request_id or "\\" in request_id:
        assert accepted(request_id) is None
