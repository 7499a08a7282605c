"""The quality gate's optional ASR round trip: a chunk's audio transcribed and compared with its
text.

With ``[quality.asr]`` in ``VOXLINE_CONFIG`` (a ``url``), each chunk that passes the signal
checks of :mod:`processor.quality` is sent to an OpenAI-compatible transcription server
(``POST {url}/v1/audio/transcriptions``, multipart: ``file``, ``model``, ``language`` when the
request names one, ``response_format=json``; the answer is ``{"text": ...}``). Both texts are
normalised (:func:`normalise`: NFKC, case folded, punctuation and symbols dropped, whitespace
collapsed) and compared: the character error rate for scripts written without spaces (Chinese,
Japanese, Thai, ...), the word error rate otherwise (:func:`error_rate`, Levenshtein distance
from rapidfuzz). Above ``max_error`` the chunk fails the gate as check ``asr``.

The calls have their own window, circuit breaker and retries (``processor.gate``,
``processor.breaker``, ``processor.steps.run_step``). A transcription server that is down must
not turn good audio into dead letters: while its breaker is open a chunk is not sent at all, and
a chunk whose calls fail (after ``attempts`` tries, or ``wait_s`` of waiting on an outage) passes
unverified; the event's ``quality`` counts such chunks in ``asr_skipped``.
"""

from __future__ import annotations

import dataclasses
import json
import time
import unicodedata
from collections.abc import Mapping

import httpx
import structlog

from processor.backends._http import HttpClient
from processor.backends.base import transient
from processor.breaker import Breaker, BreakerConfig
from processor.errors import VoxlineError
from processor.gate import Gate
from processor.limiter import StaticLimit
from processor.retry import Policy
from processor.steps import Park, run_step

log = structlog.get_logger()

#: Languages written without spaces between words: compared by characters (CER).
CHARACTER_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo", "yue", "wuu"})
#: Scripts written without spaces (Han, kana, Thai, Lao, Myanmar, Khmer, Tibetan).
_UNSPACED = (
    (0x3040, 0x30FF),
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF),
    (0x0E00, 0x0EFF),
    (0x1000, 0x109F),
    (0x1780, 0x17FF),
    (0x0F00, 0x0FFF),
)


_APOSTROPHES = frozenset("'\u2019\u02bc\u2018")


@dataclasses.dataclass(frozen=True, slots=True)
class AsrSettings:
    """``[quality.asr]``: the transcription server and the bound of the comparison."""

    url: str
    model: str = "whisper-1"
    #: Word (or character) error rate above which a chunk fails the gate.
    max_error: float = 0.3
    #: Calls per chunk on transient errors, the first included.
    attempts: int = 3
    #: The longest a chunk waits on a transcription server that is down, then passes unverified.
    wait_s: float = 10.0
    timeout_s: float = 60.0
    max_in_flight: int = 2
    #: From the variable ``api_key_env`` names; in no repr.
    api_key: str | None = dataclasses.field(default=None, repr=False)


_NUMBERS = ("max_error", "timeout_s", "wait_s")
_WHOLE = ("max_in_flight", "attempts")
_KEYS = frozenset({"url", "model", "api_key_env", *_NUMBERS, *_WHOLE})


