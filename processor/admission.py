"""Per-backend admission to the record window: route first, then take a slot of that
backend's share, so a backend that is down or slow holds only its own share of the records
and the others keep theirs.

Pure bookkeeping (no asyncio): the runner asks :meth:`Admission.route` for each fetched
record, starts it only while :meth:`Admission.has_room`, and gives the slot back when the
record ends. A record whose backend cannot be told (not JSON, an unknown backend name, a
record the client could not read) is dead-lettered at once by the pipeline: it takes no
share, only a place in the window.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from processor.kafka.consumer import Fetched, Unreadable
from processor.lanes import Lanes, may_start
from processor.parking import due_ms, unwrap

#: The share of records whose backend cannot be told.
UNROUTED = ""


def shares(window: int, windows: Mapping[str, int]) -> dict[str, int]:
    """Each backend's share of ``window`` records, in proportion to its call window
    (``max_in_flight``), never below that window (its calls can always be kept busy)."""
    total = sum(windows.values()) or 1
    return {
        name: max(1, size, round(window * size / total)) if len(windows) > 1 else max(1, window)
        for name, size in windows.items()
    }


def backend_named(value: bytes | None) -> str | None:
    """The ``backend`` a request names (in a CloudEvent, its ``data``): ``""`` when it names
    none, None when the value is not a JSON object (the pipeline dead-letters it)."""
    if not value:
        return None
    try:
        body = json.loads(value)
    except (ValueError, RecursionError):
        return None
    if isinstance(body, dict) and isinstance(body.get("data"), dict) and "specversion" in body:
        body = body["data"]
    if not isinstance(body, dict):
        return None
    named = body.get("backend", "")
    return named if isinstance(named, str) else None


class Admission:
    """Slots taken per backend; ``limits`` are the shares (:func:`shares`). With ranked
    ``lanes``, a backend's share is taken higher lanes first, and a lane below its minimum
    share with records waiting goes first (:func:`processor.lanes.may_start`)."""

    def __init__(self, limits: Mapping[str, int], default: str) -> None:
        self.limits = dict(limits)
        self.default = default
        self.taken: dict[str, int] = dict.fromkeys(self.limits, 0)
        self.taken[UNROUTED] = 0
        self.lanes: Lanes | None = None
        self.by_lane: Counter[tuple[str, int]] = Counter()
        #: Held records by backend and lane, counted before each pass (:meth:`count_waiting`).
        self.waiting: dict[str, Counter[int]] = {}

    def prio(self, item: Fetched) -> int:
        return 0 if self.lanes is None else lane_of(self.lanes, item)

    def count_waiting(self, held: Iterable[tuple[str, Fetched]]) -> None:
        """Before a pass over the held records: how many wait, by backend and lane."""
        self.waiting = {}
        if self.lanes is not None:
            for backend, item in held:
                self.waiting.setdefault(backend, Counter())[self.prio(item)] += 1

    def route(self, item: Fetched) -> str:
        """The backend ``item`` will call (the default when it names none), or
        :data:`UNROUTED`."""
        if isinstance(item, Unreadable):
            return UNROUTED
        named = backend_named(item.value)
        if named is None:
            return UNROUTED
        named = named or self.default
        return named if named in self.limits else UNROUTED

    def has_room(self, backend: str, item: Fetched | None = None) -> bool:
        """Whether ``backend``'s share has a slot (for ``item``'s lane, when given)."""
        limit = self.limits.get(backend)
        if limit is None:
            return True
        if self.lanes is None or item is None:
            return self.taken.get(backend, 0) < limit
        running = {p: n for (b, p), n in self.by_lane.items() if b == backend}
        waiting = self.waiting.get(backend, Counter())
        return may_start(self.prio(item), running, waiting, limit, self.lanes.shares)

    def take(self, backend: str, prio: int = 0) -> None:
        self.taken[backend] = self.taken.get(backend, 0) + 1
        self.by_lane[(backend, prio)] += 1
        if backend in self.waiting:
            self.waiting[backend][prio] -= 1

    def give(self, backend: str, prio: int = 0) -> None:
        self.taken[backend] = max(0, self.taken.get(backend, 0) - 1)
        self.by_lane[(backend, prio)] = max(0, self.by_lane[(backend, prio)] - 1)

    def giver(self, backend: str, prio: int = 0) -> Callable[[object], None]:
        """A done-callback that gives ``backend``'s slot back."""
        return lambda _: self.give(backend, prio)


def is_due(item: Fetched, now_ms: float) -> bool:
    """Whether a record may run now: any record but a parked one not yet due."""
    due = None if isinstance(item, Unreadable) else due_ms(item)
    return due is None or due <= now_ms


def lane_of(lanes: Lanes, item: Fetched) -> int:
    """The lane priority of a fetched record (a parked one: its original topic's)."""
    record = item.record if isinstance(item, Unreadable) else item
    return lanes.priority(unwrap(record).topic)


def key_of(item: Fetched) -> bytes | None:
    """The record's key (its request_id): records of one key start in offset order."""
    return (item.record if isinstance(item, Unreadable) else item).key
