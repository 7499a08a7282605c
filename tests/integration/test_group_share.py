"""Two processors of one group on the real broker: after each rebalance every adaptive window
knows its member's share of the group's partitions (``AdaptiveLimit.set_share``), so the
members split a backend's capacity; when one leaves, the other takes the whole again."""

from __future__ import annotations

import dataclasses

import pytest

from processor import config
from processor.app import App
from processor.limiter import AdaptiveLimit
from tests.integration.harness import running, until, with_request_topic
from tests.integration.services import Services

pytestmark = pytest.mark.integration


def share_of(app: App) -> float:
    assert app.pipeline is not None
    window = app.pipeline.routes["espeak"].gate.window
    assert isinstance(window, AdaptiveLimit)
    return window.share


async def test_members_of_a_group_split_the_window_and_the_last_one_takes_it_whole(
    services: Services,
) -> None:
    settings = await with_request_topic(services, "share", 4)
    settings = dataclasses.replace(settings, backends=config.single_backend(adaptive=True))
    async with running(settings) as first:
        await until(lambda: bool(first.runner and first.runner.consumer.assignment()), "joined")
        assert share_of(first) == 1.0
        async with running(settings) as second:
            await until(
                lambda: share_of(first) == share_of(second) == 0.5,
                f"an even split (shares {share_of(first)}, {share_of(second)})",
            )
        await until(lambda: share_of(first) == 1.0, "the whole back after the other left")