def settings_from(table: object, where: str, environ: Mapping[str, str]) -> AsrSettings:
    """``AsrSettings`` from ``[quality.asr]``; ``ValueError`` names the key that is wrong. The
    API key is read from the variable ``api_key_env`` names, never from the file."""
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be a table")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {', '.join(unknown)}")
    url = table.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"{where}.url must be the server's http(s):// base URL")
    values: dict[str, object] = {"url": url}
    if "model" in table:
        if not isinstance(table["model"], str) or not table["model"]:
            raise ValueError(f"{where}.model must be a model name")
        values["model"] = table["model"]
    for key in _NUMBERS:
        if key in table:
            value = table[key]
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{where}.{key} must be a positive number")
            values[key] = float(value)
    for key in _WHOLE:
        if key in table:
            value = table[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{where}.{key} must be a whole number of at least 1")
            values[key] = value
    key_env = table.get("api_key_env")
    if key_env is not None:
        if not isinstance(key_env, str) or key_env not in environ:
            raise ValueError(f"{where}.api_key_env names {key_env}, which is not set")
        values["api_key"] = environ[key_env]
    return AsrSettings(**values)  # type: ignore[arg-type]


def normalise(text: str) -> str:
    """``text`` as both sides are compared: NFKC (full-width forms become ASCII), case folded,
    apostrophes and control characters dropped ("don't" is "dont"), other punctuation and
    symbols made spaces, whitespace collapsed to single spaces."""
    out: list[str] = []
    for char in unicodedata.normalize("NFKC", text).casefold():
        kind = unicodedata.category(char)
        if char in _APOSTROPHES or (kind[0] == "C" and not char.isspace()):
            continue
        out.append(" " if kind[0] in "PSZ" or char.isspace() else char)
    return " ".join("".join(out).split())


def by_characters(language: str, text: str) -> bool:
    """Whether ``text`` is compared by characters: its language is written without spaces,
    or (``auto`` and others) most of its letters are in such scripts."""
    base = language.lower().split("-")[0].split("_")[0]
    if base in CHARACTER_LANGUAGES:
        return True
    letters = [c for c in text if c.isalpha()]
    unspaced = sum(1 for c in letters if any(a <= ord(c) <= b for a, b in _UNSPACED))
    return unspaced * 2 > len(letters)


def error_rate(expected: str, heard: str, language: str) -> float:
    """Edits (substitutions, insertions, deletions) from ``expected`` to ``heard`` over the
    length of ``expected``, after :func:`normalise`: by characters (spaces ignored) or by words,
    as :func:`by_characters` says. 0 when both are empty, 1 per unit heard when nothing was
    expected."""
    # Imported here: a processor without a transcription endpoint never loads it (~3 MiB).
    from rapidfuzz.distance import Levenshtein

    want, got = normalise(expected), normalise(heard)
    if by_characters(language, expected):
        a, b = list(want.replace(" ", "")), list(got.replace(" ", ""))
    else:
        a, b = want.split(), got.split()
    if not a:
        return float(len(b))
    return float(Levenshtein.distance(a, b)) / len(a)


class Transcriber:
    """The transcription server behind its own window, breaker and retries."""

    def __init__(self, settings: AsrSettings, client: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        base = settings.url.rstrip("/")
        self._url = (
            f"{base}/audio/transcriptions"
            if base.endswith("/v1")
            else (f"{base}/v1/audio/transcriptions")
        )
        self._http = HttpClient(
            timeout=httpx.Timeout(settings.timeout_s, connect=5.0),
            max_connections=settings.max_in_flight,
            api_key=settings.api_key,
            client=client,
            truncated="asr_truncated",
        )
        self.breaker = Breaker(BreakerConfig())
        self.gate = Gate("asr", StaticLimit(settings.max_in_flight), self.breaker)
        self.gate.park_after_s = settings.wait_s
        self.policy = Policy(
            attempts=settings.attempts,
            budget_s=settings.wait_s,
            backoff_s=(0.2, 2.0),
            hold_s=(0.2, 2.0),
            park_after_s=settings.wait_s,
        )

    async def _once(self, wav: bytes, language: str) -> str:
        fields = {"model": self.settings.model, "response_format": "json"}
        base = language.lower().split("-")[0].split("_")[0]
        if base and base != "auto":
            fields["language"] = base
        async with self.gate.call(work=1.0):
            _, body = await self._http.post(
                self._url, data=fields, files={"file": ("chunk.wav", wav, "audio/wav")}
            )
            try:
                text = json.loads(body)["text"]
            except (ValueError, KeyError, TypeError) as exc:
                raise transient(
                    "transcription answer is not JSON with a text", "asr_malformed"
                ) from exc
            if not isinstance(text, str):
                raise transient("transcription answer's text is not a string", "asr_malformed")
            return text

    async def heard(self, wav: bytes, language: str) -> str | None:
        """What the server heard in ``wav``, or None when it could not say (down, failing, or
        its breaker open): the chunk then passes unverified."""
        if self.breaker.state == "open" and self.breaker.retry_in(time.monotonic()) > 0:
            return None
        try:
            return await run_step(
                lambda: self._once(wav, language),
                self.policy,
                breaker_open=lambda: self.gate.is_open,
            )
        except (VoxlineError, Park) as exc:
            error = exc.error if isinstance(exc, Park) else exc
            log.warning("asr skipped", error=error.message, error_type=error.error_type)
            return None

    async def aclose(self) -> None:
        await self._http.aclose()
