# ruff: noqa: RUF002  # the docstrings quote the CJK punctuation this module splits at
"""Pure text splitting: long request text cut into chunks a backend can synthesize in one call.

:func:`split_text` packs whole sentences greedily into chunks of at most ``limit`` characters.
Only a sentence longer than the limit is cut inside, at the best boundary available, in order:

1. sentence ends: Chinese/Japanese enders (``。！？；…``, and ``.!?;`` right after a CJK
   character) with any closing brackets or quotes after them; Western ``. ! ? ;`` followed by
   whitespace (so never ``3.14``), except after a few abbreviations (``Mr.``, ``e.g.``,
   initials); line breaks and paragraphs;
2. clause ends: ``，、：`` and ``, :`` followed by whitespace;
3. word starts: after whitespace, and between CJK characters (which are not space separated),
   respecting the usual no-break-before/after punctuation (``」`` never starts a chunk);
4. anything else (a single word longer than the limit, or a run of Thai, Khmer and other scripts
   written without spaces that this module does not segment): a hard cut.

Every cut falls on a grapheme-ish boundary: a combining mark stays with its base, as do
``\r\n``, emoji ZWJ sequences and conjoining Hangul jamo. The exceptions: a cluster longer than
the limit is cut, and, as in Unicode's rules, nothing attaches to a control character.

Whitespace stays with the text it follows, so ``"".join(chunks) == text`` always holds. A chunk
is whitespace-only only when the whitespace cannot join a neighbour within the limit (the input
is whitespace, or a word and the whitespace after it are longer than the limit); callers skip
such chunks when synthesizing. Paragraphs get no special weight: greedy packing already ends
every chunk at a sentence end whenever the sentences fit.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Callable, Iterable

#: Han ideographs and Japanese kana: scripts written without spaces between words.
_CJK = (
    "\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
    "\U00020000-\U0003134f"
)
#: Closing brackets and quotes that belong to the sentence or clause they end.
_CJK_CLOSERS = "」』）”’】》〉〕］｝)"
_WESTERN_CLOSERS = "\"'”’)\\]»」』）"
# Punctuation runs are matched from their first character only and possessively, so a long
# run that is not followed by whitespace costs linear time, not quadratic. After a CJK
# character ASCII ``.!?;`` end a sentence too: no space follows them there.
_CJK_SENTENCE = re.compile(f"(?:[。！？；…‥｡．]++|(?<=[{_CJK}])[.!?;]++)[{_CJK_CLOSERS}]*+")
_WESTERN_SENTENCE = re.compile(
    rf"(?<![.!?;])(?P<end>[.!?;]++)[{_WESTERN_CLOSERS}]*+(?=\s|\Z|[{_CJK}])"
)
_WORD_CHAR = re.compile(r"[\w.'’-]")
_WORD_BEFORE = re.compile(rf"{_WORD_CHAR.pattern}*\Z")
#: A whitespace run holding a line break, matched once per run (the cut goes after all of it).
_LINE_BREAK = re.compile(r"(?<!\s)\s*[\n\r\u2028\u2029\x0b\x0c\x1c-\x1e\x85]\s*+")
_CJK_CLAUSE = re.compile(f"[，、：；﹐﹑﹕︰]++[{_CJK_CLOSERS}]*+")
_WESTERN_CLAUSE = re.compile(rf"(?<![,:;])[,:;]++[{_WESTERN_CLOSERS}]*+(?=\s|\Z|[{_CJK}])")
_SPACES = re.compile(r"\s*")
_WORD_BREAK = re.compile(rf"(?<=\s)(?=\S)|(?<=[{_CJK}])(?=\S)|(?<=\S)(?=[{_CJK}])")

#: A full stop after these is not a sentence end (case-sensitive; single capitals count too).
ABBREVIATIONS = frozenset(
    {
        "Mr", "Mrs", "Ms", "Dr", "Prof", "Sr", "Jr", "St", "Mt", "Rev", "Gen", "Col", "Capt",
        "Lt", "Sgt", "Hon", "No", "Nos", "Fig", "Figs", "Vol", "Vols", "Ch", "Sec", "pp",
        "vs", "cf", "al", "e.g", "i.e", "E.g", "I.e", "approx", "Inc", "Ltd", "Co", "Corp",
        "U.S", "U.K", "a.m", "p.m",
    }
)  # fmt: skip

#: Characters that must not start a chunk (closing punctuation, small kana, prolonged sound).
_NO_BREAK_BEFORE = frozenset(
    "、。，．：；！？…‥・ー々ゝゞヽヾぁぃぅぇぉっゃゅょゎァィゥェォッャュョヮヵヶ"
    "」』）”’】》〉〕］｝),.:;!?]}%"
)
#: Characters that must not end a chunk when text follows (opening brackets and quotes).
_NO_BREAK_AFTER = frozenset("「『（“‘【《〈〔［｛([{")

_ZWJ = "\u200d"


def split_text(text: str, limit: int) -> list[str]:
    """``text`` cut into chunks of 1 to ``limit`` characters, at the best boundaries available.

    ``"".join(result) == text``. Text of at most ``limit`` characters comes back whole;
    empty text gives ``[]``. ``ValueError`` if ``limit`` is below 1.
    """
    if limit < 1:
        raise ValueError(f"chunk limit must be at least 1 character, not {limit}")
    if not text:
        return []
    return _absorb_whitespace(_split(text, limit, 0), limit)


def split_sentences(text: str, limit: int, *, shortest: int = 0) -> list[str]:
    """``text`` cut at every sentence end: one sentence a chunk, for the chunk cache.

    A sentence longer than ``limit`` is cut as :func:`split_text` cuts it; one shorter than
    ``shortest`` characters is joined to the next while the two fit in ``limit``. A boundary
    thus depends only on the sentences right before it, so editing one sentence cannot move the
    boundaries around the others (greedy packing can). ``"".join(result) == text``.
    """
    if limit < 1:
        raise ValueError(f"chunk limit must be at least 1 character, not {limit}")
    if not text:
        return []
    chunks: list[str] = []
    pack = ""
    for piece in _pieces(text, _sentence_ends(text)):
        if len(piece) > limit:
            if pack:
                chunks.append(pack)
                pack = ""
            chunks.extend(_split(piece, limit, 1))
            continue
        if pack and len(pack) + len(piece) > limit:
            chunks.append(pack)
            pack = ""
        pack += piece
        if len(pack) >= shortest:
            chunks.append(pack)
            pack = ""
    if pack:
        chunks.append(pack)
    return _absorb_whitespace(chunks, limit)


def _split(segment: str, limit: int, level: int) -> list[str]:
    """Greedy packing of ``segment``'s pieces at ``level``; oversize pieces go one level down."""
    if len(segment) <= limit:
        return [segment]
    if level == len(_LEVELS):
        return _hard_cut(segment, limit)
    chunks: list[str] = []
    pack = ""
    for piece in _pieces(segment, _LEVELS[level](segment)):
        if len(pack) + len(piece) <= limit:
            pack += piece
            continue
        if pack:
            chunks.append(pack)
        if len(piece) <= limit:
            pack = piece
        else:
            # An oversize piece gets chunks of its own, so the next one starts at a boundary.
            chunks.extend(_split(piece, limit, level + 1))
            pack = ""
    if pack:
        chunks.append(pack)
    return chunks


