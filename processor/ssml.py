"""Pure: an SSML document -> a script of segments to speak, exact silences and marks.

The document is parsed with expat under hardening rules equivalent to defusedxml's
``forbid_dtd``: any ``<!DOCTYPE`` (so any entity declaration: billion laughs, external
entities) is refused at once, parameter entities are never parsed, the document's size and
its nesting depth are bounded before anything grows. Every refusal is ``InvalidInput``
(``error_type="ssml"``) naming the element and line.

Rendering rules (the timing marks and the joiner rely on them):

- a segment ends at ``<s>``/``<p>`` edges, ``<break>``, ``<mark>`` and wherever the voice
  (``<lang>``, ``<voice>``, ``<prosody rate>``) changes;
- the silence between two segments is the sum of the ``<break>``s between them when there is
  one (exactly), else ``SENTENCE_GAP_MS`` after a sentence or paragraph and 0 inside one.
"""

from __future__ import annotations

import dataclasses
import re
from xml.parsers import expat

from processor.errors import InvalidInput, Stage
from processor.ssml_say import say_as

MAX_SSML_BYTES = 128 * 1024
MAX_DEPTH = 64
MAX_BREAK_MS = 10_000
SENTENCE_GAP_MS = 200
STRENGTHS = {"none": 0, "x-weak": 100, "weak": 250, "medium": 400, "strong": 700, "x-strong": 1000}
RATES = {"x-slow": 0.5, "slow": 0.75, "medium": 1.0, "fast": 1.25, "x-fast": 1.75}
ELEMENTS = frozenset(
    {"speak", "p", "s", "break", "prosody", "sub", "say-as", "lang", "voice", "mark",
     "phoneme", "emphasis"}
)  # fmt: skip
_TIME = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s)\s*$")
_LANG = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
_XML_LANG = "http://www.w3.org/XML/1998/namespace lang"


@dataclasses.dataclass(frozen=True, slots=True)
class Voicing:
    """How a segment is voiced: ``None`` fields are the request's own."""

    language: str | None = None
    preset: str | None = None
    rate: float = 1.0


@dataclasses.dataclass(frozen=True, slots=True)
class Segment:
    """Text to speak in one voicing; ``start``/``end``: its span in the document."""

    text: str
    voicing: Voicing
    start: int
    end: int


@dataclasses.dataclass(frozen=True, slots=True)
class Mark:
    """``<mark name>``: a point in time (the start of what follows it)."""

    name: str
    start: int
    end: int


@dataclasses.dataclass(frozen=True, slots=True)
class Script:
    """Segments in order; ``gaps[i]`` ms of silence before ``segments[i]`` (``gaps[0]`` = 0);
    marks with the index of the segment they stand before; notes for the event."""

    segments: tuple[Segment, ...]
    gaps: tuple[int, ...]
    marks: tuple[tuple[Mark, int], ...] = ()
    notes: tuple[str, ...] = ()


def invalid(message: str) -> InvalidInput:
    return InvalidInput(f"$.text: SSML {message}", stage=Stage.VALIDATE, error_type="ssml")


@dataclasses.dataclass(slots=True)
class _Frame:
    name: str
    voicing: Voicing
    start: int = 0
    attrs: dict[str, str] = dataclasses.field(default_factory=dict)
    #: sub / say-as / phoneme: their body is kept here and replaced at their end
    body: list[str] | None = None


