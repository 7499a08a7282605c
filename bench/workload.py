"""The requests every processor gets: deterministic texts of very different lengths.

Lengths are log-normal (median 120 characters, a long tail to 900), so with a backend whose
service time grows with the text a batch always holds a few slow requests: what makes
head-of-line blocking visible.
"""

from __future__ import annotations

import json
import math
import random

_SENTENCE = (
    "the quick brown fox jumps over a lazy dog while seven calm voices read chapter one "
    "of an old book aloud slowly and clearly so that every listener hears each word"
)
WORDS = tuple(_SENTENCE.split(" "))
MIN_CHARS, MAX_CHARS = 12, 900


def text_lengths(n: int, seed: int = 7) -> list[int]:
    rng = random.Random(seed)
    return [
        max(MIN_CHARS, min(MAX_CHARS, round(rng.lognormvariate(math.log(120), 0.7))))
        for _ in range(n)
    ]


def text_of(length: int, rng: random.Random) -> str:
    words: list[str] = []
    size = 0
    while size < length:
        word = rng.choice(WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:length].rstrip() + "."


def requests(prefix: str, n: int, seed: int = 7) -> list[tuple[bytes, bytes]]:
    """(key, value) records: request ids ``{prefix}-{i}``, texts of :func:`text_lengths`."""
    rng = random.Random(seed + 1)
    out = []
    for i, length in enumerate(text_lengths(n, seed)):
        rid = f"{prefix}-{i:06d}"
        value = json.dumps({"request_id": rid, "text": text_of(length, rng)})
        out.append((rid.encode(), value.encode()))
    return out


def mean_text_chars(records: list[tuple[bytes, bytes]]) -> float:
    """Mean text length of ``records`` (what ``--per-char`` is set to, so that the mean
    service time is the configured latency)."""
    return sum(len(json.loads(value)["text"]) for _, value in records) / max(1, len(records))
