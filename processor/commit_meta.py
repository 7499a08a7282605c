"""Commit metadata: what a commit says beyond its offset, as a short ASCII string.

Kafka keeps a metadata string with each committed offset (``offset.metadata.max.bytes``,
4096 by default). Voxline writes there which offsets above the committed one are finished,
and how many process lives each unfinished record has cost (see ``processor.offsets``).
Pure: no Kafka here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: Kafka's default ``offset.metadata.max.bytes`` is 4096; stay below it.
METADATA_LIMIT = 4000
_TAG = "vx1"
_NUMBERS = re.compile(r"[0-9a-z.]*")
#: Offsets of an inherited frontier materialised at most (a sanity bound, never reached
#: in practice: a frontier is at most the uncommitted cap plus the window ahead).
_FRONTIER_CAP = 100_000


@dataclass(frozen=True, slots=True)
class CommitMeta:
    """What a commit says about the records at and above its offset."""

    #: Finished offsets at or above the committed one.
    done: frozenset[int] = frozenset()
    #: Unfinished offsets and the lives they cost before the writer's.
    lives: Mapping[int, int] = field(default_factory=dict)
    #: Unfinished offsets below it were in flight (or about to be) at the writer.
    frontier: int | None = None
    #: The writer drained on purpose: nothing died with it.
    clean: bool = False
    #: The sets did not fit and were cut at the high end.
    truncated: bool = False


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out


def _runs(offsets: Iterable[int], value: Mapping[int, int] | None = None) -> list[list[int]]:
    """Consecutive offsets (with equal ``value``, if given) as ``[start, length, value]``."""
    runs: list[list[int]] = []
    for o in sorted(offsets):
        v = 0 if value is None else value[o]
        last = runs[-1] if runs else None
        if last is not None and last[0] + last[1] == o and last[2] == v:
            last[1] += 1
        else:
            runs.append([o, 1, v])
    return runs


def _tokens(base: int, runs: list[list[int]], with_value: bool) -> list[str]:
    """Each run as ``gap.length[.value]`` in base 36, the gap from the previous run's end."""
    out, prev = [], base
    for start, length, value in runs:
        nums = [start - prev, length] + ([value] if with_value else [])
        out.append(".".join(map(_b36, nums)))
        prev = start + length
    return out


def _fit(tokens: list[str], budget: int) -> list[str]:
    """The longest prefix of ``tokens`` that fits ``budget`` characters joined by dots."""
    kept, used = [], -1
    for token in tokens:
        used += len(token) + 1
        if used > budget:
            break
        kept.append(token)
    return kept


def encode_meta(base: int, meta: CommitMeta, limit: int = METADATA_LIMIT) -> str:
    """``meta`` for a commit at ``base`` as a short ASCII string of at most ``limit`` chars.

    Form: ``vx1;FLAGS;FRONTIER;DONE;LIVES`` with numbers in base 36 relative to ``base``:
    done offsets as runs ``gap.length``, lives as runs ``gap.length.count``. What does not
    fit is cut from the high end (flag ``t``): a done offset left out is only redone, and
    lives are kept before done offsets because losing them is worse.
    """
    done = _tokens(base, _runs(o for o in meta.done if o >= base), False)
    lives_at = {o: n for o, n in meta.lives.items() if o >= base and n > 0}
    lives = _tokens(base, _runs(lives_at, lives_at), True)
    frontier = "" if meta.frontier is None or meta.frontier <= base else _b36(meta.frontier - base)
    room = limit - len(_TAG) - len(frontier) - 6  # separators and up to two flags
    kept_lives = _fit(lives, room)
    kept_done = _fit(done, room - len(".".join(kept_lives)))
    cut = meta.truncated or len(kept_lives) < len(lives) or len(kept_done) < len(done)
    flags = ("c" if meta.clean else "") + ("t" if cut else "")
    return ";".join([_TAG, flags, frontier, ".".join(kept_done), ".".join(kept_lives)])


def _parse_runs(base: int, text: str, width: int) -> list[tuple[int, int, int]]:
    nums = [int(t, 36) for t in text.split(".")] if text else []
    if len(nums) % width:
        raise ValueError(f"commit metadata: a run needs {width} numbers: {text!r}")
    runs, prev = [], base
    for i in range(0, len(nums), width):
        gap, length, *value = nums[i : i + width]
        if length < 1 or (value and value[0] < 1):
            raise ValueError(f"commit metadata: empty run in {text!r}")
        runs.append((prev + gap, length, value[0] if value else 0))
        prev += gap + length
    return runs


def decode_meta(base: int, text: str) -> CommitMeta:
    """The metadata a commit at ``base`` carried; empty (knows nothing) for ``""`` or text
    another client wrote. Raises ``ValueError`` on a damaged ``vx1`` string."""
    parts = text.split(";")
    if parts[0] != _TAG:
        return CommitMeta()
    if len(parts) != 5 or set(parts[1]) - {"c", "t"} or not _NUMBERS.fullmatch("".join(parts[2:])):
        raise ValueError(f"commit metadata: not {_TAG};FLAGS;FRONTIER;DONE;LIVES: {text!r}")
    try:
        frontier = base + int(parts[2], 36) if parts[2] else None
        done = [o for s, n, _ in _parse_runs(base, parts[3], 2) for o in range(s, s + n)]
        lives = {o: v for s, n, v in _parse_runs(base, parts[4], 3) for o in range(s, s + n)}
    except ValueError as exc:
        raise ValueError(f"commit metadata: {exc}: {text!r}") from None
    return CommitMeta(frozenset(done), lives, frontier, "c" in parts[1], "t" in parts[1])


def inherited_lives(base: int, meta: CommitMeta) -> dict[int, int]:
    """Lives lost per unfinished offset: those recorded, plus one for the writer unless it
    drained cleanly, for every unfinished offset below its frontier."""
    lives = dict(meta.lives)
    if not meta.clean and meta.frontier is not None:
        for o in range(base, min(meta.frontier, base + _FRONTIER_CAP)):
            if o not in meta.done:
                lives[o] = lives.get(o, 0) + 1
    return lives
