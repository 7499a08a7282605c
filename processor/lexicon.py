"""Pronunciation lexicons (W3C PLS 1.0, the format Amazon Polly uses), read from S3.

A request names up to five lexicons (``"lexicons": ["s3://bucket/key.pls"]``); only buckets
the operator allows for reference audio may be read (else ``invalid_input``,
``lexicon_not_allowed``). Each load makes one HEAD; the parsed lexicon is cached by URI and
ETag (as reference audio is), so a replaced file is read again on the next request.

Applying them (pure, :func:`apply`): every ``<grapheme>`` is matched as written (case as
written); a grapheme of Latin-like script only as a whole word, one of Chinese or Japanese
anywhere (those scripts have no spaces), and always the longest grapheme at a position. The
first lexicon in the list, and the first lexeme in a lexicon, wins. A lexeme's ``<alias>``
replaces the grapheme; its ``<phoneme>`` goes to backends that take espeak-ng phonemes
(``alphabet="x-espeak"``), else the alias is spoken, else the grapheme stays and a note says so.
Offsets in speech marks still point into the text as the user sent it (pieces are cut first).

The PLS document is parsed as SSML is: any DOCTYPE refused, at most ``MAX_LEXICON_BYTES``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Protocol
from xml.parsers import expat

from processor import s3
from processor.errors import InvalidInput, Stage
from processor.references import parse_reference_uri

MAX_LEXICON_BYTES = 256 * 1024
MAX_LEXEMES = 10_000
_PLS = "http://www.w3.org/2005/01/pronunciation-lexicon"
_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


@dataclasses.dataclass(frozen=True, slots=True)
class Lexeme:
    graphemes: tuple[str, ...]
    alias: str | None
    phoneme: str | None
    alphabet: str


@dataclasses.dataclass(frozen=True, slots=True)
class Lexicon:
    uri: str
    lexemes: tuple[Lexeme, ...]


def invalid(message: str, error_type: str = "lexicon_invalid") -> InvalidInput:
    return InvalidInput(f"$.lexicons: {message}", stage=Stage.VALIDATE, error_type=error_type)


def parse_pls(data: bytes, uri: str) -> Lexicon:
    """The lexemes of a PLS document; ``InvalidInput`` naming the line for anything else."""
    if len(data) > MAX_LEXICON_BYTES:
        raise invalid(f"{uri} is {len(data)} bytes, more than {MAX_LEXICON_BYTES}")
    lexemes: list[Lexeme] = []
    alphabet = "ipa"
    current: dict[str, list[str]] | None = None
    text: list[str] = []
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)

    def refuse(*_: object) -> None:
        raise invalid(f"{uri} line {parser.CurrentLineNumber}: DTDs and entities are not allowed")

    def external(*_: object) -> int:
        raise invalid(f"{uri} line {parser.CurrentLineNumber}: external references are refused")

    def start(tag: str, attrs: dict[str, str]) -> None:
        nonlocal alphabet, current
        name = tag.rpartition(" ")[2]
        text.clear()
        if name == "lexicon":
            alphabet = attrs.get("alphabet", alphabet)
        elif name == "lexeme":
            if len(lexemes) >= MAX_LEXEMES:
                raise invalid(f"{uri}: more than {MAX_LEXEMES} lexemes")
            current = {"grapheme": [], "alias": [], "phoneme": []}
        elif name not in ("grapheme", "alias", "phoneme", "example", "meta", "metadata"):
            raise invalid(f"{uri} line {parser.CurrentLineNumber}: <{name}> is not PLS")

    def end(tag: str) -> None:
        nonlocal current
        name = tag.rpartition(" ")[2]
        if current is not None and name in current:
            current[name].append("".join(text).strip())
        elif name == "lexeme" and current is not None:
            graphemes = tuple(g for g in current["grapheme"] if g)
            alias = next(iter(current["alias"]), None)
            phoneme = next(iter(current["phoneme"]), None)
            if graphemes and (alias or phoneme):
                lexemes.append(Lexeme(graphemes, alias, phoneme, alphabet))
            current = None
        text.clear()

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = external
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text.append
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        why = expat.errors.messages[exc.code]
        raise invalid(f"{uri} is not well-formed XML: {why} (line {exc.lineno})") from None
    return Lexicon(uri, tuple(lexemes))


@dataclasses.dataclass(frozen=True, slots=True)
class Applied:
    text: str
    notes: tuple[str, ...] = ()


def replacements(lexicons: Sequence[Lexicon], *, phonemes: bool) -> dict[str, str]:
    """Grapheme -> what to speak; first lexicon and first lexeme win."""
    out: dict[str, str] = {}
    for lexicon in lexicons:
        for lexeme in lexicon.lexemes:
            spoken = lexeme.alias
            if phonemes and lexeme.phoneme and lexeme.alphabet == "x-espeak":
                spoken = f"[[{lexeme.phoneme.replace(']', '')}]]"
            for grapheme in lexeme.graphemes:
                if spoken is not None:
                    out.setdefault(grapheme, spoken)
    return out


def apply(lexicons: Sequence[Lexicon], text: str, *, phonemes: bool) -> Applied:
    """``text`` with every grapheme replaced (longest match; whole words outside CJK)."""
    table = replacements(lexicons, phonemes=phonemes)
    if not table:
        return Applied(text)
    pattern = "|".join(_alternative(g) for g in sorted(table, key=len, reverse=True))
    return Applied(re.sub(pattern, lambda m: table[m.group(0)], text))


def _alternative(grapheme: str) -> str:
    if _CJK.search(grapheme):
        return re.escape(grapheme)
    return rf"(?<!\w){re.escape(grapheme)}(?!\w)"


def lexicon_notes(lexicons: Sequence[Lexicon], *, phonemes: bool) -> tuple[str, ...]:
    """Lexemes with only a phoneme the backend cannot take: reported, not applied."""
    skipped = [
        g
        for lexicon in lexicons
        for lexeme in lexicon.lexemes
        if lexeme.alias is None and not (phonemes and lexeme.alphabet == "x-espeak")
        for g in lexeme.graphemes
    ]
    if not skipped:
        return ()
    return (f"lexicon phonemes not applied (backend takes none of that alphabet): "
            f"{', '.join(skipped[:5])}",)  # fmt: skip


class LexiconLoader(Protocol):
    """Reads a PLS file named by ``s3://bucket/key`` (``InvalidInput`` when not allowed,
    missing or not PLS; ``Systemic`` when the store is down)."""

    async def load(self, uri: str) -> Lexicon: ...


class MemoryLexicons:
    """The test double: lexicons by URI, PLS bytes parsed as the S3 loader does; any other
    URI is not allowed."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    async def load(self, uri: str) -> Lexicon:
        if uri not in self.files:
            raise invalid(f"{uri!r}: bucket is not allowed", "lexicon_not_allowed")
        return parse_pls(self.files[uri], uri)