def _sentence_ends(text: str) -> Iterable[int]:
    for match in _CJK_SENTENCE.finditer(text):
        yield match.end()
    for match in _WESTERN_SENTENCE.finditer(text):
        if match["end"] != "." or not _is_abbreviation(text, match.start()):
            yield match.end()
    for match in _LINE_BREAK.finditer(text):
        yield match.end()


def _is_abbreviation(text: str, dot: int) -> bool:
    """Whether the word before the full stop at ``dot`` is a known abbreviation or an initial."""
    window = max(0, dot - 8)  # longer than any abbreviation: bounded work per full stop
    match = _WORD_BEFORE.search(text, window, dot)
    assert match is not None  # the pattern matches the empty string
    if match.start() == window and window > 0 and _WORD_CHAR.match(text[window - 1]):
        return False  # a word longer than the window
    word = match.group().lstrip("'’-.")
    return word in ABBREVIATIONS or (len(word) == 1 and word.isupper())


def _clause_ends(text: str) -> Iterable[int]:
    for pattern in (_CJK_CLAUSE, _WESTERN_CLAUSE):
        for match in pattern.finditer(text):
            yield match.end()


def _word_starts(text: str) -> Iterable[int]:
    for match in _WORD_BREAK.finditer(text):
        at = match.start()
        before = text[at - 1]
        if before.isspace() or (text[at] not in _NO_BREAK_BEFORE and before not in _NO_BREAK_AFTER):
            yield at


