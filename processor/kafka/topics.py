"""Create the contract's topics when they are missing (operators may pre-create them)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from processor.kafka.options import connection_options
from processor.settings import KafkaSettings

log = structlog.get_logger("voxline.topics")


async def ensure_topics(kafka: KafkaSettings, topics: Iterable[str], partitions: int) -> None:
    """Create each missing topic with ``partitions`` partitions (replication 1 on a one-node
    cluster, else the broker's default would be better: operators pre-create there)."""
    if partitions <= 0:
        return
    admin = AIOKafkaAdminClient(**connection_options(kafka))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in dict.fromkeys(topics) if t not in existing]
        if not missing:
            return
        brokers = len((await admin.describe_cluster())["brokers"])
        replication = min(3, brokers)
        # Another instance may win the race to create them.
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(
                [
                    NewTopic(t, num_partitions=partitions, replication_factor=replication)
                    for t in missing
                ]
            )
        log.info("created topics", topics=missing, partitions=partitions, replication=replication)
    finally:
        await admin.close()
