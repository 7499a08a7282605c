# ruff: noqa: RUF002  # the Chinese renderings use full-width punctuation
"""Pure: ``<say-as interpret-as=...>`` rendered as words a backend reads as meant (en, zh).

    interpret-as           en                       zh
    characters, spell-out  ``A B C``                ``A B C`` (Chinese digits for digits)
    cardinal               the number as digits     the number as digits (backends read it)
    ordinal                ``21st``                 ``第21``
    digits                 ``1 2 3``                ``一二三``
    telephone              ``5 5 5, 1 2 3 4``       ``五五五，一二三四``
    date (format ymd|mdy|dmy|ym|md)  ``January 5, 2024``  ``2024年1月5日``

Other languages get the en rendering. ``ValueError`` says what does not fit.
"""

from __future__ import annotations

import re

KINDS = ("characters", "spell-out", "cardinal", "ordinal", "digits", "telephone", "date")
_ZH_DIGITS = dict(zip("0123456789", "零一二三四五六七八九", strict=True))
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")  # fmt: skip
_NUMBER = re.compile(r"^[+-]?\d[\d,]*(\.\d+)?$")


def say_as(kind: str, body: str, language: str, date_format: str | None = None) -> str:
    """What to speak for ``body`` read as ``kind`` in ``language`` (``en``, ``zh``, ...)."""
    text = body.strip()
    zh = language == "zh"
    if kind in ("characters", "spell-out"):
        return " ".join(_ZH_DIGITS.get(c, c) if zh else c for c in text if not c.isspace())
    if kind == "cardinal":
        if not _NUMBER.match(text):
            raise ValueError(f"{text!r} is not a number")
        return text.replace(",", "")
    if kind == "ordinal":
        if not text.isdigit():
            raise ValueError(f"{text!r} is not a whole number")
        return f"第{int(text)}" if zh else f"{int(text)}{_suffix(int(text))}"
    if kind in ("digits", "telephone"):
        return _digits(text, zh, grouped=kind == "telephone")
    if kind == "date":
        return _date(text, zh, date_format or "ymd")
    raise ValueError(f"interpret-as {kind!r} is not one of {', '.join(KINDS)}")


def _suffix(n: int) -> str:
    if n % 100 in (11, 12, 13):
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def _digits(text: str, zh: bool, *, grouped: bool) -> str:
    groups = [g for g in re.split(r"[^\d]+", text) if g]
    if not groups:
        raise ValueError(f"{text!r} has no digits")
    if not grouped:
        groups = ["".join(groups)]
    if zh:
        return "，".join("".join(_ZH_DIGITS[d] for d in g) for g in groups)
    return ", ".join(" ".join(g) for g in groups)


def _date(text: str, zh: bool, date_format: str) -> str:
    parts = [int(p) for p in re.split(r"[-/.\s]+", text) if p.isdigit()]
    order = {"ymd": "ymd", "mdy": "mdy", "dmy": "dmy", "ym": "ym", "md": "md", "y": "y"}
    fields = order.get(date_format)
    if fields is None or len(parts) != len(fields):
        raise ValueError(f"{text!r} is not a date in format {date_format!r}")
    value = dict(zip(fields, parts, strict=True))
    if not 1 <= value.get("m", 1) <= 12 or not 1 <= value.get("d", 1) <= 31:
        raise ValueError(f"{text!r} is not a date in format {date_format!r}")
    y, m, d = value.get("y"), value.get("m"), value.get("d")
    if zh:
        return "".join(f"{v}{u}" for v, u in ((y, "年"), (m, "月"), (d, "日")) if v is not None)
    month = None if m is None else _MONTHS[m - 1]
    if d is None:
        return " ".join(str(v) for v in (month, y) if v is not None)
    head = f"{month} {d}"
    return head if y is None else f"{head}, {y}"
