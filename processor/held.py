"""The records holding synthesized audio, bounded.

A record's audio lives from its first backend answer until the record ends (stored and
published, dead-lettered or parked). When calls answer faster than the processor can check,
store and publish their audio (a fast backend, a busy CPU, a slow store), the answers queue
behind that work, each holding its audio; without a bound every record of the record window
(twice the call windows by default) ended up holding audio, and the backlog's peak memory grew
with it (issue 17: 128 records, about 20 MiB of audio, at a window of 64).

So a record that holds no audio yet waits before its first call while ``limit`` records hold
some (``BackendsConfig.audio_window``: a quarter of the backends' call windows, at least 8). It
waits outside the backend's gate, holding no call slot, so a slow backend's queue takes nothing
from the others. A record already holding audio (its next chunk, a retry, a quality
regeneration) never waits: it only moves towards its end, and nothing it waits for may wait
for room: its own chunks still waiting go once one of them is answered, and a call whose chunk
another record waits for in the chunk cache (:data:`FOLLOWED`) goes at once. The bound can be
passed by those calls and by the calls already past the check (at most the record window); it
is exact when the processor is the bottleneck.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import math
from collections import Counter
from collections.abc import Callable, Mapping

from processor.lanes import PRIORITY

#: Set around a call whose audio other records may wait for (the chunk cache's single flight,
#: ``processor.cache``): once one does, the event is set and the call stops waiting for room.
#: A record holding audio may be the one waiting, and it would wait for a record that waits
#: for it to end.
FOLLOWED: contextvars.ContextVar[asyncio.Event | None] = contextvars.ContextVar(
    "voxline_followed", default=None
)


#: Whether the waiting call's record holds audio by now.
Holds = Callable[[], bool]


def audio_window(call_windows: int) -> int:
    """The default bound: a quarter of the backends' call windows, at least 8 (all of a
    window of 8 or less)."""
    return max(8, call_windows // 4)


class HeldAudio:
    """How many records hold audio, and the wait for room before a record's first call.

    The caller of :meth:`room` ends its call with :meth:`take` (audio came back) or
    :meth:`missed` (none did: an error, a cancellation), so a turn it was woken for goes on to
    the next waiter; every :meth:`give` wakes one. Nobody polls, and no waiter is left behind
    while there is room. With ranked lanes (``processor.lanes``, the record's
    :data:`~processor.lanes.PRIORITY`) the waiter woken is of the highest lane, unless a lane
    holds less than its ``shares`` of the room and has waiters: then that lane's, as at the
    backends' gates. Within a lane, in turn."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.count = 0
        #: Lanes' minimum shares by priority (set with the gates'; empty: one lane).
        self.shares: Mapping[int, float] = {}
        self._held: Counter[int] = Counter()
        self._waiters: dict[int, collections.deque[tuple[asyncio.Future[None], Holds]]] = {}

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiters.values())

    async def room(self, holds: Holds = lambda: False) -> None:
        """Return once fewer than ``limit`` records hold audio, once the record ``holds`` some
        (another of its chunks was answered while this one waited), or once another record
        waits for this call's audio (:data:`FOLLOWED`)."""
        followed = FOLLOWED.get()

        def may_go() -> bool:
            return self.count < self.limit or holds() or bool(followed and followed.is_set())

        while not may_go():
            waiter = asyncio.get_running_loop().create_future()
            queue = self._waiters.setdefault(PRIORITY.get(), collections.deque())
            queue.append((waiter, holds))
            try:
                await _first(waiter, followed)
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():  # woken, but leaving
                    self._wake()
                raise
            finally:
                if (waiter, holds) in queue:
                    queue.remove((waiter, holds))

    def take(self) -> None:
        """A record now holds audio (once per record): its other chunks waiting for room go."""
        self.count += 1
        self._held[PRIORITY.get()] += 1
        for queue in self._waiters.values():
            for waiter, holds in queue:
                if not waiter.done() and holds():
                    waiter.set_result(None)

    def missed(self) -> None:
        """A first call ended without audio: its turn goes on, if there is room."""
        if self.count < self.limit:
            self._wake()

    def give(self) -> None:
        """A record that held audio ended."""
        self.count = max(0, self.count - 1)
        prio = PRIORITY.get()
        self._held[prio] = max(0, self._held[prio] - 1)
        self._wake()

    def _wake(self) -> None:
        while True:
            lanes = [p for p, queue in self._waiters.items() if queue]
            if not lanes:
                return
            short = [
                p for p in lanes if self._held[p] < math.ceil(self.shares.get(p, 0) * self.limit)
            ]
            waiter, _ = self._waiters[max(short or lanes)].popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


async def _first(waiter: asyncio.Future[None], followed: asyncio.Event | None) -> None:
    """Until ``waiter`` is woken or ``followed`` is set."""
    if followed is None:
        await waiter
        return
    wanted: asyncio.Future[object] = asyncio.ensure_future(followed.wait())
    either: set[asyncio.Future[object]] = {waiter, wanted}  # type: ignore[arg-type]
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        wanted.cancel()
