"""Unit, table and stateful property tests of the pure circuit breaker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from processor.breaker import Breaker, BreakerConfig, State, Transition

#: Only the threshold rule can open it (the ratio rule would need 1000 calls).
THRESHOLD_ONLY = BreakerConfig(failure_threshold=3, min_calls=1000, window=1000)
#: Only the ratio rule can open it.
RATIO_ONLY = BreakerConfig(failure_threshold=10_000, failure_ratio=0.5, min_calls=20, window=50)


class Recorder:
    """An ``on_change`` hook that keeps every transition."""

    def __init__(self) -> None:
        self.seen: list[Transition] = []

    def __call__(self, transition: Transition) -> None:
        self.seen.append(transition)

    @property
    def path(self) -> list[tuple[State, State, str]]:
        return [(t.old, t.new, t.cause) for t in self.seen]


def fail(breaker: Breaker, n: int, now: float = 0.0) -> State:
    state = breaker.state
    for _ in range(n):
        state = breaker.record_failure(now, systemic=True)
    return state


def opened(config: BreakerConfig | None = None, now: float = 0.0) -> Breaker:
    breaker = Breaker(config or THRESHOLD_ONLY)
    fail(breaker, breaker.config.failure_threshold, now)
    assert breaker.state == "open"
    return breaker


def half_open(config: BreakerConfig | None = None) -> Breaker:
    """A breaker in half_open at t=cool-down, with one probe out."""
    breaker = opened(config)
    assert breaker.allow(breaker.config.open_for_s)
    assert breaker.state == "half_open"
    return breaker


# -- configuration ----------------------------------------------------------------------------


def test_defaults_are_the_documented_ones() -> None:
    assert BreakerConfig() == BreakerConfig(
        failure_threshold=5,
        failure_ratio=0.5,
        min_calls=20,
        window=50,
        open_for_s=2.0,
        max_open_for_s=30.0,
        half_open_probes=1,
    )
    assert Breaker().config == BreakerConfig()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failure_threshold", 0),
        ("failure_ratio", 0.0),
        ("failure_ratio", 1.5),
        ("failure_ratio", float("nan")),
        ("window", 0),
        ("min_calls", 0),
        ("min_calls", 51),
        ("open_for_s", 0.0),
        ("open_for_s", -1.0),
        ("open_for_s", float("inf")),
        ("open_for_s", float("nan")),
        ("max_open_for_s", 1.0),
        ("max_open_for_s", float("inf")),
        ("half_open_probes", 0),
    ],
)
def test_config_rejects_values_that_make_no_sense(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        BreakerConfig(**{field: value})


def test_config_edge_values_are_accepted() -> None:
    BreakerConfig(failure_threshold=1, failure_ratio=1.0, min_calls=1, window=1)
    BreakerConfig(open_for_s=5.0, max_open_for_s=5.0)


# -- closed: the two rules --------------------------------------------------------------------


def test_a_new_breaker_is_closed_and_allows() -> None:
    breaker = Breaker()
    assert breaker.state == "closed"
    assert breaker.allow(0.0)
    assert breaker.allow(0.0)  # closed hands out no slots: no limit
    assert breaker.retry_in(0.0) == 0.0
    assert breaker.probes_in_flight == 0
    assert breaker.transitions == 0


def test_threshold_consecutive_failures_open_it() -> None:
    breaker = Breaker(THRESHOLD_ONLY)
    assert fail(breaker, 2) == "closed"
    assert breaker.consecutive_failures == 2
    assert breaker.record_failure(1.0, systemic=True) == "open"
    assert breaker.transitions == 1


def test_a_success_resets_the_consecutive_count() -> None:
    breaker = Breaker(THRESHOLD_ONLY)
    fail(breaker, 2)
    assert breaker.record_success(0.0) == "closed"
    assert breaker.consecutive_failures == 0
    assert fail(breaker, 2) == "closed"
    assert fail(breaker, 1) == "open"


def test_a_per_request_failure_counts_as_the_server_being_alive() -> None:
    breaker = Breaker(THRESHOLD_ONLY)
    fail(breaker, 2)
    assert breaker.record_failure(0.0, systemic=False) == "closed"
    assert breaker.consecutive_failures == 0
    assert breaker.window_failures == (2, 3)
    for _ in range(100):
        assert breaker.record_failure(0.0, systemic=False) == "closed"


def test_the_default_threshold_is_five() -> None:
    breaker = Breaker()
    assert fail(breaker, 4) == "closed"
    assert fail(breaker, 1) == "open"


def test_ratio_rule_opens_at_min_calls_when_half_fail() -> None:
    breaker = Breaker(RATIO_ONLY)
    for _ in range(9):
        assert breaker.record_success(0.0) == "closed"
        assert breaker.record_failure(0.0, systemic=True) == "closed"
    assert breaker.record_success(0.0) == "closed"
    assert breaker.window_failures == (9, 19)
    # 20th call: 10 of 20 failed, the ratio (>= 0.5) and min_calls are both met.
    assert breaker.record_failure(0.0, systemic=True) == "open"


def test_ratio_rule_waits_for_min_calls() -> None:
    breaker = Breaker(RATIO_ONLY)
    # 19 calls, 18 failures in pairs that never reach the threshold: still under min_calls.
    for i in range(19):
        breaker.record_failure(0.0, systemic=i != 0)
    assert breaker.window_failures == (18, 19)
    assert breaker.state == "closed"
    assert breaker.record_failure(0.0, systemic=True) == "open"


def test_ratio_rule_below_the_ratio_stays_closed() -> None:
    breaker = Breaker(RATIO_ONLY)
    for i in range(200):
        # 2 failures in every 5 calls: 40 %.
        breaker.record_failure(0.0, systemic=i % 5 in (0, 1))
    assert breaker.state == "closed"
    failures, calls = breaker.window_failures
    assert calls == 50
    assert failures == 20


def test_ratio_is_compared_exactly() -> None:
    # 0.1 * 30 is 3.0000000000000004 in floats; 3 failures in 30 calls must still trip it.
    config = BreakerConfig(failure_threshold=100, failure_ratio=0.1, min_calls=30, window=30)
    breaker = Breaker(config)
    for _ in range(27):
        breaker.record_success(0.0)
    fail(breaker, 2)
    assert breaker.state == "closed"
    assert fail(breaker, 1) == "open"


def test_old_failures_slide_out_of_the_window() -> None:
    config = BreakerConfig(failure_threshold=100, failure_ratio=0.5, min_calls=10, window=10)
    breaker = Breaker(config)
    fail(breaker, 4)
    for _ in range(10):
        breaker.record_success(0.0)
    assert breaker.window_failures == (0, 10)
    fail(breaker, 4)
    assert breaker.window_failures == (4, 10)
    assert breaker.state == "closed"
    assert fail(breaker, 1) == "open"  # 5 of the last 10


def test_window_keeps_the_last_outcomes_only() -> None:
    breaker = Breaker(BreakerConfig(failure_threshold=100, min_calls=5, window=5))
    for _ in range(12):
        breaker.record_success(0.0)
    assert breaker.window_failures == (0, 5)


# -- open, cool-down, half_open ---------------------------------------------------------------


def test_open_refuses_until_the_cool_down_passes() -> None:
    breaker = opened(now=10.0)
    assert breaker.retry_in(10.0) == pytest.approx(2.0)
    assert not breaker.allow(10.0)
    assert not breaker.allow(11.999)
    assert breaker.retry_in(11.5) == pytest.approx(0.5)
    assert breaker.transitions == 1  # still the closed -> open one
    assert breaker.retry_in(12.0) == 0.0
    assert breaker.retry_in(50.0) == 0.0
    assert breaker.allow(12.0)
    assert breaker.state == "half_open"
    assert breaker.probes_in_flight == 1


def test_open_does_not_move_by_itself() -> None:
    breaker = opened()
    assert breaker.retry_in(100.0) == 0.0
    assert breaker.state == "open"  # only allow() moves it


def test_half_open_allows_only_the_probe_slots() -> None:
    breaker = half_open()
    assert not breaker.allow(2.0)
    assert not breaker.allow(100.0)
    assert breaker.retry_in(100.0) == breaker.open_for_s  # a polling hint
    assert breaker.probes_in_flight == 1


def test_several_probe_slots() -> None:
    config = BreakerConfig(failure_threshold=1, half_open_probes=3)
    breaker = opened(config)
    assert [breaker.allow(2.0) for _ in range(4)] == [True, True, True, False]
    assert breaker.probes_in_flight == 3
    breaker.release_probe()
    assert breaker.retry_in(2.0) == 0.0
    assert breaker.allow(2.0)
    assert not breaker.allow(2.0)


def test_release_probe_frees_the_slot_and_never_goes_below_zero() -> None:
    breaker = half_open()
    breaker.release_probe()
    assert breaker.probes_in_flight == 0
    breaker.release_probe()
    assert breaker.probes_in_flight == 0
    assert breaker.state == "half_open"
    assert breaker.allow(3.0)
    assert not breaker.allow(3.0)


@pytest.mark.parametrize("make", [lambda: Breaker(), opened])
def test_release_probe_outside_half_open_is_a_no_op(make: Callable[[], Breaker]) -> None:
    breaker = make()
    state = breaker.state
    breaker.release_probe()
    assert breaker.state == state
    assert breaker.probes_in_flight == 0


def test_a_successful_probe_closes_and_resets_everything() -> None:
    breaker = half_open()
    assert breaker.record_success(2.5) == "closed"
    assert breaker.probes_in_flight == 0
    assert breaker.consecutive_failures == 0
    assert breaker.window_failures == (0, 0)
    assert breaker.open_for_s == breaker.config.open_for_s
    assert breaker.allow(2.5)
    # The count starts again from zero.
    assert fail(breaker, 2, 3.0) == "closed"
    assert fail(breaker, 1, 3.0) == "open"


def test_a_per_request_failure_of_a_probe_closes_it() -> None:
    breaker = half_open()
    assert breaker.record_failure(2.5, systemic=False) == "closed"


def test_a_failed_probe_reopens_with_a_doubled_cool_down() -> None:
    breaker = half_open()
    assert breaker.record_failure(3.0, systemic=True) == "open"
    assert breaker.open_for_s == 4.0
    assert breaker.probes_in_flight == 0
    assert not breaker.allow(6.999)
    assert breaker.retry_in(3.0) == 4.0
    assert breaker.allow(7.0)


def test_cool_down_doubles_up_to_the_cap_and_resets_on_close() -> None:
    breaker = opened(BreakerConfig(failure_threshold=1, open_for_s=2.0, max_open_for_s=30.0))
    now = 0.0
    seen = []
    for _ in range(7):
        now += breaker.open_for_s
        assert not breaker.allow(now - 0.001)
        assert breaker.allow(now)
        breaker.record_failure(now, systemic=True)
        seen.append(breaker.open_for_s)
    assert seen == [4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]
    now += 30.0
    assert breaker.allow(now)
    breaker.record_success(now)
    fail(breaker, 1, now)
    assert breaker.open_for_s == 2.0
    assert breaker.retry_in(now) == 2.0


def test_outcomes_reported_while_open_are_ignored() -> None:
    breaker = opened(now=0.0)
    assert breaker.record_success(1.0) == "open"
    assert breaker.record_failure(1.5, systemic=False) == "open"
    assert breaker.record_failure(1.9, systemic=True) == "open"
    assert breaker.open_for_s == 2.0  # not doubled, not restarted
    assert breaker.allow(2.0)
    assert breaker.transitions == 2


def test_hook_sees_every_transition_with_its_cause() -> None:
    hook = Recorder()
    breaker = Breaker(BreakerConfig(failure_threshold=2), on_change=hook)
    fail(breaker, 2, 1.0)
    breaker.allow(3.0)
    breaker.record_failure(3.5, systemic=True)
    breaker.allow(7.5)
    breaker.record_success(8.0)
    assert hook.path == [
        ("closed", "open", "consecutive_failures"),
        ("open", "half_open", "cool_down_passed"),
        ("half_open", "open", "probe_failed"),
        ("open", "half_open", "cool_down_passed"),
        ("half_open", "closed", "probe_succeeded"),
    ]
    assert [t.at for t in hook.seen] == [1.0, 3.0, 3.5, 7.5, 8.0]
    assert hook.seen[2].open_for_s == 4.0
    assert breaker.transitions == 5


def test_hook_names_the_ratio_rule() -> None:
    hook = Recorder()
    breaker = Breaker(BreakerConfig(failure_threshold=100, min_calls=2, window=2), on_change=hook)
    breaker.record_success(0.0)
    breaker.record_failure(0.0, systemic=True)
    assert hook.path == [("closed", "open", "failure_ratio")]


# -- the state machine as a table -------------------------------------------------------------

STATES: dict[str, Callable[[], Breaker]] = {
    "closed": lambda: Breaker(THRESHOLD_ONLY),
    # one failure short of the threshold
    "closed_near": lambda: _closed_near(),
    "open": lambda: opened(),
    "half_open": lambda: half_open(),
}


def _closed_near() -> Breaker:
    breaker = Breaker(THRESHOLD_ONLY)
    fail(breaker, 2)
    return breaker


EVENTS: dict[str, Callable[[Breaker], object]] = {
    "success": lambda b: b.record_success(2.0),
    "systemic": lambda b: b.record_failure(2.0, systemic=True),
    "per_request": lambda b: b.record_failure(2.0, systemic=False),
    "release": lambda b: b.release_probe(),
    "allow_early": lambda b: b.allow(1.0),
    "allow_late": lambda b: b.allow(2.0),
}

#: (start, event) -> (state after, what the event returned where it returns something useful)
TABLE: dict[tuple[str, str], tuple[State, object]] = {
    ("closed", "success"): ("closed", "closed"),
    ("closed", "systemic"): ("closed", "closed"),
    ("closed", "per_request"): ("closed", "closed"),
    ("closed", "release"): ("closed", None),
    ("closed", "allow_early"): ("closed", True),
    ("closed", "allow_late"): ("closed", True),
    ("closed_near", "success"): ("closed", "closed"),
    ("closed_near", "systemic"): ("open", "open"),
    ("closed_near", "per_request"): ("closed", "closed"),
    ("closed_near", "release"): ("closed", None),
    ("closed_near", "allow_early"): ("closed", True),
    ("closed_near", "allow_late"): ("closed", True),
    ("open", "success"): ("open", "open"),
    ("open", "systemic"): ("open", "open"),
    ("open", "per_request"): ("open", "open"),
    ("open", "release"): ("open", None),
    ("open", "allow_early"): ("open", False),
    ("open", "allow_late"): ("half_open", True),
    ("half_open", "success"): ("closed", "closed"),
    ("half_open", "systemic"): ("open", "open"),
    ("half_open", "per_request"): ("closed", "closed"),
    ("half_open", "release"): ("half_open", None),
    ("half_open", "allow_early"): ("half_open", False),
    ("half_open", "allow_late"): ("half_open", False),
}


def test_table_covers_every_state_and_event() -> None:
    assert set(TABLE) == {(s, e) for s in STATES for e in EVENTS}


@pytest.mark.parametrize(("start", "event"), sorted(TABLE))
def test_state_table(start: str, event: str) -> None:
    breaker = STATES[start]()
    result = EVENTS[event](breaker)
    state, returned = TABLE[start, event]
    assert breaker.state == state
    assert result == returned


# -- properties -------------------------------------------------------------------------------

#: Transitions the state machine may make, and nothing else.
EDGES = {
    ("closed", "open"),
    ("open", "half_open"),
    ("half_open", "open"),
    ("half_open", "closed"),
}

configs = st.builds(
    BreakerConfig,
    failure_threshold=st.integers(1, 6),
    failure_ratio=st.sampled_from([0.1, 0.3, 0.5, 0.9, 1.0]),
    min_calls=st.integers(1, 8),
    window=st.integers(8, 12),
    open_for_s=st.sampled_from([0.5, 1.0, 2.0]),
    max_open_for_s=st.sampled_from([2.0, 5.0, 30.0]),
    half_open_probes=st.integers(1, 3),
)


class BreakerMachine(RuleBasedStateMachine):
    """Any sequence of calls, time moving forward, keeps the breaker's promises."""

    def __init__(self) -> None:
        super().__init__()
        self.hook = Recorder()
        self.breaker = Breaker(on_change=self.hook)
        self.now = 0.0

    @initialize(config=configs)
    def configure(self, config: BreakerConfig) -> None:
        self.breaker = Breaker(config, on_change=self.hook)

    @rule(dt=st.floats(0.0, 40.0, allow_nan=False))
    def wait(self, dt: float) -> None:
        self.now += dt

    @rule()
    def allow(self) -> None:
        before, probes = self.breaker.state, self.breaker.probes_in_flight
        limit = self.breaker.config.half_open_probes
        deadline = self._reopen_at()
        expected_wait = self.breaker.retry_in(self.now)
        allowed = self.breaker.allow(self.now)
        if before == "open" and self.now < deadline:
            assert not allowed
            assert self.breaker.state == "open"
            assert expected_wait == pytest.approx(deadline - self.now)
        if before == "open" and self.now >= deadline:
            assert allowed
            assert self.breaker.state == "half_open"
            assert self.breaker.probes_in_flight == 1
        if before == "half_open":
            assert allowed == (probes < limit)
        if before == "closed":
            assert allowed
        if allowed:
            assert expected_wait == 0.0

    @rule(systemic=st.booleans())
    def failure(self, systemic: bool) -> None:
        before = self.breaker.state
        after = self.breaker.record_failure(self.now, systemic=systemic)
        assert after == self.breaker.state
        if before == "open":
            assert after == "open"
        if before == "half_open":
            assert after == ("open" if systemic else "closed")

    @rule()
    def success(self) -> None:
        before = self.breaker.state
        after = self.breaker.record_success(self.now)
        assert after == self.breaker.state
        assert after == ("open" if before == "open" else "closed")

    @rule()
    def release(self) -> None:
        state, probes = self.breaker.state, self.breaker.probes_in_flight
        self.breaker.release_probe()
        assert self.breaker.state == state
        assert self.breaker.probes_in_flight == max(0, probes - 1)

    def _reopen_at(self) -> float:
        last_open = [t for t in self.hook.seen if t.new == "open"]
        return last_open[-1].at + last_open[-1].open_for_s if last_open else 0.0

    @invariant()
    def probes_within_the_slots(self) -> None:
        probes = self.breaker.probes_in_flight
        assert 0 <= probes <= self.breaker.config.half_open_probes
        if self.breaker.state != "half_open":
            assert probes == 0

    @invariant()
    def open_refuses_during_the_cool_down(self) -> None:
        if self.breaker.state == "open":
            assert self.breaker.retry_in(self.now) == pytest.approx(
                max(0.0, self._reopen_at() - self.now)
            )

    @invariant()
    def cool_down_within_bounds(self) -> None:
        config = self.breaker.config
        assert config.open_for_s <= self.breaker.open_for_s <= config.max_open_for_s

    @invariant()
    def closed_is_below_the_threshold(self) -> None:
        if self.breaker.state == "closed":
            assert self.breaker.consecutive_failures < self.breaker.config.failure_threshold
            failures, calls = self.breaker.window_failures
            assert 0 <= failures <= calls <= self.breaker.config.window

    @invariant()
    def transitions_follow_the_edges(self) -> None:
        assert self.breaker.transitions == len(self.hook.seen)
        for t in self.hook.seen:
            assert (t.old, t.new) in EDGES
        for a, b in zip(self.hook.seen, self.hook.seen[1:], strict=False):
            assert a.new == b.old
            assert a.at <= b.at
        if self.hook.seen:
            assert self.hook.seen[-1].new == self.breaker.state


BreakerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=50)
TestBreakerMachine = BreakerMachine.TestCase


@given(
    config=configs,
    outcomes=st.lists(st.booleans(), max_size=200),
)
def test_closed_never_ignores_a_tripping_failure(
    config: BreakerConfig, outcomes: list[bool]
) -> None:
    """Fed only outcomes (no time), the breaker opens at the first failure that meets a rule,
    computed here from the outcome list itself, and then stays open."""
    breaker = Breaker(config)
    run = 0
    for i, systemic in enumerate(outcomes):
        breaker.record_failure(0.0, systemic=systemic)
        run = run + 1 if systemic else 0
        window = outcomes[max(0, i + 1 - config.window) : i + 1]
        trips = systemic and (
            run >= config.failure_threshold
            or (
                len(window) >= config.min_calls
                and sum(window) / len(window) >= config.failure_ratio
            )
        )
        if trips:
            assert breaker.state == "open"
            break
        assert breaker.state == "closed"
    if breaker.state == "open":
        assert not breaker.allow(config.open_for_s / 2)
