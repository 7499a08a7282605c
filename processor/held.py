"""The records holding synthesized audio, bounded by the call windows.

A record's audio lives from its first backend answer until the record ends (stored and
published, dead-lettered or parked). When calls answer faster than the processor can check,
store and publish their audio (a fast backend, a busy CPU, a slow store), the answers queue
behind that work, each holding its audio; without a bound every record of the record window
(twice the call windows by default) ended up holding audio, and the backlog's peak memory grew
with it (issue 17: 128 records, about 20 MiB of audio, at a window of 64).

So a record that holds no audio yet waits before its first call while ``limit`` records hold
some (the sum of the backends' call windows: what the backends can be asked for at once). It
waits outside the backend's gate, holding no call slot, so a slow backend's queue takes nothing
from the others. A record already holding audio (its next chunk, a quality regeneration) never
waits: it only moves towards its end. The bound is soft by the calls already past the check
(at most the record window), and exact when the processor is the bottleneck.
"""

from __future__ import annotations

import asyncio
import collections


def audio_window(call_windows: int) -> int:
    """The default bound: a quarter of the backends' call windows, at least 8 (all of a
    window of 8 or less)."""
    return max(8, call_windows // 4)


class HeldAudio:
    """How many records hold audio, and the wait for room before a record's first call.

    The caller of :meth:`room` ends its call with :meth:`take` (audio came back) or
    :meth:`missed` (none did: an error, a cancellation), so a turn it was woken for goes on to
    the next waiter; every :meth:`give` wakes one. Nobody polls, and no waiter is left behind
    while there is room."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.count = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def room(self) -> None:
        """Return once fewer than ``limit`` records hold audio (waiters woken in turn)."""
        while self.count >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():  # woken, but leaving
                    self._wake()
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def take(self) -> None:
        """A record now holds audio (once per record)."""
        self.count += 1

    def missed(self) -> None:
        """A first call ended without audio: its turn goes on, if there is room."""
        if self.count < self.limit:
            self._wake()

    def give(self) -> None:
        """A record that held audio ended."""
        self.count = max(0, self.count - 1)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
