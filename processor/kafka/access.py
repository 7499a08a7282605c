"""Kafka access failures said in one line: a refused password, a broker certificate the CA
bundle does not trust, a missing ACL. The Kafka client only reports "Unable to bootstrap" or
an error class; ``diagnose`` finds the cause, ``check`` looks before ``voxline run`` starts,
``guarded`` turns what the operator tools hit into ``AccessDenied``, and ``Denials`` says once
per topic that a running processor lost the right to write it (issue 18)."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import structlog
from aiokafka.client import AIOKafkaClient, CoordinationType
from aiokafka.conn import create_conn
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    IncompatibleBrokerVersion,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
)
from aiokafka.protocol.metadata import MetadataRequest
from prometheus_client import CollectorRegistry, Counter, Gauge

from processor.kafka.acl_metadata import NOT_COMPUTED, OPERATION_BITS, AuthorizedOperations
from processor.kafka.options import connection_options
from processor.settings import KafkaSettings

T = TypeVar("T")
log = structlog.get_logger("voxline.access")

#: Kafka's error code for "this principal may not see that topic" (TOPIC_AUTHORIZATION_FAILED).
TOPIC_DENIED = 29
#: Seconds a look at the broker may take before it is left to the clients' own errors.
PROBE_TIMEOUT_S = 15.0


class AccessDenied(Exception):
    """The client may not reach or use the cluster as configured; the message is one line
    naming the cause and what to change. Retrying cannot help: the command exits."""


@dataclasses.dataclass(frozen=True, slots=True)
class Need:
    """What a command needs on a topic: ``operation`` (READ, WRITE) and the topic's role."""

    topic: str
    operation: str
    role: str


def needs(kafka: KafkaSettings, **operations: str) -> list[Need]:
    """Needs by role: ``needs(kafka, requests="READ", dlq="WRITE")``."""
    # Imported here: parking imports the sink, which imports this module (``Denials``).
    from processor.parking import retry_topic

    topics = {
        "requests": (kafka.request_topic, "the request topic"),
        "completions": (kafka.completion_topic, "the completion topic"),
        "dlq": (kafka.dlq_topic, "the dead-letter topic"),
        "delay": (retry_topic(kafka.request_topic, kafka.retry_topic), "the delay topic"),
    }
    return [Need(topics[role][0], op, topics[role][1]) for role, op in operations.items()]


def processor_needs(kafka: KafkaSettings, lane_topics: Iterable[str] = ()) -> list[Need]:
    """The grants ``voxline run`` cannot work without (the group is checked too): it reads
    requests (and each priority lane's topic) and parked records, writes completions, dead
    letters and parked records."""
    return [
        *needs(kafka, requests="READ", completions="WRITE", dlq="WRITE", delay="READ"),
        *needs(kafka, delay="WRITE"),
        *(Need(t, "READ", "a priority lane's topic") for t in lane_topics),
    ]


def _user(kafka: KafkaSettings) -> str:
    if kafka.security_protocol.startswith("SASL") and kafka.sasl_username:
        return f"user {kafka.sasl_username!r}"
    return "this client"


def topic_denied(kafka: KafkaSettings, need: Need) -> str:
    return (
        f"Kafka authorization failed: {_user(kafka)} may not use topic {need.topic!r} "
        f"({need.role}; TOPIC_AUTHORIZATION_FAILED): grant it {need.operation} on that topic"
    )


def operation_denied(kafka: KafkaSettings, need: Need) -> str:
    return (
        f"Kafka authorization failed: {_user(kafka)} may not {need.operation} topic "
        f"{need.topic!r} ({need.role}; its ACLs allow less): grant it {need.operation} on "
        "that topic"
    )


def group_denied(kafka: KafkaSettings) -> str:
    return (
        f"Kafka authorization failed: {_user(kafka)} may not use consumer group "
        f"{kafka.group_id!r} (GROUP_AUTHORIZATION_FAILED): grant it READ on that group"
    )


def _hosts(bootstrap: str) -> list[tuple[str, int]]:
    out = []
    for entry in bootstrap.split(","):
        host, _, port = entry.strip().rpartition(":")
        if host and port.isdigit():
            out.append((host.strip("[]"), int(port)))
    return out


