"""Connection options shared by every Kafka client we create (consumer, producer, admin)."""

from __future__ import annotations

from typing import Any

from aiokafka.helpers import create_ssl_context

from processor.settings import KafkaSettings

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def connection_options(kafka: KafkaSettings) -> dict[str, Any]:
    """Bootstrap servers plus TLS and SASL settings, as aiokafka's clients take them."""
    if kafka.security_protocol not in SECURITY_PROTOCOLS:
        raise ValueError(
            f"KAFKA_SECURITY_PROTOCOL must be one of {', '.join(SECURITY_PROTOCOLS)}, "
            f"not {kafka.security_protocol!r}"
        )
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=kafka.ssl_cafile, certfile=kafka.ssl_certfile, keyfile=kafka.ssl_keyfile
        )
    if kafka.security_protocol.startswith("SASL"):
        mechanism = kafka.sasl_mechanism or "PLAIN"
        if mechanism not in SASL_MECHANISMS:
            raise ValueError(
                f"KAFKA_SASL_MECHANISM must be one of {', '.join(SASL_MECHANISMS)}, "
                f"not {mechanism!r}"
            )
        if not kafka.sasl_username or kafka.sasl_password is None:
            raise ValueError("SASL needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
        options.update(
            sasl_mechanism=mechanism,
            sasl_plain_username=kafka.sasl_username,
            sasl_plain_password=kafka.sasl_password,
        )
    return options
