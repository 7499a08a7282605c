"""Pure: a script's segments cut into backend calls, and their audio joined with exact silences.

A segment longer than the backend's text limit (or, when timing marks are asked for, holding
several sentences) is cut into pieces at sentence boundaries; pieces of one segment are
``SENTENCE_GAP_MS`` apart, segments are their script's gap apart. The joiner writes exactly
that many frames of digital silence and reports where each piece starts and ends, so a mark's
time is a sum of measured durations and gaps, never an estimate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from types import MappingProxyType

from processor.audio import pcm_to_wav, silence, silence_frames, wav_pcm
from processor.backends.base import Audio, ReferenceAudio, Utterance, finite, utterance_of
from processor.chunking import split_sentences, split_text
from processor.lexicon import Lexicon, apply, lexicon_notes
from processor.marks import check_marks
from processor.request import Request
from processor.ssml import SENTENCE_GAP_MS, Script, Segment, Voicing, parse_ssml


@dataclasses.dataclass(frozen=True, slots=True)
class Piece:
    """One backend call: its text, voicing, the silence before it and its span in the input."""

    text: str
    voicing: Voicing
    gap_ms: int
    start: int
    end: int
    segment: int  # index of the script segment it belongs to


@dataclasses.dataclass(frozen=True, slots=True)
class Joined:
    """The joined audio and each piece's measured place in it, in frames and ms."""

    audio: Audio
    starts: tuple[int, ...]  # frame of each piece's first sample
    ends: tuple[int, ...]  # frame after each piece's last sample

    def ms(self, frame: int) -> int:
        return (frame * 1000 + self.audio.sample_rate // 2) // self.audio.sample_rate

    def delayed(self, seconds: float) -> Joined:
        """The same pieces, with ``seconds`` of sound put before them (mastering's lead)."""
        frames = round(seconds * self.audio.sample_rate)
        starts = tuple(start + frames for start in self.starts)
        return dataclasses.replace(self, starts=starts, ends=tuple(e + frames for e in self.ends))


def plain_script(text: str) -> Script:
    """A plain-text request as a script: one segment, the whole text."""
    return Script((Segment(text, Voicing(), 0, len(text)),), (0,))


def pieces(script: Script, limit: int, *, sentences: bool) -> list[Piece]:
    """The backend calls for ``script``: whole segments, cut at the limit, and at every
    sentence when ``sentences`` (timing marks: each sentence its own measured piece)."""
    out: list[Piece] = []
    for index, (segment, gap) in enumerate(zip(script.segments, script.gaps, strict=True)):
        cut = split_sentences(segment.text, limit) if sentences else split_text(segment.text, limit)
        texts = [t for t in cut if t.strip()]
        for n, (text, start, end) in enumerate(_spans(segment, cut, texts)):
            out.append(Piece(text.strip(), segment.voicing, gap if n == 0 else SENTENCE_GAP_MS,
                             start, end, index))  # fmt: skip
    return out


def _spans(segment: Segment, cut: list[str], texts: list[str]) -> list[tuple[str, int, int]]:
    """Each piece's span in the input: exact where the segment's text is the input's own
    (plain text), else the segment's span shared out in proportion to the pieces' length."""
    width = segment.end - segment.start
    exact = width == len(segment.text)
    spans, at = [], 0
    total = max(1, sum(len(t) for t in cut))
    for text in cut:
        if text.strip():
            lead = len(text) - len(text.lstrip())
            body = len(text.strip())
            if exact:
                start, end = segment.start + at + lead, segment.start + at + lead + body
            else:
                start = segment.start + width * at // total
                end = segment.start + width * (at + len(text)) // total
            spans.append((text, start, end))
        at += len(text)
    return spans


def join_pieces(parts: list[Audio], gaps: list[int]) -> Joined:
    """``parts`` in order with exactly ``gaps[i]`` ms of silence before part ``i``.

    All parts must share one PCM format (``ValueError`` otherwise, as ``join_wavs``)."""
    decoded = [wav_pcm(p.data) for p in parts]
    first = decoded[0][0]
    frame = first.frame_size
    pcm, starts, ends, at = bytearray(), [], [], 0
    for (info, data), gap in zip(decoded, gaps, strict=True):
        if (info.sample_rate, info.channels, info.sample_width) != (
            first.sample_rate, first.channels, first.sample_width,
        ):  # fmt: skip
            raise ValueError("the segments' audio differ in format")
        if at:
            pcm += silence(first.sample_rate, first.channels, first.sample_width, gap)
            at += silence_frames(first.sample_rate, gap)
        starts.append(at)
        pcm += data
        at += len(data) // frame
        ends.append(at)
    wav = pcm_to_wav(bytes(pcm), first.sample_rate, first.channels, first.sample_width)
    duration = (at * 1000 + first.sample_rate // 2) // first.sample_rate
    audio = Audio(wav, "wav", first.sample_rate, first.channels, duration)
    return Joined(audio, tuple(starts), tuple(ends))


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """A request as rendered: its script and the backend calls that speak it."""

    script: Script
    pieces: tuple[Piece, ...]
    notes: tuple[str, ...] = ()  # for the succeeded event: what was not rendered as written


#: Backend kinds that take espeak-ng phoneme input (``[[...]]``) for ``<phoneme>``.
PHONEME_KINDS = frozenset({"espeak"})


def plan_of(request: Request, limit: int, *, kind: str, lexicons: bool = False) -> Plan | None:
    """The segment plan of an SSML request, or of one that asks for marks or subtitles;
    ``None`` for plain text without them or ``lexicons`` (the chunked path, unchanged).
    ``InvalidInput`` for
    SSML or marks the backend ``kind`` cannot serve, before any call."""
    check_marks(request, kind)
    timed = bool(request.marks or request.subtitles)
    if request.text_type == "ssml":
        phonemes = kind in PHONEME_KINDS
        script = parse_ssml(request.text, language=request.language, phonemes=phonemes)
    elif timed or lexicons:
        script = plain_script(request.text)
    else:
        return None
    return Plan(script, tuple(pieces(script, limit, sentences=timed)), script.notes)


def with_lexicons(plan: Plan, lexicons: Sequence[Lexicon], *, kind: str) -> Plan:
    """The plan with the lexicons applied to each piece (after cutting: offsets still point
    into the text as sent)."""
    phonemes = kind in PHONEME_KINDS
    spoken = tuple(
        dataclasses.replace(p, text=apply(lexicons, p.text, phonemes=phonemes).text)
        for p in plan.pieces
    )
    notes = plan.notes + lexicon_notes(lexicons, phonemes=phonemes)
    return Plan(plan.script, spoken, notes)


def utterance_for(request: Request, piece: Piece, reference: ReferenceAudio | None) -> Utterance:
    """The backend call for one piece: the request's voice, switched where the SSML says."""
    call = utterance_of(request, piece.text, reference=reference)
    voicing = piece.voicing
    if voicing.language is not None:
        call = dataclasses.replace(call, language=voicing.language)
    if voicing.preset is not None:
        call = dataclasses.replace(
            call, voice=dataclasses.replace(call.voice, preset=voicing.preset)
        )
    if voicing.rate != 1.0:
        speed = finite(call.params.get("speed", 1.0)) or 1.0
        params = MappingProxyType({**call.params, "speed": round(speed * voicing.rate, 3)})
        call = dataclasses.replace(call, params=params)
    return call


@dataclasses.dataclass(frozen=True, slots=True)
class Timing:
    """A rendered request's plan and the measured places of its pieces in the audio."""

    plan: Plan
    joined: Joined
