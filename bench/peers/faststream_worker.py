"""Peer (b): FastStream's Kafka subscriber with concurrent workers and manual acks, as its docs
describe (docs/en/kafka/Subscriber "Concurrent processing", docs/en/kafka/ack.md).

``max_workers > 1`` with an ack policy other than ``ACK_FIRST`` gives at-least-once processing
that is concurrent *between* partitions and sequential within one: FastStream starts one consumer
per worker in the group, so concurrency is at most the partition count (the docs: "Maximum
concurrency is achieved when [workers equal] the number of partitions"). ``max_workers`` is
therefore ``min(window, partitions)``. The handler acks (commits) after the completion event is
published. The body is a pydantic model, as in FastStream's examples; completion events go out
through the broker's own producer (``acks="all"``, idempotent, like Voxline's).

``python -m bench.peers.faststream_worker`` with ``voxline run``'s environment variables;
``FastStream.run`` handles SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib

from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaBroker, KafkaMessage
from pydantic import BaseModel

from bench.peers.job import Job, PeerSettings, clients


class SpeechRequest(BaseModel):
    request_id: str
    text: str


def build(settings: PeerSettings) -> FastStream:
    # graceful_timeout: how long a stop waits for handlers in flight (default 15 s); the
    # benchmark stops a peer only once it has measured it, so waiting gains nothing.
    broker = KafkaBroker(
        settings.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        graceful_timeout=5.0,
    )
    app = FastStream(broker)
    stack = contextlib.AsyncExitStack()
    jobs: list[Job] = []

    async def publish(topic: str, key: bytes, value: bytes) -> object:
        return await broker.publish(value, topic, key=key)

    @app.on_startup
    async def open_clients() -> None:
        http, s3 = await stack.enter_async_context(clients(settings))
        jobs.append(Job(settings, http, s3, publish))

    @app.after_shutdown
    async def close_clients() -> None:
        await stack.aclose()

    @broker.subscriber(
        settings.request_topic,
        group_id=settings.group_id,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,
        max_workers=min(settings.window, settings.partitions),
    )
    async def on_request(body: SpeechRequest, msg: KafkaMessage) -> None:
        await jobs[0].handle(body.request_id, body.text)
        await msg.ack()

    return app


if __name__ == "__main__":
    asyncio.run(build(PeerSettings.from_env()).run())
