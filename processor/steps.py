"""Carry out the retry decision: one loop for every step of a record (thin asyncio around the
pure ``processor.retry``)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from processor import tracing
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
    #: Times the record was parked before (``processor.parking``).
    parks: int = 0
    #: A backend call answered with audio, counted in ``processor.held`` until the record ends.
    holds_audio: bool = False

    def failed(self) -> dt.datetime:
        self.first_failed_at = self.first_failed_at or now()
        return self.first_failed_at


class Park(Exception):
    """The record should leave the window for the delay topic; ``error`` is why."""

    def __init__(self, error: VoxlineError) -> None:
        super().__init__(error.message)
        self.error = error


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
    raises the error it gave up on (a transient one as :func:`exhausted`), or :class:`Park`
    once it has held ``policy.park_after_s`` (or is told to wait that long). ``before_wait``
    may raise to end the wait early (a request's deadline)."""
    seen, held_s = Attempts(), 0.0
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
            if decision.action is Action.HOLD:
                held_s += decision.wait_s
                told = max(decision.wait_s, error.retry_after or 0.0)
                if policy.park_after_s is not None and max(held_s, told) >= policy.park_after_s:
                    raise Park(error) from error
            before_wait(error, decision)
            tracing.waiting(error, decision)
            await asyncio.sleep(decision.wait_s)
            seen = after(seen, decision)
