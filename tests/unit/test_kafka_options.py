"""Kafka connection options: TLS and SASL from settings, with clear errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from processor.kafka.consumer import kafka_consumer
from processor.kafka.options import FETCH_BYTES, ConnectionConfigError, connection_options
from processor.settings import KafkaSettings, Settings


def test_plaintext_is_just_the_servers() -> None:
    opts = connection_options(KafkaSettings(bootstrap_servers="b:9092"))
    assert opts == {"bootstrap_servers": "b:9092", "security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_over_tls(mechanism: str) -> None:
    opts = connection_options(
        KafkaSettings(
            security_protocol="SASL_SSL",
            sasl_mechanism=mechanism,
            sasl_username="u",
            sasl_password="p",
        )
    )
    assert opts["sasl_mechanism"] == mechanism
    assert (opts["sasl_plain_username"], opts["sasl_plain_password"]) == ("u", "p")
    assert opts["ssl_context"] is not None


def test_the_password_is_not_in_the_settings_repr() -> None:
    assert "hunter2" not in repr(KafkaSettings(sasl_password="hunter2"))


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        (KafkaSettings(security_protocol="TLS"), "KAFKA_SECURITY_PROTOCOL"),
        (KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_username="u"), "PASSWORD"),
        (
            KafkaSettings(
                security_protocol="SASL_PLAINTEXT",
                sasl_mechanism="GSSAPI",
                sasl_username="u",
                sasl_password="p",
            ),
            "KAFKA_SASL_MECHANISM",
        ),
    ],
)
def test_mistakes_are_named(settings: KafkaSettings, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        connection_options(settings)


@pytest.mark.parametrize(
    ("field", "content", "needle"),
    [
        ("ssl_cafile", None, "KAFKA_SSL_CAFILE is '{path}': no such file"),
        ("ssl_cafile", "not a certificate\n", "cannot be loaded (KAFKA_SSL_CAFILE={path}):"),
        ("ssl_keyfile", "x", "KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE (mutual TLS)"),
    ],
)
def test_tls_file_mistakes_are_named(
    tmp_path: Path, field: str, content: str | None, needle: str
) -> None:
    path = tmp_path / "file.pem"
    if content is not None:
        path.write_text(content)
    given: dict[str, Any] = {field: str(path)}
    settings = dataclasses.replace(KafkaSettings(security_protocol="SSL"), **given)
    with pytest.raises(ConnectionConfigError) as raised:
        connection_options(settings)
    assert needle.format(path=path) in str(raised.value)


def test_tls_files_are_not_read_without_tls(tmp_path: Path) -> None:
    settings = KafkaSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_username="u",
        sasl_password="p",
        ssl_cafile=str(tmp_path / "not-there.pem"),
    )
    assert "ssl_context" not in connection_options(settings)


async def test_the_request_consumer_prefetches_64_kib_a_partition() -> None:
    """Issue 17: the prefetch (8 partitions x 256 KiB before) was a large part of the peak RSS
    on a backlog; the scan for a record aiokafka cannot decode still reads 256 KiB at a time."""
    consumer = kafka_consumer(Settings(), window=64)
    try:
        assert FETCH_BYTES == 64 * 1024
        assert consumer.client._max_partition_fetch_bytes == FETCH_BYTES
        assert consumer.fetch_bytes == 256 * 1024
    finally:
        await consumer.client.stop()
