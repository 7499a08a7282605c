"""What to do after a failed step: the one retry decision, pure (no clock, no sleeping).

Every step of a record (a backend call, an upload, a send) that fails with a ``VoxlineError``
asks :func:`decide`, which answers one of three things:

* **retry** after ``wait_s``: a transient failure with attempts left (backoff from
  :func:`backoff`, or the server's ``Retry-After`` when it said, within the budget);
* **hold** for ``wait_s``: the dependency is unavailable for everyone (a systemic error, the
  backend's breaker open, or an overload answer asking for a wait longer than the record's
  budget). The record waits and tries again; a hold never uses up attempts and never
  dead-letters. Only the request's own deadline ends a hold (the caller checks it);
* **give up**: retrying cannot help (permanent errors), or the attempts are spent.

The retry budget bounds the *waiting* between attempts, not the calls themselves, so a record
always gets its configured attempts even when one call may take longer than the budget (a
120 s call timeout must not use up a 60 s budget on its first timeout).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import NamedTuple

from processor.errors import Permanent, Systemic, Transient, VoxlineError


class Action(enum.Enum):
    RETRY = "retry"
    HOLD = "hold"
    GIVE_UP = "give_up"


#: First wait of a hold; each further hold of the same record waits one step more.
HOLD_STEP_S = 0.2


class Decision(NamedTuple):
    action: Action
    wait_s: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    """Tuning of the decision; one per backend (its attempts and budget) or per stage."""

    #: Attempts per record, the first included.
    attempts: int = 5
    #: Seconds a record may spend waiting between attempts.
    budget_s: float = 60.0
    #: Backoff between attempts: the first wait, and the most it grows to.
    backoff_s: tuple[float, float] = (0.5, 10.0)
    #: A hold's pacing: the first wait (each further hold waits one step more), and the most.
    hold_s: tuple[float, float] = (HOLD_STEP_S, 30.0)
    #: Hold at most this long in memory (in all, or told to wait this long by a Retry-After),
    #: then park on the delay topic (``processor.parking``); None: hold as long as it takes.
    park_after_s: float | None = None


class Attempts(NamedTuple):
    """What a record has been through at one step so far."""

    #: Failed attempts that counted (holds do not count).
    failed: int = 0
    #: Holds so far.
    holds: int = 0
    #: Seconds waited between attempts so far (holds excluded).
    waited_s: float = 0.0


def backoff(failed: int, policy: Policy, jitter: float = 0.0) -> float:
    """Exponential backoff before attempt ``failed + 1``: ``wait_initial * 2**(failed-1)``,
    capped at ``wait_max``, plus up to ``jitter`` (a fraction in [0, 1)) of itself."""
    first, most = policy.backoff_s
    base = min(most, first * 2.0 ** max(0, failed - 1))
    return base * (1.0 + max(0.0, min(jitter, 1.0)))


def hold_wait(holds: int, policy: Policy) -> float:
    """Pacing of a held record: one step more each time, never above the most."""
    step, most = policy.hold_s
    return min(most, step * (holds + 1))


def decide(
    error: VoxlineError,
    seen: Attempts,
    policy: Policy,
    *,
    breaker_open: bool = False,
    jitter: float = 0.0,
) -> Decision:
    """The decision after ``error``; ``seen`` counts the failures before this one."""
    if isinstance(error, Permanent):
        return Decision(Action.GIVE_UP)
    if isinstance(error, Systemic) or breaker_open:
        return Decision(Action.HOLD, hold_wait(seen.holds, policy))
    if not isinstance(error, Transient):  # an error class outside the tree: not retried
        return Decision(Action.GIVE_UP)
    left = max(0.0, policy.budget_s - seen.waited_s)
    if error.retry_after is not None and error.retry_after > left:
        # The server says it is unavailable for longer than this record may wait: that is an
        # outage for everyone, not this record's failure.
        # Paced like any hold: the breaker (which counts such answers) keeps calls away while
        # the backend is unavailable, and the record goes on as soon as it is back.
        return Decision(Action.HOLD, min(error.retry_after, hold_wait(seen.holds, policy)))
    if seen.failed + 1 >= policy.attempts:
        return Decision(Action.GIVE_UP)
    wait = (
        error.retry_after
        if error.retry_after is not None
        else backoff(seen.failed + 1, policy, jitter)
    )
    return Decision(Action.RETRY, min(wait, left))


def after(seen: Attempts, decision: Decision) -> Attempts:
    """``seen`` once ``decision`` has been carried out."""
    if decision.action is Action.HOLD:
        return seen._replace(holds=seen.holds + 1)
    return Attempts(seen.failed + 1, seen.holds, seen.waited_s + decision.wait_s)
