"""Unit and stateful property tests of the pure offset tracker."""

from __future__ import annotations

from typing import NamedTuple, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from processor.offsets import (
    METADATA_LIMIT,
    CommitMeta,
    OffsetTracker,
    Verdict,
    decode_meta,
    encode_meta,
    inherited_lives,
)

TP = tuple[str, int]
A: TP = ("t", 0)
B: TP = ("t", 1)


def tracker_with(tp: TP, *offsets: int) -> OffsetTracker:
    tracker: OffsetTracker = OffsetTracker()
    for offset in offsets:
        tracker.start(tp, offset)
    return tracker


def test_empty_tracker_has_nothing_to_commit() -> None:
    tracker: OffsetTracker = OffsetTracker()
    assert tracker.committable(A) is None
    assert tracker.commit_offsets() == {}
    assert tracker.commit_offsets([A]) == {}
    assert tracker.in_flight() == 0
    assert tracker.in_flight(A) == 0
    assert tracker.pending_gap(A) == 0
    assert tracker.partitions() == []


@pytest.mark.parametrize(
    ("started", "finished", "committable_after_each"),
    [
        pytest.param((0, 1, 2), (0, 1, 2), (1, 2, 3), id="in-order-advances-one-by-one"),
        pytest.param((0, 1, 2), (2, 1, 0), (0, 0, 3), id="out-of-order-waits-for-the-lowest"),
        pytest.param((5, 9, 12), (5, 12, 9), (9, 9, 13), id="gaps-are-not-assumed-contiguous"),
    ],
)
def test_committable_after_each_finish(
    started: tuple[int, ...], finished: tuple[int, ...], committable_after_each: tuple[int, ...]
) -> None:
    tracker = tracker_with(A, *started)
    assert tracker.committable(A) == started[0]
    after_each = []
    for offset in finished:
        assert tracker.finish(A, offset) is True
        after_each.append(tracker.committable(A))
    assert tuple(after_each) == committable_after_each


def test_nothing_to_commit_until_it_moves_past_the_last_mark() -> None:
    tracker = tracker_with(A, 0, 1, 2)
    tracker.finish(A, 0)
    tracker.mark_committed({A: 1})
    assert tracker.committable(A) is None
    assert tracker.commit_offsets() == {}
    tracker.finish(A, 2)  # out of order: 1 still in flight, so still nothing new
    assert tracker.committable(A) is None
    tracker.finish(A, 1)
    assert tracker.committable(A) == 3


def test_mark_committed_never_moves_backwards() -> None:
    tracker = tracker_with(A, 0, 1, 2, 3)
    for offset in (0, 1, 2):
        tracker.finish(A, offset)
    tracker.mark_committed({A: 3})
    tracker.mark_committed({A: 1})  # a stale, slower commit landing late
    assert tracker.committable(A) is None
    tracker.finish(A, 3)
    assert tracker.committable(A) == 4


def test_mark_committed_ignores_untracked_partitions() -> None:
    tracker = tracker_with(A, 0)
    tracker.mark_committed({B: 7})
    assert tracker.partitions() == [A]
    assert tracker.committable(B) is None


def test_commit_offsets_only_for_given_partitions_that_moved() -> None:
    tracker: OffsetTracker = OffsetTracker()
    c: TP = ("t", 2)
    for tp in (A, B, c):
        tracker.start(tp, 10)
        tracker.finish(tp, 10)
    tracker.mark_committed({c: 11})
    assert tracker.commit_offsets() == {A: 11, B: 11}
    assert tracker.commit_offsets([B, c, ("t", 99)]) == {B: 11}
    assert tracker.commit_offsets([]) == {}


def test_started_but_unfinished_first_record_is_committable_as_itself() -> None:
    tracker = tracker_with(A, 42)
    assert tracker.committable(A) == 42
    tracker.mark_committed({A: 42})
    assert tracker.committable(A) is None


@pytest.mark.parametrize(
    ("tp", "offset"),
    [(A, 7), (A, 3), (B, 0)],
    ids=["never-started", "below-started", "unknown-partition"],
)
def test_finishing_an_unknown_offset_is_ignored(tp: TP, offset: int) -> None:
    tracker = tracker_with(A, 4, 5)
    assert tracker.finish(tp, offset) is False
    assert tracker.committable(A) == 4
    assert tracker.in_flight() == 2


