"""Peer (a): the consumer loop the seed articles show. A batch from ``getmany``, every record of
it through ``asyncio.gather`` under a semaphore (the window), then one commit for the batch.

Its cost is head-of-line blocking: the next batch is fetched only when the slowest request of
this one is done, so the window drains to zero at the end of every batch.

``python -m bench.peers.gather_batch`` with ``voxline run``'s environment variables; SIGTERM
finishes the batch in hand, commits and exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.peers.job import Job, PeerSettings, clients

#: Records per getmany, as in the articles.
BATCH = 100
log = logging.getLogger("peer.gather")


async def run(settings: PeerSettings, stop: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(
        settings.request_topic,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
    )
    semaphore = asyncio.Semaphore(settings.window)
    async with clients(settings) as (http, s3):
        await consumer.start()
        await producer.start()

        async def publish(topic: str, key: bytes, value: bytes) -> object:
            return await producer.send_and_wait(topic, value, key=key)

        job = Job(settings, http, s3, publish)

        async def bounded(value: bytes) -> str:
            async with semaphore:
                request = json.loads(value)
                return await job.handle(request["request_id"], request["text"])

        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=1000, max_records=BATCH)
                records = [r for rs in batches.values() for r in rs]
                if not records:
                    continue
                results = await asyncio.gather(
                    *(bounded(r.value) for r in records if r.value is not None),
                    return_exceptions=True,
                )
                for result in results:
                    if isinstance(result, BaseException):
                        log.error("record failed: %r", result)
                await consumer.commit()
        finally:
            await consumer.stop()
            await producer.stop()


async def _main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await run(PeerSettings.from_env(), stop)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_main())
