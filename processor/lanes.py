"""Priority lanes: several request topics, each with a priority and a minimum share.

Lanes are topics, not a ``priority`` field: an urgent record on the backlog's topic sits behind
every record before it in its partition, and no consumer can read it before those, so a field
could only reorder what was already read. A topic of its own is read as soon as it arrives.

Configured in ``VOXLINE_CONFIG``::

    [[lanes]]
    topic = "tts.requests.urgent"
    priority = 10
    share = 0.0

    [[lanes]]
    topic = "tts.requests"      # the request topic; priority 0 unless listed
    priority = 0
    share = 0.25                # keeps a quarter of each backend's window under any burst

Higher lanes go first twice: the runner admits their held records first (``runner``), and a
backend's gate lets their calls in first (``gate``, through :data:`PRIORITY`, set for each
record's task). A lane below its ``share`` of a backend's window, with calls waiting, takes a
slot before any higher lane: it is never starved. Pure, apart from the context variable.
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
from collections.abc import Iterable, Mapping

#: The priority of the record the current task works on (0: the default lane).
PRIORITY: contextvars.ContextVar[int] = contextvars.ContextVar("voxline_priority", default=0)


@dataclasses.dataclass(frozen=True, slots=True)
class Lane:
    topic: str
    priority: int = 0
    #: The share of each backend's window this lane keeps while it has calls waiting.
    share: float = 0.0


class Lanes:
    """The lanes by topic; the request topic is a lane of priority 0 unless listed."""

    def __init__(self, lanes: Iterable[Lane], request_topic: str) -> None:
        self.by_topic = {lane.topic: lane for lane in lanes}
        self.by_topic.setdefault(request_topic, Lane(request_topic))
        self.shares = {lane.priority: lane.share for lane in self.by_topic.values()}

    @property
    def topics(self) -> list[str]:
        return list(self.by_topic)

    @property
    def ranked(self) -> bool:
        """Whether lanes differ in priority (else admission is first come, first served)."""
        return len({lane.priority for lane in self.by_topic.values()}) > 1

    def priority(self, topic: str) -> int:
        lane = self.by_topic.get(topic)
        return 0 if lane is None else lane.priority

    @property
    def lowest(self) -> int:
        return min(lane.priority for lane in self.by_topic.values())


def may_start(
    priority: int,
    running: Mapping[int, int],
    waiting: Mapping[int, int],
    limit: int,
    shares: Mapping[int, float],
) -> bool:
    """Whether a call of ``priority`` may take one of ``limit`` slots now. ``running``: calls
    in flight by priority; ``waiting``: calls waiting by priority (this one included)."""
    free = limit - sum(running.values())
    if free <= 0:
        return False

    def unmet(p: int) -> int:
        if waiting.get(p, 0) <= 0:
            return 0
        return max(0, math.ceil(shares.get(p, 0.0) * limit) - running.get(p, 0))

    if unmet(priority) > 0:
        return True
    if any(n > 0 and p > priority for p, n in waiting.items()):
        return False
    return free > sum(unmet(p) for p in waiting if p != priority)
