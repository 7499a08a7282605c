"""Pronunciation lexicons (W3C PLS): parsing, whole-word and longest-match replacement, and the
pipeline sending the replaced text to the backend while marks still point into the original."""

from __future__ import annotations

import dataclasses
import json

import pytest

from processor.config import ConfigError, parse
from processor.errors import InvalidInput
from processor.lexicon import MemoryLexicons, apply, parse_pls
from processor.pipeline import Pipeline
from tests.unit.test_pipeline import World, record
from tests.unit.test_ssml import loud

NS = 'xmlns="http://www.w3.org/2005/01/pronunciation-lexicon"'


def pls(*lexemes: str, alphabet: str = "ipa") -> bytes:
    body = "".join(f"<lexeme>{x}</lexeme>" for x in lexemes)
    return (
        f'<lexicon version="1.0" {NS} alphabet="{alphabet}" xml:lang="en">{body}</lexicon>'.encode()
    )


W3C = pls("<grapheme>W3C</grapheme><alias>World Wide Web Consortium</alias>")
ZH = pls(
    "<grapheme>重庆</grapheme><alias>崇庆</alias>",
    "<grapheme>重庆市</grapheme><alias>崇庆城</alias>",
)


def world_with(files: dict[str, bytes], backend_lexicons: tuple[str, ...] = ()) -> World:
    world = World(audio=loud)
    old = world.pipeline
    route = old.routes["b"]
    config = dataclasses.replace(route.config, lexicons=backend_lexicons)
    world.pipeline = Pipeline(
        old.settings,
        {"b": dataclasses.replace(route, config=config)},
        old.default_route,
        world.store,
        world.sink,
        references=world.references,
        lexicons=MemoryLexicons(files),
    )
    return world


def test_an_alias_replaces_whole_words_only() -> None:
    lexicon = parse_pls(W3C, "s3://lex/w3c.pls")
    assert apply([lexicon], "The W3C met; W3Cx did not.", phonemes=False).text == (
        "The World Wide Web Consortium met; W3Cx did not."
    )


def test_a_chinese_alias_matches_inside_a_sentence_longest_first() -> None:
    lexicon = parse_pls(ZH, "s3://lex/zh.pls")
    assert (
        apply([lexicon], "我住在重庆市，常去重庆。", phonemes=False).text
        == "我住在崇庆城，常去崇庆。"
    )


def test_the_first_lexicon_wins_and_phonemes_go_to_espeak_only() -> None:
    first = parse_pls(
        pls("<grapheme>tomato</grapheme><phoneme>t@m'A:toU</phoneme>", alphabet="x-espeak"), "a"
    )
    second = parse_pls(pls("<grapheme>tomato</grapheme><alias>tomahto</alias>"), "b")
    assert apply([first, second], "a tomato", phonemes=True).text == "a [[t@m'A:toU]]"
    assert apply([first, second], "a tomato", phonemes=False).text == "a tomahto"


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><lexicon>&e;</lexicon>', "DTD"),
        (b"<lexicon><lexeme><grapheme>x</grapheme>", "not well-formed"),
        (b"<lexicon>\n<script/></lexicon>", "line 2: <script> is not PLS"),
        (b"<lexicon>" + b" " * 300_000 + b"</lexicon>", "bytes, more than"),
    ],
)
def test_bad_or_hostile_pls_is_invalid_input(data: bytes, says: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_pls(data, "s3://lex/bad.pls")
    assert says in caught.value.message


async def test_a_lexicon_changes_the_backend_input_and_marks_keep_the_original() -> None:
    world = world_with({"s3://lex/w3c.pls": W3C})
    text = "The W3C met. It agreed."
    rec = record(text=text, lexicons=["s3://lex/w3c.pls"], marks=["sentence"])
    assert await world.pipeline.handle(rec) == "succeeded"
    assert [c.text for c in world.backend.calls] == [
        "The World Wide Web Consortium met.",
        "It agreed.",
    ]
    lines = world.store.objects["r0.marks.jsonl"][0].decode().splitlines()
    marks = [json.loads(line) for line in lines]
    assert [text[m["start"] : m["end"]] for m in marks] == ["The W3C met.", "It agreed."]


async def test_a_lexicon_in_a_bucket_not_allowed_is_invalid_input() -> None:
    world = world_with({})
    rec = record(text="The W3C met.", lexicons=["s3://elsewhere/w3c.pls"])
    assert await world.pipeline.handle(rec) == "failed"
    (letter,) = world.dead_letters()
    assert letter.header("dlq.reason") == "invalid_input"
    assert letter.header("dlq.error.type") == "lexicon_not_allowed"
    assert world.backend.calls == []


async def test_a_backend_s_lexicons_apply_after_the_request_s() -> None:
    mine = pls("<grapheme>W3C</grapheme><alias>the consortium</alias>")
    files = {"s3://lex/w3c.pls": W3C, "s3://lex/mine.pls": mine}
    world = world_with(files, backend_lexicons=("s3://lex/w3c.pls",))
    assert await world.pipeline.handle(record(0, text="The W3C met.")) == "succeeded"
    rec = record(1, text="The W3C met.", lexicons=["s3://lex/mine.pls"])
    assert await world.pipeline.handle(rec) == "succeeded"
    assert [c.text for c in world.backend.calls] == [
        "The World Wide Web Consortium met.",
        "The the consortium met.",
    ]


def test_backend_lexicons_in_the_config_are_s3_uris() -> None:
    table = {"kind": "espeak", "lexicons": ["s3://voxline-refs/names.pls"]}
    conf = parse({"backends": {"e": table}}, {})
    assert conf.backends["e"].lexicons == ("s3://voxline-refs/names.pls",)
    with pytest.raises(ConfigError, match="lexicons must be a list of s3://"):
        parse({"backends": {"e": {**table, "lexicons": ["names.pls"]}}}, {})
