"""Connection options shared by every Kafka client we create (consumer, producer, admin)."""

from __future__ import annotations

import os
import ssl
from typing import Any

from aiokafka.helpers import create_ssl_context

from processor.settings import KafkaSettings

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
#: Prefetch per partition of the request consumer. aiokafka's default 1 MiB times many
#: partitions was most of the processor's memory while it drained a backlog; 64 KiB (a few
#: hundred requests a partition, far more than the record window takes at once) keeps the
#: drain rate and about 8 MiB less peak RSS than 256 KiB on the backlog (32 KiB cut the
#: drain rate). A record larger than this is still fetched (whole batches, KIP-74).
FETCH_BYTES = 64 * 1024
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class ConnectionConfigError(ValueError):
    """Connection settings that cannot work (said before any connection is tried)."""


def tls_context(kafka: KafkaSettings) -> ssl.SSLContext:
    """The TLS context of ``KAFKA_SSL_*``: a file that is missing or not PEM is an error that
    names the setting, not a traceback from deep inside the client."""
    files = (
        ("KAFKA_SSL_CAFILE", kafka.ssl_cafile),
        ("KAFKA_SSL_CERTFILE", kafka.ssl_certfile),
        ("KAFKA_SSL_KEYFILE", kafka.ssl_keyfile),
    )
    for name, path in files:
        if path is not None and not os.path.isfile(path):
            raise ConnectionConfigError(f"{name} is {path!r}: no such file")
    if kafka.ssl_keyfile and not kafka.ssl_certfile:
        raise ConnectionConfigError("KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE (mutual TLS)")
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=kafka.ssl_cafile, certfile=kafka.ssl_certfile, keyfile=kafka.ssl_keyfile
        )
    except ssl.SSLError as exc:
        given = ", ".join(f"{name}={path}" for name, path in files if path)
        raise ConnectionConfigError(f"the TLS files cannot be loaded ({given}): {exc}") from exc
    return context


def connection_options(kafka: KafkaSettings) -> dict[str, Any]:
    """Bootstrap servers plus TLS and SASL settings, as aiokafka's clients take them."""
    if kafka.security_protocol not in SECURITY_PROTOCOLS:
        raise ConnectionConfigError(
            f"KAFKA_SECURITY_PROTOCOL must be one of {', '.join(SECURITY_PROTOCOLS)}, "
            f"not {kafka.security_protocol!r}"
        )
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = tls_context(kafka)
    if kafka.security_protocol.startswith("SASL"):
        mechanism = kafka.sasl_mechanism or "PLAIN"
        if mechanism not in SASL_MECHANISMS:
            raise ConnectionConfigError(
                f"KAFKA_SASL_MECHANISM must be one of {', '.join(SASL_MECHANISMS)}, "
                f"not {mechanism!r}"
            )
        if not kafka.sasl_username or kafka.sasl_password is None:
            raise ConnectionConfigError("SASL needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
        options.update(
            sasl_mechanism=mechanism,
            sasl_plain_username=kafka.sasl_username,
            sasl_plain_password=kafka.sasl_password,
        )
    return options
