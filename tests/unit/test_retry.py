"""The one retry decision: a table of error x state -> retry / hold / give up."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processor.errors import (
    Expired,
    InternalError,
    InvalidInput,
    Permanent,
    Stage,
    Systemic,
    Transient,
    VoxlineError,
)
from processor.retry import Action, Attempts, Policy, after, backoff, decide, hold_wait

P = Policy(attempts=5, budget_s=60.0, backoff_s=(0.5, 10.0))
S = Stage.SYNTHESIZE


def transient(retry_after: float | None = None, error_type: str = "http_503") -> Transient:
    return Transient("busy", stage=S, retry_after=retry_after, error_type=error_type)


@pytest.mark.parametrize(
    ("error", "seen", "breaker_open", "action"),
    [
        (Permanent("no", stage=S), Attempts(), False, Action.GIVE_UP),
        (InvalidInput("bad", stage=S), Attempts(), True, Action.GIVE_UP),
        (Expired("late", stage=S), Attempts(), False, Action.GIVE_UP),
        (InternalError("bug", stage=S), Attempts(), False, Action.GIVE_UP),
        (Systemic("down", stage=S), Attempts(failed=99), False, Action.HOLD),
        (transient(), Attempts(), False, Action.RETRY),
        (transient(), Attempts(failed=3), False, Action.RETRY),
        (transient(), Attempts(failed=4), False, Action.GIVE_UP),
        # An open breaker turns retrying into holding, attempts or not.
        (transient(), Attempts(failed=4), True, Action.HOLD),
        # A wait longer than the budget left is an outage for everyone: hold, never give up.
        (transient(retry_after=86_400), Attempts(failed=4), False, Action.HOLD),
        (transient(retry_after=30), Attempts(waited_s=40), False, Action.HOLD),
        (transient(retry_after=5), Attempts(waited_s=40), False, Action.RETRY),
        (VoxlineError("?", stage=S), Attempts(), False, Action.GIVE_UP),
    ],
)
def test_decision_table(
    error: VoxlineError, seen: Attempts, breaker_open: bool, action: Action
) -> None:
    assert decide(error, seen, P, breaker_open=breaker_open).action is action


def test_timeouts_get_every_attempt_whatever_the_call_took() -> None:
    """The budget bounds waiting, not calls: five 120 s timeouts against a 60 s budget are
    five attempts, then a give-up (not one attempt, as when the budget counted call time)."""
    seen = Attempts()
    actions = []
    for _ in range(P.attempts):
        decision = decide(transient(error_type="timeout"), seen, P)
        actions.append(decision.action)
        seen = after(seen, decision)
    assert actions == [Action.RETRY] * 4 + [Action.GIVE_UP]


def test_retry_after_is_honoured_within_the_budget() -> None:
    decision = decide(transient(retry_after=7.5), Attempts(waited_s=10), P)
    assert decision == decide(transient(retry_after=7.5), Attempts(waited_s=10), P)
    assert decision.wait_s == 7.5


def test_holds_do_not_use_up_attempts() -> None:
    seen = after(Attempts(failed=2), decide(Systemic("down", stage=S), Attempts(failed=2), P))
    assert (seen.failed, seen.holds) == (2, 1)


@given(st.integers(min_value=1, max_value=60), st.floats(min_value=0, max_value=0.999))
def test_backoff_grows_and_is_capped(failed: int, jitter: float) -> None:
    base = backoff(failed, P)
    assert P.backoff_s[0] <= base <= P.backoff_s[1]
    assert backoff(failed + 1, P) >= base
    assert base <= backoff(failed, P, jitter) <= 2 * base


@given(st.integers(min_value=0, max_value=10_000))
def test_hold_pacing_grows_to_its_ceiling(holds: int) -> None:
    assert 0 < hold_wait(holds, P) <= P.hold_s[1]
    assert hold_wait(holds + 1, P) >= hold_wait(holds, P)


@given(
    st.integers(min_value=0, max_value=20),
    st.floats(min_value=0, max_value=200),
    st.one_of(st.none(), st.floats(min_value=0, max_value=1e6)),
)
def test_a_retry_never_waits_past_the_budget(
    failed: int, waited: float, retry_after: float | None
) -> None:
    decision = decide(transient(retry_after), Attempts(failed=failed, waited_s=waited), P)
    if decision.action is Action.RETRY:
        assert decision.wait_s <= max(0.0, P.budget_s - waited)