def test_finishing_twice_is_ignored_the_second_time() -> None:
    tracker = tracker_with(A, 0, 1)
    assert tracker.finish(A, 1) is True
    assert tracker.finish(A, 1) is False
    assert tracker.in_flight(A) == 1
    assert tracker.committable(A) == 0


def test_drop_abandons_in_flight_records() -> None:
    tracker = tracker_with(A, 0, 1, 2)
    tracker.start(B, 0)
    tracker.drop(A)
    assert tracker.finish(A, 1) is False
    assert tracker.committable(A) is None
    assert tracker.in_flight(A) == 0
    assert tracker.in_flight() == 1
    assert tracker.partitions() == [B]
    assert tracker.commit_offsets() == {B: 0}
    tracker.drop(A)  # dropping twice is harmless


def test_reassigned_partition_starts_afresh() -> None:
    tracker = tracker_with(A, 0, 1, 2)
    tracker.finish(A, 0)
    tracker.mark_committed({A: 1})
    tracker.drop(A)
    tracker.start(A, 1)  # re-delivered from the committed offset: lower than before is fine
    assert tracker.committable(A) == 1
    assert tracker.finish(A, 1) is True
    assert tracker.committable(A) == 2


@pytest.mark.parametrize("offset", [4, 3, -1], ids=["repeat", "backwards", "negative"])
def test_start_rejects_offsets_not_increasing(offset: int) -> None:
    tracker = tracker_with(A, 4)
    with pytest.raises(ValueError, match="offset"):
        tracker.start(A, offset)
    assert tracker.in_flight(A) == 1


def test_negative_first_offset_is_rejected_without_tracking_the_partition() -> None:
    tracker: OffsetTracker = OffsetTracker()
    with pytest.raises(ValueError, match="negative"):
        tracker.start(A, -1)
    assert tracker.partitions() == []


def test_in_flight_counts_per_partition_and_in_total() -> None:
    tracker = tracker_with(A, 0, 1, 2)
    tracker.start(B, 5)
    tracker.finish(A, 1)
    assert tracker.in_flight(A) == 2
    assert tracker.in_flight(B) == 1
    assert tracker.in_flight() == 3


def test_pending_gap_counts_started_records_until_committed() -> None:
    tracker = tracker_with(A, 0, 1, 2, 3, 4)
    tracker.finish(A, 0)
    tracker.finish(A, 1)
    tracker.finish(A, 3)
    assert tracker.pending_gap(A) == 5
    tracker.mark_committed(tracker.commit_offsets())
    assert tracker.pending_gap(A) == 3  # 2 and 4 unfinished, 3 finished but behind 2
    tracker.finish(A, 2)
    tracker.finish(A, 4)
    assert tracker.pending_gap(A) == 3
    tracker.mark_committed({A: 3})  # an older commit result: covers 2 only
    assert tracker.pending_gap(A) == 2
    tracker.mark_committed(tracker.commit_offsets())
    assert tracker.pending_gap(A) == 0


def test_partitions_in_first_start_order() -> None:
    tracker: OffsetTracker = OffsetTracker()
    tracker.start(B, 0)
    tracker.start(A, 0)
    tracker.start(B, 1)
    assert tracker.partitions() == [B, A]


class TopicPartition(NamedTuple):
    """Shaped like aiokafka's key."""

    topic: str
    partition: int


def test_named_tuple_keys_work_like_aiokafka_topic_partitions() -> None:
    tracker: OffsetTracker = OffsetTracker()
    tracker.start(TopicPartition("requests", 3), 100)
    assert tracker.finish(TopicPartition("requests", 3), 100) is True
    assert tracker.commit_offsets() == {TopicPartition("requests", 3): 101}


@pytest.mark.timeout(30)
def test_many_records_finished_in_reverse_stay_cheap() -> None:
    # A quadratic tracker (e.g. min() over the in-flight set per call) would not finish in time.
    n = 200_000
    tracker = tracker_with(A, *range(0, 2 * n, 2))
    for offset in range(2 * n - 2, 0, -2):
        tracker.finish(A, offset)
        assert tracker.committable(A) == 0
    tracker.finish(A, 0)
    assert tracker.committable(A) == 2 * n - 1
    assert tracker.in_flight() == 0