_LEVELS: tuple[Callable[[str], Iterable[int]], ...] = (_sentence_ends, _clause_ends, _word_starts)


def _pieces(segment: str, cuts: Iterable[int]) -> list[str]:
    """``segment`` cut at ``cuts``, each moved past trailing whitespace and onto a cluster
    boundary; a cut that would leave a whitespace-only piece is dropped."""
    n = len(segment)
    starts: list[int] = []
    last = 0
    for cut in sorted({_cluster_end(segment, _skip_spaces(segment, cut)) for cut in cuts}):
        if last < cut < n and not segment[last:cut].isspace():
            starts.append(cut)
            last = cut
    if starts and segment[last:].isspace():
        starts.pop()
    bounds = [0, *starts, n]
    return [segment[a:b] for a, b in itertools.pairwise(bounds)]


def _skip_spaces(text: str, at: int) -> int:
    match = _SPACES.match(text, at)
    return match.end() if match else at


def _hard_cut(segment: str, limit: int) -> list[str]:
    """Cuts of at most ``limit`` characters, each as late as a cluster boundary allows."""
    chunks: list[str] = []
    start = 0
    while len(segment) - start > limit:
        cut = start + limit
        while cut > start and not _is_boundary(segment, cut):
            cut -= 1
        if cut == start:  # one cluster longer than the limit: nothing better to do
            cut = start + limit
        chunks.append(segment[start:cut])
        start = cut
    chunks.append(segment[start:])
    return chunks


def _absorb_whitespace(chunks: list[str], limit: int) -> list[str]:
    """Whitespace-only chunks merged into their neighbours where the limit leaves room."""
    chunks = list(chunks)
    out: list[str] = []
    for index, chunk in enumerate(chunks):
        if not chunk.isspace() or (not out and index + 1 == len(chunks)):
            out.append(chunk)
            continue
        room_before = limit - len(out[-1]) if out and not out[-1].isspace() else 0
        nxt = chunks[index + 1] if index + 1 < len(chunks) else ""
        room_after = limit - len(nxt) if nxt and not nxt.isspace() else 0
        cut = _whitespace_split(chunk, room_before, room_after)
        if cut is None:
            out.append(chunk)
            continue
        if cut:
            out[-1] += chunk[:cut]
        if cut < len(chunk):
            chunks[index + 1] = chunk[cut:] + nxt
    return out


def _whitespace_split(chunk: str, room_before: int, room_after: int) -> int | None:
    """Where to cut ``chunk`` so the previous chunk takes the head and the next one the tail,
    both within their room; ``None`` if it cannot be absorbed whole."""
    for cut in range(min(room_before, len(chunk)), -1, -1):
        if len(chunk) - cut > room_after:
            return None
        if _is_boundary(chunk, cut):
            return cut
    return None


def _cluster_end(text: str, at: int) -> int:
    """The first cluster boundary at or after ``at``."""
    while not _is_boundary(text, at):
        at += 1
    return at


def _is_boundary(text: str, at: int) -> bool:
    """Whether a cut before ``text[at]`` keeps every grapheme-ish cluster whole."""
    if at <= 0 or at >= len(text):
        return True
    before, after = text[at - 1], text[at]
    if before in "\r\n" or unicodedata.category(before) == "Cc":
        return not (before == "\r" and after == "\n")  # nothing attaches to a control
    if before == _ZWJ and _is_pictographic(after):
        return False  # an emoji ZWJ sequence
    if "\ud800" <= before <= "\udbff" and "\udc00" <= after <= "\udfff":
        return False  # a surrogate pair smuggled in by surrogateescape
    return not _extends(after)


def _is_pictographic(char: str) -> bool:
    code = ord(char)
    return code >= 0x1F000 or 0x2600 <= code <= 0x27BF or unicodedata.category(char) == "So"


def _extends(char: str) -> bool:
    """Whether ``char`` belongs to the cluster before it (marks, joiners, modifiers, jamo)."""
    if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Mc", "Me"):
        return True
    code = ord(char)
    return (
        char in "\u200c\u200d"
        or 0x1F3FB <= code <= 0x1F3FF  # emoji skin tones
        or 0xE0020 <= code <= 0xE007F  # emoji tag sequences
        or 0x1160 <= code <= 0x11FF  # Hangul jamo vowels and finals
        or 0xD7B0 <= code <= 0xD7FF
    )