def _tls_failure(kafka: KafkaSettings, where: str, exc: ssl.SSLError) -> str:
    reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        trusted_by = (
            f"KAFKA_SSL_CAFILE ({kafka.ssl_cafile})"
            if kafka.ssl_cafile
            else "the system's CA store (set KAFKA_SSL_CAFILE)"
        )
        return (
            f"Kafka TLS failed: the certificate of {where} is not trusted by {trusted_by}: "
            f"certificate verify failed: {reason}"
        )
    return (
        f"Kafka TLS failed: the handshake with {where} failed ({reason}); "
        f"is it a TLS listener (KAFKA_SECURITY_PROTOCOL={kafka.security_protocol})?"
    )


async def diagnose(kafka: KafkaSettings) -> str | None:
    """Connect to each bootstrap server as the clients do and say why access fails: TLS or
    authentication. None when no server refuses us for those reasons (down, unreachable:
    not an access problem, the clients' own errors say it)."""
    options = connection_options(kafka)
    for host, port in _hosts(kafka.bootstrap_servers):
        where = f"{host}:{port}"
        try:
            conn = await asyncio.wait_for(
                create_conn(
                    host,
                    port,
                    client_id="voxline-access-check",
                    request_timeout_ms=int(PROBE_TIMEOUT_S * 1000),
                    ssl_context=options.get("ssl_context"),
                    security_protocol=kafka.security_protocol,
                    sasl_mechanism=options.get("sasl_mechanism", "PLAIN"),
                    sasl_plain_username=options.get("sasl_plain_username"),
                    sasl_plain_password=options.get("sasl_plain_password"),
                ),
                PROBE_TIMEOUT_S,
            )
        except SaslAuthenticationFailed as exc:
            return (
                f"Kafka authentication failed: {where} refused {_user(kafka)} "
                f"({options.get('sasl_mechanism')}): check KAFKA_SASL_USERNAME and "
                f"KAFKA_SASL_PASSWORD (broker said: {_broker_words(exc)})"
            )
        except ssl.SSLError as exc:
            return _tls_failure(kafka, where, exc)
        except (ConnectionResetError, KafkaConnectionError) as exc:
            if wrong_protocol := _closed_at_once(kafka, where, exc):
                return wrong_protocol
            continue
        except (OSError, KafkaError, TimeoutError):
            continue
        conn.close()
        return None
    return None


def _closed_at_once(kafka: KafkaSettings, where: str, exc: Exception) -> str | None:
    """A listener of another protocol drops the connection before answering: a TLS client
    sees a reset handshake, a plaintext one a connection closed before the first answer."""
    tls = kafka.security_protocol in ("SSL", "SASL_SSL")
    if tls and isinstance(exc, ConnectionResetError):
        return (
            f"Kafka TLS failed: {where} reset the connection during the TLS handshake; "
            f"is it a TLS listener (KAFKA_SECURITY_PROTOCOL={kafka.security_protocol})?"
        )
    if not tls and "closed" in str(exc):
        return (
            f"Kafka connection failed: {where} closed the connection before answering; does "
            f"its listener expect another protocol than "
            f"KAFKA_SECURITY_PROTOCOL={kafka.security_protocol} (TLS, SASL)?"
        )
    return None


def _broker_words(exc: KafkaError) -> str:
    text = str(exc)
    return text.split(": ", 1)[1] if ": " in text else text


async def check(kafka: KafkaSettings, needs: list[Need], *, group: bool = True) -> None:
    """Raise ``AccessDenied`` if the cluster refuses us: credentials, TLS, an ACL missing on a
    topic of ``needs`` (a topic that does not exist yet passes: it is created or reported by
    the command itself) or, with ``group``, on the consumer group.
    Anything else (a broker that is down, slow or busy) is left to the command's own handling:
    this look only ever adds ``AccessDenied``."""
    client = AIOKafkaClient(**connection_options(kafka), client_id="voxline-access-check")
    try:
        await asyncio.wait_for(_look(client, kafka, needs, group), PROBE_TIMEOUT_S)
    except (KafkaConnectionError, TimeoutError) as exc:
        found = await diagnose(kafka)
        if found is not None:
            raise AccessDenied(found) from exc
    except KafkaError:
        pass
    finally:
        await client.close()


def refusal(
    kafka: KafkaSettings, needs: list[Need], found: dict[str, tuple[int, int]]
) -> str | None:
    """The first need the broker's answer refuses (``found``: topic -> error code and
    authorized operations), said in one line; None if none is refused. A topic missing
    from the answer or unknown to the broker is not refused (it is created or reported by
    the command)."""
    for need in needs:
        error, ops = found.get(need.topic, (0, NOT_COMPUTED))
        if error == TOPIC_DENIED:
            return topic_denied(kafka, need)
        bit = OPERATION_BITS.get(need.operation, 0)
        if error == 0 and ops != NOT_COMPUTED and bit and not ops & bit:
            return operation_denied(kafka, need)
    return None


