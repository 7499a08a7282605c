"""Operator commands and access: a refused password, an untrusted certificate (Kafka or S3)
or a missing ACL ends the command with one ``Error:`` line naming the cause and exit 1, within
seconds (never a traceback, never records waiting for access they can never get)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import click

from processor import s3
from processor.kafka import access
from processor.kafka.access import Need
from processor.kafka.options import ConnectionConfigError
from processor.settings import KafkaSettings, Settings

T = TypeVar("T")


def run(kafka: KafkaSettings, work: Coroutine[Any, Any, T], needs: list[Need]) -> T:
    """``asyncio.run(work)`` once the cluster lets us at ``needs`` (a topic the ACLs hide
    would otherwise read as empty); an access failure becomes the command's error line."""
    try:
        return asyncio.run(_checked(kafka, work, needs))
    except (access.AccessDenied, ConnectionConfigError) as exc:
        raise click.ClickException(str(exc)) from None


async def _checked(kafka: KafkaSettings, work: Coroutine[Any, Any, T], needs: list[Need]) -> T:
    try:
        await access.check(kafka, needs, group=False)
    except BaseException:
        work.close()  # never started
        raise
    return await access.guarded(kafka, work, needs)


async def processor_start(settings: Settings) -> None:
    """What ``voxline run`` checks before it starts: the broker lets it read requests, write
    completions and dead letters and use its group, and the store answers over TLS with
    these credentials. Other trouble (an outage) is left to the processor's own handling."""
    kafka, store = settings.kafka, settings.store
    try:
        lanes = [lane.topic for lane in settings.backends.lanes]
        await access.check(kafka, access.processor_needs(kafka, lanes))
    except access.AccessDenied as exc:
        raise click.ClickException(str(exc)) from None
    failure = await s3.check(store.endpoint_url, store.region, store.bucket)
    if failure is not None:
        raise click.ClickException(failure)
