"""Pure: speech marks (Amazon Polly's JSON lines) from where each piece landed in the audio.

Marks are measured, not estimated: when marks are asked for, every sentence is its own piece
(``processor.segments``), and the joiner knows the frame each piece starts at, so a mark's
``time`` is the sum of the measured durations and the exact silences before it.

    type       time                                  start/end                  value
    sentence   its piece's first frame               offsets into the text sent  the sentence
    ssml       the first frame of what follows it    the ``<mark>`` tag's offset its name

Word marks need word timings from the backend; none of the backends Voxline ships returns
them (espeak-ng, OpenAI-compatible, CosyVoice, Fish Speech, Qwen3-TTS), so a request for
``word`` marks is ``invalid_input`` (``error_type="word_marks_unsupported"``) before any call.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from processor.errors import InvalidInput, Stage
from processor.request import Request

if TYPE_CHECKING:  # segments checks marks before synthesis: no import cycle at run time
    from processor.segments import Timing

#: Backend kinds that return word timings (none yet; see the module docstring).
WORD_TIMING_KINDS: frozenset[str] = frozenset()


def check_marks(request: Request, kind: str) -> None:
    """``InvalidInput`` for marks this backend cannot measure (pure; before synthesis)."""
    if "word" in request.marks and kind not in WORD_TIMING_KINDS:
        raise InvalidInput(
            f"$.marks: 'word' marks need word timings, which backend kind {kind!r} does not "
            "return; ask for 'sentence' and 'ssml' marks",
            stage=Stage.VALIDATE,
            error_type="word_marks_unsupported",
        )


def sentence_marks(request: Request, timing: Timing) -> list[dict[str, object]]:
    """One mark per sentence piece, at the frame it starts."""
    plain = request.text_type != "ssml"
    marks: list[dict[str, object]] = []
    for piece, frame in zip(timing.plan.pieces, timing.joined.starts, strict=True):
        value = request.text[piece.start : piece.end] if plain else piece.text
        marks.append(_mark(timing.joined.ms(frame), "sentence", piece.start, piece.end, value))
    return marks


def ssml_marks(timing: Timing) -> list[dict[str, object]]:
    """``<mark>``s at the start of the first piece of the segment they stand before (the
    audio's end for a mark after the last segment)."""
    firsts: dict[int, int] = {}
    for piece, frame in zip(timing.plan.pieces, timing.joined.starts, strict=True):
        firsts.setdefault(piece.segment, frame)
    end = timing.joined.ends[-1]
    out = []
    for mark, segment in timing.plan.script.marks:
        frame = min((f for s, f in firsts.items() if s >= segment), default=end)
        out.append(_mark(timing.joined.ms(frame), "ssml", mark.start, mark.end, mark.name))
    return out


def speech_marks(request: Request, timing: Timing) -> list[dict[str, object]]:
    """The marks the request asked for, in time order (an ssml mark before a sentence that
    starts at the same time)."""
    marks = []
    if "ssml" in request.marks:
        marks += ssml_marks(timing)
    if "sentence" in request.marks:
        marks += sentence_marks(request, timing)
    return sorted(marks, key=lambda m: (m["time"], m["type"] != "ssml"))


def jsonl(marks: Iterable[Mapping[str, object]]) -> bytes:
    """JSON lines, one mark a line, UTF-8 (Polly's speech-marks format)."""
    return "".join(json.dumps(m, ensure_ascii=False) + "\n" for m in marks).encode()


def _mark(time_ms: int, kind: str, start: int, end: int, value: str) -> dict[str, object]:
    return {"time": time_ms, "type": kind, "start": start, "end": end, "value": value}