async def _look(
    client: AIOKafkaClient, kafka: KafkaSettings, needs: list[Need], group: bool
) -> None:
    await client.bootstrap()
    node = client.get_random_node()
    topics = [n.topic for n in needs]
    try:
        answer: Any = await client.send(node, AuthorizedOperations(topics))
        found = {t[1]: (t[0], t[-1]) for t in answer.topics}
    except IncompatibleBrokerVersion:  # a broker before 2.3: whether it may see them
        answer = await client.send(node, MetadataRequest(topics, False))
        found = {t[1]: (t[0], NOT_COMPUTED) for t in answer.topics}
    refused = refusal(kafka, needs, found)
    if refused is not None:
        raise AccessDenied(refused)
    if group:
        try:
            await client.coordinator_lookup(CoordinationType.GROUP, kafka.group_id)
        except GroupAuthorizationFailedError as exc:
            raise AccessDenied(group_denied(kafka)) from exc


async def guarded(kafka: KafkaSettings, work: Awaitable[T], needs: list[Need]) -> T:
    """``await work``, with the access failures it meets as ``AccessDenied``: a bootstrap
    that fails because of TLS or credentials, or a topic or group the ACLs refuse."""
    try:
        return await work
    except KafkaConnectionError as exc:
        found = await diagnose(kafka)
        if found is None:
            raise
        raise AccessDenied(found) from exc
    except TopicAuthorizationFailedError as exc:
        named = {str(a) for a in exc.args}
        need = next((n for n in needs if n.topic in named), None)
        if need is None:
            need = Need(", ".join(sorted(named)) or "?", "the access it needs", "a topic")
        raise AccessDenied(topic_denied(kafka, need)) from exc
    except GroupAuthorizationFailedError as exc:
        raise AccessDenied(group_denied(kafka)) from exc


class Denials:
    """Topics a running producer was refused (TOPIC_AUTHORIZATION_FAILED: an ACL revoked
    while ``voxline run`` runs). Each is said once, in one error line naming the topic, the
    principal and the grant, however many records and retries meet it; ``on_change`` hears
    whether any topic is refused (readiness); the metrics count the refused sends and show
    which topics are refused now. The records wait (a ``Systemic`` hold) until access returns:
    nothing is lost, and ``allowed`` says so once."""

    def __init__(
        self,
        kafka: KafkaSettings,
        registry: CollectorRegistry | None = None,
        on_change: Callable[[bool], None] = lambda _: None,
    ) -> None:
        self.kafka = kafka
        self.topics: set[str] = set()
        self._on_change = on_change
        self._writes = {n.topic: n for n in needs(kafka, completions="WRITE", dlq="WRITE")}
        delay = needs(kafka, delay="WRITE")[0]
        self._writes.setdefault(delay.topic, delay)
        self._sends = Counter(
            "voxline_kafka_topic_denied_sends_total",
            "Sends the broker refused: the principal may not write the topic (held, retried).",
            ["topic"],
            registry=registry,
        )
        self._denied = Gauge(
            "voxline_kafka_topic_denied",
            "1 while the producer may not write the topic (its records are held), else 0.",
            ["topic"],
            registry=registry,
        )

    def denied(self, topic: str) -> str:
        """A send to ``topic`` was refused: the one-line cause (logged the first time)."""
        need = self._writes.get(topic) or Need(topic, "WRITE", "a topic it writes")
        message = topic_denied(self.kafka, need)
        self._sends.labels(topic).inc()
        if topic not in self.topics:
            self.topics.add(topic)
            self._denied.labels(topic).set(1)
            log.error(
                f"{message}; its records are held (not ready) until access returns",
                topic=topic,
                principal=_user(self.kafka),
                grant=f"{need.operation} on topic {topic}",
            )
            self._on_change(True)
        return message

    def allowed(self, topic: str) -> None:
        """A send to ``topic`` went through: if it was refused before, say it is back."""
        if topic in self.topics:
            self.topics.discard(topic)
            self._denied.labels(topic).set(0)
            log.info(f"Kafka authorization restored: {_user(self.kafka)} writes {topic!r} again")
            self._on_change(bool(self.topics))
