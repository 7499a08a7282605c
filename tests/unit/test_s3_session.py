"""Every S3 client of a process shares one aioboto3 session (one botocore model in memory),
and a change of the AWS environment gets a session of its own."""

from __future__ import annotations

import pytest

from processor import s3


def test_one_session_per_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "first")
    first = s3.shared_session()
    assert s3.shared_session() is first
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "second")
    second = s3.shared_session()
    assert second is not first
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "first")
    assert s3.shared_session() is first