class _Renderer:
    def __init__(self, document: str, *, language: str, phonemes: bool) -> None:
        self.doc = document
        self.raw = document.encode("utf-8")
        self.language = language
        self.phonemes = phonemes
        self.stack: list[_Frame] = []
        self.segments: list[Segment] = []
        self.gaps: list[int] = []
        self.marks: list[tuple[Mark, int]] = []
        self.notes: list[str] = []
        self.text: list[str] = []
        self.span: tuple[int, int] | None = None
        self.voicing = Voicing()
        self.pending_break: int | None = None
        self.pending_gap = 0
        self._pos = (0, 0)  # (byte, char): byte offsets converted incrementally
        self.parser = expat.ParserCreate(namespace_separator=" ")
        self.parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        self.parser.StartDoctypeDeclHandler = self._doctype
        self.parser.EntityDeclHandler = self._entity
        self.parser.ExternalEntityRefHandler = self._external
        self.parser.StartElementHandler = self._start
        self.parser.EndElementHandler = self._end
        self.parser.CharacterDataHandler = self._chars

    def render(self) -> Script:
        try:
            self.parser.Parse(self.raw, True)
        except expat.ExpatError as exc:
            raise invalid(f"is not well-formed XML: {expat.errors.messages[exc.code]} "
                          f"(line {exc.lineno}, column {exc.offset + 1})") from None  # fmt: skip
        self._flush(SENTENCE_GAP_MS)
        if not self.segments:
            raise invalid("has nothing to speak")
        return Script(tuple(self.segments), tuple(self.gaps), tuple(self.marks), tuple(self.notes))

    # -- refusals ----------------------------------------------------------------------------

    def _line(self) -> int:
        return int(self.parser.CurrentLineNumber)

    def _doctype(self, *_: object) -> None:
        raise invalid(f"<!DOCTYPE> at line {self._line()}: DTDs and entities are not allowed")

    def _entity(self, name: str, *_: object) -> None:
        raise invalid(f"entity {name!r} at line {self._line()}: entities are not allowed")

    def _external(self, *_: object) -> int:
        raise invalid(f"external reference at line {self._line()} is not allowed")

    def _refuse(self, name: str, why: str) -> InvalidInput:
        return invalid(f"<{name}> at line {self._line()}: {why}")

    # -- elements ----------------------------------------------------------------------------

    def _start(self, tag: str, attrs: dict[str, str]) -> None:
        name = tag.rpartition(" ")[2]
        if name not in ELEMENTS:
            raise self._refuse(name, "element not supported")
        if len(self.stack) >= MAX_DEPTH:
            raise self._refuse(name, f"nested deeper than {MAX_DEPTH} elements")
        if not self.stack and name != "speak":
            raise self._refuse(name, "the root element must be <speak>")
        parent = self.stack[-1] if self.stack else _Frame("", Voicing())
        if parent.body is not None:
            raise self._refuse(name, f"not allowed inside <{parent.name}>")
        frame = _Frame(name, self._voicing(name, attrs, parent.voicing), self._offset(), attrs)
        if name in ("p", "s"):
            self._flush(SENTENCE_GAP_MS)
        elif name == "break":
            self._break(attrs)
        elif name == "mark":
            self._mark(attrs)
        elif name in ("sub", "say-as", "phoneme"):
            frame.body = []
        elif name == "emphasis":
            self._note("emphasis ignored: the backend has no means for it")
        self.stack.append(frame)

    def _end(self, tag: str) -> None:
        frame = self.stack.pop()
        if frame.name in ("p", "s"):
            self._flush(SENTENCE_GAP_MS)
        elif frame.body is not None:
            spoken = self._replacement(frame, "".join(frame.body))
            self._say(spoken, frame.voicing, frame.start, self._offset())

    def _chars(self, data: str) -> None:
        frame = self.stack[-1] if self.stack else None
        if frame is None:
            return
        start = self._offset()
        if frame.body is not None:
            frame.body.append(data)
        else:
            self._say(data, frame.voicing, start, start + len(data))

    def _voicing(self, name: str, attrs: dict[str, str], inherited: Voicing) -> Voicing:
        lang = attrs.get(_XML_LANG)
        if lang is not None:
            if not _LANG.match(lang):
                raise self._refuse(name, f"xml:lang {lang!r} is not a language code")
            inherited = dataclasses.replace(inherited, language=lang)
        allowed = _ATTRIBUTES.get(name, frozenset())
        for key in attrs:
            if key != _XML_LANG and key.rpartition(" ")[2] not in allowed:
                raise self._refuse(name, f"attribute {key.rpartition(' ')[2]!r} not supported")
        if name == "voice":
            if "name" not in attrs:
                raise self._refuse(name, "needs a name")
            return dataclasses.replace(inherited, preset=attrs["name"])
        if name == "prosody" and "rate" in attrs:
            return dataclasses.replace(inherited, rate=inherited.rate * self._rate(attrs["rate"]))
        return inherited

    def _rate(self, value: str) -> float:
        if value in RATES:
            return RATES[value]
        try:
            rate = float(value[:-1]) / 100 if value.endswith("%") else float(value)
        except ValueError:
            rate = -1.0
        if not 0.25 <= rate <= 4.0:
            raise self._refuse("prosody", f"rate {value!r} is not x-slow..x-fast or 25%..400%")
        return rate

    def _break(self, attrs: dict[str, str]) -> None:
        if "time" in attrs:
            match = _TIME.match(attrs["time"])
            if match is None:
                raise self._refuse("break", f"time {attrs['time']!r} is not like 500ms or 1.5s")
            ms = round(float(match[1]) * (1 if match[2] == "ms" else 1000))
        elif "strength" in attrs:
            if attrs["strength"] not in STRENGTHS:
                raise self._refuse("break", f"strength {attrs['strength']!r} is not known")
            ms = STRENGTHS[attrs["strength"]]
        else:
            ms = STRENGTHS["medium"]
        if ms > MAX_BREAK_MS:
            raise self._refuse("break", f"{ms} ms is longer than {MAX_BREAK_MS} ms")
        self._flush(0)
        self.pending_break = (self.pending_break or 0) + ms

    def _mark(self, attrs: dict[str, str]) -> None:
        if not attrs.get("name"):
            raise self._refuse("mark", "needs a name")
        self._flush(0)
        at = self._offset()
        self.marks.append((Mark(attrs["name"], at, at), len(self.segments)))

    def _replacement(self, frame: _Frame, body: str) -> str:
        name, attrs = frame.name, frame.attrs
        if name == "sub":
            if "alias" not in attrs:
                raise self._refuse(name, "needs an alias")
            return attrs["alias"]
        if name == "phoneme":
            return self._phoneme(attrs, body)
        language = (frame.voicing.language or self.language).split("-")[0]
        try:
            return say_as(attrs.get("interpret-as", ""), body, language, attrs.get("format"))
        except ValueError as exc:
            raise self._refuse(name, str(exc)) from None

    def _phoneme(self, attrs: dict[str, str], body: str) -> str:
        ph = attrs.get("ph")
        if not ph:
            raise self._refuse("phoneme", "needs ph")
        if self.phonemes and attrs.get("alphabet", "x-espeak") == "x-espeak":
            return f"[[{ph.replace(']', '')}]]"
        self._note("phoneme spoken as its text: the backend takes no phonemes of that alphabet")
        return body

    # -- segments ----------------------------------------------------------------------------

    def _say(self, text: str, voicing: Voicing, start: int, end: int) -> None:
        if voicing != self.voicing and self.text:
            self._flush(0)
        if not self.text and not text.strip():
            return  # whitespace between segments carries nothing
        self.voicing = voicing
        self.text.append(text)
        self.span = (start, end) if self.span is None else (self.span[0], end)

    def _flush(self, gap: int) -> None:
        """End the running segment; ``gap`` ms is the silence after it unless a break says."""
        spoken = "".join(self.text).strip()
        if spoken and self.span is not None:
            if self.segments:
                self.gaps.append(self._gap())
            else:
                self.gaps.append(0)
            self.segments.append(Segment(spoken, self.voicing, *self.span))
            self.pending_break, self.pending_gap = None, 0
        if self.segments:
            self.pending_gap = max(self.pending_gap, gap)
        self.text, self.span = [], None

    def _gap(self) -> int:
        return self.pending_gap if self.pending_break is None else self.pending_break

    def _note(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)

    def _offset(self) -> int:
        """The character offset of the current event in the document."""
        byte = int(self.parser.CurrentByteIndex)
        last_byte, last_char = self._pos
        if byte < last_byte:
            last_byte, last_char = 0, 0
        char = last_char + len(self.raw[last_byte:byte].decode("utf-8", "ignore"))
        self._pos = (byte, char)
        return char


_ATTRIBUTES = {
    "speak": frozenset({"version", "lang", "xmlns", "schemaLocation"}),
    "break": frozenset({"time", "strength"}),
    "prosody": frozenset({"rate"}),
    "sub": frozenset({"alias"}),
    "say-as": frozenset({"interpret-as", "format", "detail"}),
    "voice": frozenset({"name"}),
    "mark": frozenset({"name"}),
    "phoneme": frozenset({"alphabet", "ph"}),
    "emphasis": frozenset({"level"}),
}


def parse_ssml(document: str, *, language: str = "auto", phonemes: bool = False) -> Script:
    """The script of an SSML document; ``phonemes``: the backend takes espeak-ng phonemes
    (``[[...]]``). ``InvalidInput`` for anything malformed, hostile or unsupported."""
    size = len(document.encode("utf-8", "surrogatepass"))
    if size > MAX_SSML_BYTES:
        raise invalid(f"document is {size} bytes, more than {MAX_SSML_BYTES}")
    return _Renderer(document, language=language, phonemes=phonemes).render()