class OffsetMachine(RuleBasedStateMachine):
    """Random interleavings of start, finish, commit and revoke against a simple model."""

    def __init__(self) -> None:
        super().__init__()
        self.tracker: OffsetTracker = OffsetTracker()
        self.started: dict[TP, list[int]] = {}
        self.unfinished: dict[TP, set[int]] = {}
        self.committed: dict[TP, int] = {}
        #: What the broker holds: survives a revoke, so re-delivery starts from it.
        self.broker: dict[TP, int] = {}

    @rule(tp=st.sampled_from([A, B]), gap=st.integers(1, 4))
    def start(self, tp: TP, gap: int) -> None:
        started = self.started.setdefault(tp, [])
        offset = started[-1] + gap if started else self.broker.get(tp, 0) + gap - 1
        self.tracker.start(tp, offset)
        started.append(offset)
        self.unfinished.setdefault(tp, set()).add(offset)

    @precondition(lambda self: any(self.unfinished.values()))
    @rule(data=st.data())
    def finish_in_flight(self, data: st.DataObject) -> None:
        tp = data.draw(st.sampled_from(sorted(tp for tp, s in self.unfinished.items() if s)))
        offset = data.draw(st.sampled_from(sorted(self.unfinished[tp])))
        assert self.tracker.finish(tp, offset) is True
        self.unfinished[tp].remove(offset)

    @rule(tp=st.sampled_from([A, B]), offset=st.integers(0, 60))
    def finish_anything(self, tp: TP, offset: int) -> None:
        expected = offset in self.unfinished.get(tp, set())
        assert self.tracker.finish(tp, offset) is expected
        self.unfinished.get(tp, set()).discard(offset)

    @rule(assignment=st.sampled_from([None, [A], [B], [A, B]]), lands=st.booleans())
    def commit(self, assignment: list[TP] | None, lands: bool) -> None:
        # The tracker hands back the keys it was given; the model keys are all TPs.
        offsets = {cast(TP, tp): o for tp, o in self.tracker.commit_offsets(assignment).items()}
        assert assignment is None or set(offsets) <= set(assignment)
        for tp, offset in offsets.items():
            assert offset > self.committed.get(tp, -1), "commit must move forwards"
            assert all(o >= offset for o in self.unfinished[tp]), "passed an unfinished record"
        if lands:
            self.tracker.mark_committed(offsets)
            self.committed.update(offsets)
            self.broker.update(offsets)

    @rule(tp=st.sampled_from([A, B]))
    def revoke(self, tp: TP) -> None:
        self.tracker.drop(tp)
        for model in (self.started, self.unfinished, self.committed):
            model.pop(tp, None)

    @invariant()
    def committable_is_safe(self) -> None:
        for tp, started in self.started.items():
            offset = self.tracker.committable(tp)
            committed = self.committed.get(tp)
            unfinished = self.unfinished[tp]
            if unfinished:
                expected: int | None = min(unfinished)
            else:
                expected = started[-1] + 1 if started else None
            if expected is not None and committed is not None and expected <= committed:
                expected = None
            assert offset == expected

    @invariant()
    def counts_match(self) -> None:
        assert self.tracker.in_flight() == sum(len(s) for s in self.unfinished.values())
        for tp, started in self.started.items():
            assert self.tracker.in_flight(tp) == len(self.unfinished[tp])
            committed = self.committed.get(tp, -1)
            assert self.tracker.pending_gap(tp) == sum(1 for o in started if o >= committed)
        assert set(self.tracker.partitions()) == set(self.started)


OffsetMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
TestOffsetMachine = OffsetMachine.TestCase


