"""Access failures as one line: Kafka ACL errors met by operator commands, and S3 TLS and
credential failures. (Refused passwords and untrusted certificates are tested on the
secured broker: tests/integration/test_security.py.)"""

from __future__ import annotations

from typing import Any

import botocore.exceptions
import pytest
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)

from processor import s3
from processor.kafka import access
from processor.kafka.access import AccessDenied, Need
from processor.kafka.acl_metadata import NOT_COMPUTED
from processor.settings import KafkaSettings

KAFKA = KafkaSettings(
    bootstrap_servers="127.0.0.1:1",  # nothing listens: diagnose finds no access problem
    security_protocol="SASL_PLAINTEXT",
    sasl_mechanism="SCRAM-SHA-512",
    sasl_username="voxline",
    sasl_password="hunter2",
    group_id="voxline",
)
NEEDS = access.processor_needs(KAFKA)


async def _raise(exc: Exception) -> None:
    raise exc


async def test_a_topic_the_acls_refuse_names_the_topic_its_role_and_the_grant() -> None:
    with pytest.raises(AccessDenied) as denied:
        await access.guarded(KAFKA, _raise(TopicAuthorizationFailedError(KAFKA.dlq_topic)), NEEDS)
    assert str(denied.value) == (
        "Kafka authorization failed: user 'voxline' may not use topic 'tts.requests.dlq' "
        "(the dead-letter topic; TOPIC_AUTHORIZATION_FAILED): grant it WRITE on that topic"
    )


async def test_a_group_the_acls_refuse_is_named() -> None:
    with pytest.raises(AccessDenied, match=r"consumer group 'voxline' .* grant it READ"):
        await access.guarded(KAFKA, _raise(GroupAuthorizationFailedError()), NEEDS)


async def test_an_unreachable_broker_is_not_an_access_failure() -> None:
    with pytest.raises(KafkaConnectionError):
        await access.guarded(KAFKA, _raise(KafkaConnectionError("Unable to bootstrap")), NEEDS)


def test_no_secret_in_a_message() -> None:
    need = Need("t", "READ", "the request topic")
    assert "hunter2" not in access.topic_denied(KAFKA, need) + access.group_denied(KAFKA)


def test_an_untrusted_store_certificate_names_the_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_CA_BUNDLE", "/etc/ca.pem")
    exc = botocore.exceptions.SSLError(
        endpoint_url="https://s3.local/b",
        error=OSError(
            "Cannot connect to host s3.local:443 ssl:True [SSLCertVerificationError: (1, "
            "'[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local "
            "issuer certificate (_ssl.c:1006)')]"
        ),
    )
    assert s3.access_failure(exc, "https://s3.local") == (
        "S3 TLS failed: the certificate of https://s3.local is not trusted by AWS_CA_BUNDLE "
        "(/etc/ca.pem): unable to get local issuer certificate"
    )


@pytest.mark.parametrize(("code", "status"), [("InvalidAccessKeyId", 403), ("403", 403)])
def test_refused_store_credentials_are_named(code: str, status: int) -> None:
    response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    exc = botocore.exceptions.ClientError(response, "HeadBucket")
    failure = s3.access_failure(exc, "https://s3.local")
    assert failure is not None
    assert failure.startswith(f"S3 refused access at https://s3.local ({code}): check AWS_")


def test_a_store_outage_is_not_an_access_failure() -> None:
    exc = botocore.exceptions.EndpointConnectionError(endpoint_url="https://s3.local")
    assert s3.access_failure(exc, "https://s3.local") is None


READ, WRITE, DESCRIBE = 1 << 3, 1 << 4, 1 << 8


@pytest.mark.parametrize(
    ("found", "refused"),
    [
        ({}, None),  # topics the broker did not mention: not refused
        (
            {
                KAFKA.request_topic: (0, READ | DESCRIBE),
                KAFKA.completion_topic: (0, WRITE),
                KAFKA.dlq_topic: (0, WRITE | DESCRIBE),
                "tts.requests.retry": (0, READ | WRITE),
            },
            None,
        ),
        ({"tts.requests.retry": (0, READ)}, "may not WRITE topic 'tts.requests.retry'"),
        ({KAFKA.dlq_topic: (access.TOPIC_DENIED, NOT_COMPUTED)}, "may not use topic"),
        ({KAFKA.dlq_topic: (0, READ | DESCRIBE)}, "may not WRITE topic 'tts.requests.dlq'"),
        ({KAFKA.dlq_topic: (0, NOT_COMPUTED)}, None),  # the broker did not say
        ({KAFKA.dlq_topic: (3, NOT_COMPUTED)}, None),  # unknown topic: created later
        ({KAFKA.request_topic: (0, WRITE | DESCRIBE)}, "may not READ topic 'tts.requests'"),
    ],
)
def test_the_broker_answer_decides(found: dict[str, tuple[int, int]], refused: str | None) -> None:
    said = access.refusal(KAFKA, NEEDS, found)
    if refused is None:
        assert said is None
    else:
        assert said is not None
        assert refused in said
