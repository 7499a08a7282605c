"""obstore's errors become the same error tree and types as aioboto3's did (processor.s3)."""

from __future__ import annotations

import pytest
from obstore.exceptions import GenericError, PermissionDeniedError

from processor import objstore
from processor.errors import InvalidInput, Permanent, Stage, Systemic


def _status(status: int, code: str | None) -> str:
    xml = "" if code is None else f"<Error><Code>{code}</Code><Message>m</Message></Error>"
    return (
        f"Error performing PUT http://s3/b/k in 2ms - Server returned non-2xx status code: "
        f"{status} Reason: {xml}\n\nDebug source:\nGeneric {{ ... }}"
    )


@pytest.mark.parametrize(
    ("exc", "kind", "error_type", "status"),
    [
        (PermissionDeniedError(_status(403, "InvalidAccessKeyId")), Systemic,
         "s3_InvalidAccessKeyId", 403),
        (PermissionDeniedError(_status(403, None)), Systemic, "s3_AccessDenied", 403),
        (GenericError(_status(503, "SlowDown")), Systemic, "s3_SlowDown", 503),
        (GenericError(_status(400, "EntityTooLarge")), Permanent, "s3_EntityTooLarge", 400),
        (GenericError("Generic S3 error: HTTP error: error sending request"), Systemic,
         "s3_unreachable", None),
        (TimeoutError(), Systemic, "s3_unreachable", None),
    ],
)  # fmt: skip
def test_errors_keep_their_types(
    exc: Exception, kind: type[Exception], error_type: str, status: int | None
) -> None:
    error = objstore.error(exc, "store k")
    assert type(error) is kind
    assert error.error_type == error_type
    assert error.http_status == status
    assert "Debug source" not in str(error)


def test_a_missing_object_is_what_the_caller_says() -> None:
    def missing() -> InvalidInput:
        return InvalidInput("no such reference", stage=Stage.SYNTHESIZE, error_type="x")

    error = objstore.error(
        FileNotFoundError("Object at location k not found"), "load", missing=missing
    )
    assert isinstance(error, InvalidInput)
    assert (
        objstore.error(GenericError(_status(404, "NoSuchKey")), "load", missing=missing) is not None
    )
    assert (
        objstore.error(GenericError(_status(404, "NoSuchKey")), "load").error_type == "s3_NoSuchKey"
    )


def test_the_ca_bundle_is_read_for_https(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_CA_BUNDLE", "/nonexistent/ca.pem")
    with pytest.raises(FileNotFoundError):
        objstore.open_store("b", "https://s3.example:8333", "us-east-1")
    monkeypatch.delenv("AWS_CA_BUNDLE")
    store = objstore.open_store("b", "https://s3.example:8333", "us-east-1")
    assert store.config.get("bucket") == "b"
