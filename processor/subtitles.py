"""Pure: SRT and WebVTT subtitles at sentence boundaries (the files written by pysubs2).

Each sentence piece is a cue starting at its sentence mark's time and ending where its audio
ends (the last cue ends with the audio). A sentence longer than a cue allows (``LINES`` lines
of ``LINE_CHARS`` characters, ``MAX_CUE_MS``) is cut at clause punctuation, then between words;
its parts share the sentence's measured span in proportion to their length (the first part
still starts at the sentence mark). Netflix-style defaults: 42 characters, 2 lines, 7 s.
"""

from __future__ import annotations

import dataclasses
import re
import textwrap

from processor.segments import Timing

LINE_CHARS = 42
LINES = 2
MAX_CUE_MS = 7000
_CLAUSE = re.compile(r"(?<=[,;:，、；：])\s*")  # CJK clause marks


@dataclasses.dataclass(frozen=True, slots=True)
class Cue:
    start_ms: int
    end_ms: int
    lines: tuple[str, ...]


def cues(timing: Timing) -> list[Cue]:
    """The cues of a rendered request, in order."""
    out: list[Cue] = []
    joined = timing.joined
    for piece, first, last in zip(timing.plan.pieces, joined.starts, joined.ends, strict=True):
        start, end = joined.ms(first), joined.ms(last)
        parts = _parts(piece.text, end - start)
        total = sum(len(p) for p in parts)
        at = 0
        for part in parts:
            cue_start = start + (end - start) * at // total
            at += len(part)
            cue_end = start + (end - start) * at // total
            out.append(Cue(cue_start, cue_end, tuple(_wrap(part))))
    return out


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, LINE_CHARS, break_long_words=True) or [text]


def _fits(text: str, ms: int) -> bool:
    return len(_wrap(text)) <= LINES and ms <= MAX_CUE_MS


def _parts(text: str, ms: int) -> list[str]:
    """The sentence cut into cue texts: whole when it fits, else at clauses, then words."""
    if _fits(text, ms):
        return [text]
    clauses = [c for c in _CLAUSE.split(text) if c.strip()]
    per_char = ms / max(1, len(text))
    out: list[str] = []
    for clause in clauses:
        if out and _fits(f"{out[-1]} {clause}", int(per_char * (len(out[-1]) + len(clause) + 1))):
            out[-1] = f"{out[-1]} {clause}"
        elif _fits(clause, int(per_char * len(clause))):
            out.append(clause)
        else:
            out += _by_words(clause, per_char)
    return out


def _by_words(text: str, per_char: float) -> list[str]:
    lines = _wrap(text)
    most = max(1, min(LINES, int(MAX_CUE_MS / max(per_char * LINE_CHARS, 1e-9))))
    glue = " " if " " in text else ""  # Chinese and Japanese lines join without a space
    return [glue.join(lines[i : i + most]) for i in range(0, len(lines), most)]


def render(found: list[Cue], kind: str) -> bytes:
    """``srt`` or ``vtt`` file content, UTF-8."""
    import pysubs2  # on first use: a processor writing no subtitles never holds it (1.4 MiB)

    subs = pysubs2.SSAFile()
    for cue in found:
        subs.events.append(
            pysubs2.SSAEvent(start=cue.start_ms, end=cue.end_ms, text=r"\N".join(cue.lines))
        )
    return subs.to_string(kind).encode()