@st.composite
def schedules(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """Offsets started with random gaps, and a random order to finish them in."""
    gaps = draw(st.lists(st.integers(1, 5), min_size=1, max_size=50))
    offsets = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    return offsets, draw(st.permutations(offsets))


@given(schedule=schedules(), commit_every=st.integers(1, 5))
def test_any_finish_order_is_safe_and_ends_at_last_plus_one(
    schedule: tuple[list[int], list[int]], commit_every: int
) -> None:
    offsets, finish_order = schedule
    tracker = tracker_with(A, *offsets)
    unfinished = set(offsets)
    committed = -1
    for i, offset in enumerate(finish_order, 1):
        tracker.finish(A, offset)
        unfinished.remove(offset)
        if i % commit_every == 0:
            commit = tracker.commit_offsets().get(A)
            if commit is not None:
                assert commit > committed
                assert all(o >= commit for o in unfinished)
                tracker.mark_committed({A: commit})
                committed = commit
    final = tracker.committable(A)
    assert (final if final is not None else committed) == offsets[-1] + 1


# -- commit metadata: what the next owner inherits --------------------------------------------


def test_metadata_round_trip_by_example() -> None:
    meta = CommitMeta(frozenset({11, 12, 13, 20}), {10: 1, 14: 2, 15: 2, 30: 1}, 40)
    text = encode_meta(10, meta)
    assert text == "vx1;;u;1.3.6.1;0.1.1.3.2.2.e.1.1"
    assert decode_meta(10, text) == meta


@pytest.mark.parametrize("text", ["", "some other client's note", "v2;;;;"])
def test_metadata_written_by_others_says_nothing(text: str) -> None:
    assert decode_meta(5, text) == CommitMeta()


@pytest.mark.parametrize(
    "text",
    ["vx1;;", "vx1;x;;;", "vx1;;;1;", "vx1;;;1.0;", "vx1;;;;0.1.0", "vx1;;;zz!;", "vx1;;-1;;"],
)
def test_damaged_metadata_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="commit metadata"):
        decode_meta(5, text)


offsets_above = st.frozensets(st.integers(0, 3000), max_size=300)


@st.composite
def metas(draw: st.DrawFn) -> tuple[int, CommitMeta]:
    base = draw(st.integers(0, 10**12))
    done = frozenset(base + o for o in draw(offsets_above))
    lives = {base + o: draw(st.integers(1, 9)) for o in draw(offsets_above) if base + o not in done}
    frontier = draw(st.none() | st.integers(base + 1, base + 4000))
    return base, CommitMeta(done, lives, frontier, draw(st.booleans()))


@given(metas())
def test_metadata_round_trips_when_it_fits(case: tuple[int, CommitMeta]) -> None:
    base, meta = case
    text = encode_meta(base, meta, limit=10**6)
    assert text.isascii()
    assert decode_meta(base, text) == meta


@given(metas(), st.integers(16, 400))
def test_metadata_that_does_not_fit_is_cut_from_the_high_end(
    case: tuple[int, CommitMeta], limit: int
) -> None:
    base, meta = case
    text = encode_meta(base, meta, limit=limit)
    assert len(text) <= limit
    back = decode_meta(base, text)
    # Never skip an offset that was not finished; never invent a life.
    assert back.done <= meta.done
    assert back.lives.items() <= meta.lives.items()
    assert (back.frontier, back.clean) == (meta.frontier, meta.clean)
    if back.done != meta.done:
        assert back.truncated
        kept = max(back.done, default=base - 1)
        assert all(o > kept for o in meta.done - back.done), "cut from the high end only"


def test_a_full_window_of_gaps_fits_kafkas_default_limit() -> None:
    # 1,000 uncommitted records with every other one in flight: about 500 runs each way.
    done = frozenset(range(1, 1000, 2))
    lives = dict.fromkeys(range(0, 1000, 2), 1)
    text = encode_meta(0, CommitMeta(done, lives, 1032))
    assert len(text) <= METADATA_LIMIT
    assert decode_meta(0, text).lives == lives, "lives are kept before done offsets"


def test_lives_grow_by_one_below_the_frontier_unless_the_writer_drained() -> None:
    meta = CommitMeta(frozenset({12}), {11: 2, 20: 3}, 14)
    assert inherited_lives(10, meta) == {10: 1, 11: 3, 13: 1, 20: 3}
    clean = CommitMeta(meta.done, meta.lives, meta.frontier, clean=True)
    assert inherited_lives(10, clean) == {11: 2, 20: 3}