class S3LexiconLoader(s3.Connection):
    """Reads PLS files from allowed buckets, cached by URI and ETag (use inside ``async with``)."""

    def __init__(
        self,
        endpoint_url: str | None,
        region: str | None,
        *,
        allowed_buckets: frozenset[str],
        max_entries: int = 256,
    ) -> None:
        super().__init__(endpoint_url, region, max_connections=4, read_timeout=30)
        self.allowed_buckets = frozenset(allowed_buckets)
        self.max_entries = max_entries
        self._cache: dict[str, tuple[str, Lexicon]] = {}

    async def load(self, uri: str) -> Lexicon:
        try:
            ref = parse_reference_uri(uri, self.allowed_buckets)
        except InvalidInput as exc:
            why = exc.message.replace("reference audio_uri ", "")
            raise invalid(why, "lexicon_not_allowed") from None
        client = self.client
        try:
            head = await client.head_object(Bucket=ref.bucket, Key=ref.key)
            etag = head.get("ETag", "")
            cached = self._cache.get(uri)
            if cached is not None and cached[0] == etag:
                return cached[1]
            if head.get("ContentLength", 0) > MAX_LEXICON_BYTES:
                raise invalid(f"{uri} is more than {MAX_LEXICON_BYTES} bytes", "lexicon_too_large")
            resp = await client.get_object(Bucket=ref.bucket, Key=ref.key)
            body = resp["Body"]
            async with body:  # read through the StreamingBody (it checks the length)
                data = await body.read()
        except s3.read_errors() as exc:
            missing = lambda: invalid(f"{uri} does not exist", "lexicon_not_found")  # noqa: E731
            raise s3.error(exc, f"cannot read lexicon {uri}", missing=missing) from exc
        lexicon = parse_pls(data, uri)
        if len(self._cache) >= self.max_entries:
            self._cache.pop(next(iter(self._cache)))
        self._cache[uri] = (resp.get("ETag", etag), lexicon)
        return lexicon
