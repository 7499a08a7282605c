"""Carry out the retry decision: one loop for every step of a record (thin asyncio around the
pure ``processor.retry``)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from processor.errors import Transient, VoxlineError
from processor.retry import Action, Attempts, Decision, Policy, after, decide

T = TypeVar("T")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass(slots=True)
class Tally:
    """Backend calls made for one record, across its chunks and holds."""

    attempts: int = 0
    first_failed_at: dt.datetime | None = None

    def failed(self) -> dt.datetime:
        self.first_failed_at = self.first_failed_at or now()
        return self.first_failed_at


def exhausted(error: Transient, attempts: int) -> Transient:
    """The error a record is dead-lettered with once its attempts are spent."""
    return Transient(
        f"gave up after {attempts} attempts: {error.message}",
        stage=error.stage,
        http_status=error.http_status,
        error_type=error.error_type,
    )


async def run_step(
    op: Callable[[], Awaitable[T]],
    policy: Policy,
    *,
    breaker_open: Callable[[], bool] = lambda: False,
    before_wait: Callable[[VoxlineError, Decision], None] = lambda _e, _d: None,
) -> T:
    """``op`` until it succeeds, retried and held as :func:`processor.retry.decide` says;
    raises the error it gave up on (a transient one as :func:`exhausted`). ``before_wait``
    may raise to end the wait early (a request's deadline)."""
    seen = Attempts()
    while True:
        try:
            return await op()
        except VoxlineError as error:
            decision = decide(
                error, seen, policy, breaker_open=breaker_open(), jitter=random.random()
            )
            if decision.action is Action.GIVE_UP:
                if isinstance(error, Transient):
                    raise exhausted(error, seen.failed + 1) from error
                raise
            before_wait(error, decision)
            await asyncio.sleep(decision.wait_s)
            seen = after(seen, decision)