def test_an_inherited_partition_skips_what_was_done_and_counts_lives() -> None:
    tracker: OffsetTracker = OffsetTracker(solo_after=2, give_up_after=3)
    text = encode_meta(10, CommitMeta(frozenset({11, 13}), {12: 1, 14: 2}, 15))
    tracker.inherit(A, 10, text)
    assert tracker.is_inherited(A)
    verdicts = {o: tracker.verdict(A, o) for o in range(10, 17)}
    assert verdicts == {
        10: Verdict.RUN,  # lives 1 (in flight at the crash)
        11: Verdict.SKIP,
        12: Verdict.SOLO,  # lives 2
        13: Verdict.SKIP,
        14: Verdict.GIVE_UP,  # lives 3
        15: Verdict.RUN,  # above the frontier: never dispatched
        16: Verdict.RUN,
    }
    assert tracker.verdict(B, 0) is Verdict.RUN  # never inherited: knows nothing


def test_commit_points_carry_done_offsets_and_lives_and_only_what_changed() -> None:
    tracker: OffsetTracker = OffsetTracker()
    tracker.inherit(A, 10, encode_meta(10, CommitMeta(frozenset(), {}, 12)))
    tracker.reserve(A, 10, 20)
    for o in (10, 11, 12):
        tracker.start(A, o)
    tracker.finish(A, 11)
    points = tracker.commit_points([A])
    point = points[A]
    assert point.offset == 10
    back = decode_meta(10, point.metadata)
    assert back.done == {11}
    assert back.lives == {10: 1}  # lost one life with the writer before; 11 finished
    assert back.frontier == 20
    tracker.mark_sent(points)
    assert tracker.commit_points([A]) == {}, "nothing new to say"
    assert not tracker.needs_frontier(A, 19)
    assert tracker.needs_frontier(A, 20)


def test_a_first_write_ahead_commits_at_the_first_offset_before_it_starts() -> None:
    tracker: OffsetTracker = OffsetTracker()
    tracker.inherit(A, None, "")
    assert tracker.commit_points([A]) == {}
    tracker.reserve(A, 7, 40)
    point = tracker.commit_points([A])[A]
    assert (point.offset, point.frontier) == (7, 40)


def test_pinned_frontiers_cover_exactly_the_record_run_alone() -> None:
    tracker: OffsetTracker = OffsetTracker()
    for tp in (A, B):
        tracker.inherit(tp, 0, "")
        tracker.reserve(tp, 0, 50)
        tracker.start(tp, 0)
        tracker.finish(tp, 0)
    tracker.pin_frontiers(A, 1)
    points = tracker.commit_points([A, B])
    assert points[A].frontier == 2
    assert points[B].frontier == 1


class Crash(NamedTuple):
    landed: tuple[int, str]
    finished: set[int]
    finished_at_commit: set[int]


@st.composite
def lives_before_a_crash(draw: st.DrawFn) -> Crash:
    """One owner starts offsets 0..n-1, finishes them in any order, commits now and then
    (some commits lost), and dies; returns the last commit that landed."""
    n = draw(st.integers(1, 40))
    tracker: OffsetTracker = OffsetTracker(limit=draw(st.sampled_from([60, METADATA_LIMIT])))
    tracker.inherit(A, 0, "")
    tracker.reserve(A, 0, n + 5)
    for o in range(n):
        tracker.start(A, o)
    finished: set[int] = set()
    landed, at_commit = (0, ""), set()
    for o in draw(st.permutations(range(n))):
        if draw(st.booleans()):
            tracker.finish(A, o)
            finished.add(o)
        if draw(st.booleans()):
            points = tracker.commit_points([A])
            lands: bool = draw(st.booleans())
            if points and lands:
                tracker.mark_sent(points)
                landed, at_commit = (points[A].offset, points[A].metadata), set(finished)
    return Crash(landed, finished, at_commit)


@given(lives_before_a_crash())
@settings(max_examples=300)
def test_the_next_owner_never_skips_an_unfinished_record(crash: Crash) -> None:
    offset, text = crash.landed
    heir: OffsetTracker = OffsetTracker()
    heir.inherit(A, offset, text)
    skipped = {o for o in range(offset, 60) if heir.verdict(A, o) is Verdict.SKIP}
    assert skipped <= crash.finished
    assert skipped <= crash.finished_at_commit, "only what the landed commit knew"
    if not decode_meta(offset, text).truncated:
        # ...and everything it knew: a crash redoes only what was in flight.
        assert skipped == {o for o in crash.finished_at_commit if o >= offset}
    unfinished = {o for o in range(offset, 60) if o not in skipped and heir.lives(A, o)}
    assert all(heir.lives(A, o) == 1 for o in unfinished)
