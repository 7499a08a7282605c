"""Text chunking: invariants under hypothesis, and real Chinese, Japanese and English prose."""

from __future__ import annotations

import itertools
import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.chunking import split_sentences, split_text

# Sample prose, written for these tests.
ZH_PARAGRAPHS = [
    "我家乡的小镇坐落在一条弯弯曲曲的河边。每到春天，河岸两旁的柳树便抽出嫩绿的新芽，风一吹，"
    "细长的枝条就在水面上轻轻摇晃，像是在和游鱼打招呼。镇上的人们习惯早起，天刚蒙蒙亮，卖豆浆的"
    "老王就已经支起了摊子，热气腾腾的锅里飘出阵阵香味。孩子们背着书包从石板路上跑过，笑声在狭窄"
    "的巷子里回荡。",
    "夏天的河水涨得很高，清澈见底。午后最热的时候，老人们喜欢坐在桥头的大槐树下乘凉，一边摇着"
    "蒲扇，一边讲着过去的故事。他们说，很多年以前，这条河上来往的船只比现在多得多，码头上整天"
    "都是搬运货物的工人，吆喝声从早到晚不曾停歇。如今，铁路和公路修到了镇子外面，河上只剩下几条"
    "打鱼的小船，安安静静地泊在芦苇丛旁边。",
    "“你还记得小时候在河里捉螃蟹吗？”表哥有一次问我。我当然记得！那时候我们常常挽起裤腿，蹚着"
    "冰凉的河水，在石头缝里摸来摸去。螃蟹没捉到几只，衣服倒是全湿透了，回家免不了挨一顿骂。可是"
    "第二天，我们又会偷偷溜到河边，把昨天的教训忘得一干二净。",
    "秋天来的时候，田野里一片金黄。稻子成熟了，农民们弯着腰在田里收割，脸上挂着汗水，也挂着"
    "笑容。傍晚时分，炊烟从各家的屋顶上袅袅升起，空气里弥漫着柴火和新米饭的味道；远处的山峦被"
    "夕阳染成了橘红色，渐渐地隐没在暮色之中。",
    "冬天的小镇格外安静。偶尔下一场雪，屋檐上、树枝上、石桥上都铺满了白色，整个世界仿佛被洗过"
    "一样干净。母亲会在炉子上炖一锅萝卜排骨汤，一家人围坐在桌旁，听着窗外呼呼的北风，说说一年里"
    "发生的事情……这样的夜晚，总让人觉得温暖而踏实。",
    "后来我离开家乡，到很远的城市去读书、工作。城市里高楼林立，车水马龙，生活节奏快得让人喘不过"
    "气来。每当疲惫的时候，我总会想起那条河，想起河边的柳树和桥头的槐树，想起母亲炖的汤。我知道，"
    "无论走得多远，那个小镇永远是我心里最柔软的地方。",
]

JA_PARAGRAPHS = [
    "朝の駅はいつも人であふれている。電車が到着するたびに、スーツ姿の会社員や制服を着た学生たちが"
    "一斉にホームへ降りてくる。誰もが急ぎ足で改札へ向かい、立ち止まる人はほとんどいない。",
    "「今日は雨が降るかな？」と妹が空を見上げて言った。「天気予報では午後から降るって。」私は"
    "折りたたみ傘をかばんに入れながら答えた。妹は少し不満そうな顔をしたが、結局自分の傘を取りに"
    "部屋へ戻っていった。",
    "駅前の小さな喫茶店は、私のお気に入りの場所だ。古い木のテーブルと、壁に掛けられた色あせた絵、"
    "そしてマスターが丁寧に淹れるコーヒーの香り。ここに座っていると、時間がゆっくり流れている"
    "ように感じる！",
    "週末になると、近くの公園で子どもたちが元気に遊んでいる。ボールを追いかける声、ブランコが"
    "きしむ音、ベンチで話し込むお年寄りたちの笑い声……そんな風景を眺めていると、なぜか心が穏やかに"
    "なる。",
    "春には桜が咲き、夏には蝉が鳴き、秋には紅葉が山を彩り、冬には静かに雪が降る。季節はめぐり、"
    "人も少しずつ変わっていく。それでも、この町の朝の風景だけは、いつまでも変わらないでいてほしいと"
    "思う。",
]

EN_CHAPTER = """\
Chapter One

The morning train to Ashford was late again. Mr. Hale stood at the end of the platform with his \
hands in his coat pockets, watching the fog roll in from the river. He had taken the same train \
every weekday for eleven years, and in that time he had learned that lateness came in three kinds: \
the kind that was announced, the kind that was apologised for, and the kind that simply happened, \
without explanation, as though time itself had paused to catch its breath.

"You look like a man who has been waiting a while," said a voice beside him. He turned to find \
Dr. Marsh, the veterinarian from the village, holding two paper cups of coffee. She handed him one \
without asking. "It's 7.45 already. They say a signal failed near the junction, e.g. the same one \
that failed last winter."

"Then we will be here until nine," he said. He sipped the coffee. It was too hot, and too sweet, \
and exactly what he needed. For a while neither of them spoke. A pigeon walked along the edge of \
the platform with great dignity, inspecting crumbs; a porter pushed an empty trolley past them, \
whistling a tune that neither of them could name.

Dr. Marsh was the first to break the silence. "Do you ever think about leaving?" she asked. "Not \
the village, I mean. This. The train, the office, the same desk every morning." He considered the \
question for longer than she had expected. Was it possible? He had savings, after all, and no one \
depended on him. Yet the thought frightened him more than he cared to admit!

At last the train appeared, its single headlight cutting a pale tunnel through the fog. The \
passengers shuffled forward. Mr. Hale hesitated at the open door, the cup still warm in his hand, \
and for a moment he did not step inside.
"""

_SENTENCE_END = re.compile(r"[.!?;。！？；…][\"'”’」』）)]*\Z")


def ends_sentence(chunk: str) -> bool:
    """Whether a chunk ends at a sentence end (punctuation, or a line break, then whitespace)."""
    body = chunk.rstrip()
    return "\n" in chunk[len(body) :] or bool(_SENTENCE_END.search(body))


def cuts(chunks: list[str]) -> list[int]:
    """Offsets in the text where one chunk ends and the next begins."""
    return list(itertools.accumulate(len(chunk) for chunk in chunks))[:-1]


def marked(text: str, limit: int) -> str:
    """``text`` with a ``|`` at each place ``split_text`` cuts it (equal strings mean equal
    chunks: no chunk is empty or holds a ``|``)."""
    chunks = split_text(text, limit)
    assert all(chunk and "|" not in chunk for chunk in chunks), chunks
    return "|".join(chunks)


def check_invariants(text: str, limit: int, chunks: list[str]) -> None:
    assert "".join(chunks) == text
    assert all(1 <= len(chunk) <= limit for chunk in chunks), [len(c) for c in chunks]
    if text and len(text) <= limit:
        assert chunks == [text]


def repeat_to(paragraphs: list[str], size: int) -> str:
    """Whole paragraphs, cycled, separated by blank lines, until the text is ``size`` long."""
    out: list[str] = []
    for paragraph in itertools.cycle(paragraphs):
        if sum(len(p) + 2 for p in out) >= size:
            return "\n\n".join(out)
        out.append(paragraph)
    raise AssertionError("unreachable")


# --- properties ---------------------------------------------------------------------------

#: Pure CPU work on a shared machine: the invariants are under test here, not the speed.
NO_DEADLINE = settings(deadline=None)

MARKS = ["\u0301", "\u0308", "\u0323", "\u093f", "\ufe0f", "\u20dd"]
TRICKY = [
    *"ab Z.!?;,:，、。！？；…」』”）(「\"'\n\t",
    "\r\n",
    "\u200d",
    "中",
    "文",
    "ア",
    *MARKS,
]


@NO_DEADLINE
@given(
    text=st.text() | st.lists(st.sampled_from(TRICKY)).map("".join),
    limit=st.integers(1, 40),
)
def test_chunks_join_back_to_the_text_and_respect_the_limit(text: str, limit: int) -> None:
    check_invariants(text, limit, split_text(text, limit))


LETTERS = "abdeghikmnorstuwy"  # no c, l, p, v, x: no word is an abbreviation (al, cf, vs, pp)
WORD = st.text(LETTERS, min_size=1, max_size=8)
WESTERN_SENTENCE = st.builds(
    lambda words, end, quote, gap: " ".join(words) + end + quote + gap,
    st.lists(WORD, min_size=1, max_size=6),
    st.sampled_from([".", "!", "?", "?!", "...", ";"]),
    st.sampled_from(["", '"', "”", ")"]),
    st.sampled_from([" ", "  ", "\n", "\n\n", " \n"]),
)
HAN = st.text("河边柳树春天风吹水面孩子们笑声", min_size=1, max_size=12)
CHINESE_SENTENCE = st.builds(
    lambda clauses, end, quote, gap: "，".join(clauses) + end + quote + gap,
    st.lists(HAN, min_size=1, max_size=3),
    st.sampled_from(["。", "！", "？", "……", "；", "?!"]),
    st.sampled_from(["", "”", "」", "）"]),
    st.sampled_from(["", "", "\n"]),
)


@NO_DEADLINE
@given(
    sentences=st.lists(WESTERN_SENTENCE | CHINESE_SENTENCE, min_size=1, max_size=30),
    extra=st.integers(0, 120),
)
def test_sentences_shorter_than_the_limit_are_never_cut(sentences: list[str], extra: int) -> None:
    text = "".join(sentences)
    limit = max(map(len, sentences)) + extra
    chunks = split_text(text, limit)
    check_invariants(text, limit, chunks)
    assert set(cuts(chunks)) <= set(itertools.accumulate(map(len, sentences)))


@NO_DEADLINE
@given(
    text=st.text() | st.lists(st.sampled_from(TRICKY)).map("".join),
    limit=st.integers(1, 40),
    shortest=st.integers(0, 40),
)
def test_sentence_chunks_join_back_and_respect_the_limit(
    text: str, limit: int, shortest: int
) -> None:
    chunks = split_sentences(text, limit, shortest=shortest)
    assert "".join(chunks) == text
    assert all(1 <= len(chunk) <= limit for chunk in chunks), [len(c) for c in chunks]


#: As ``WESTERN_SENTENCE``, without one-letter words (``a.`` is taken for an initial).
PLAIN_SENTENCE = st.builds(
    lambda words, end, gap: " ".join(words) + end + gap,
    st.lists(st.text(LETTERS, min_size=2, max_size=8), min_size=1, max_size=6),
    st.sampled_from([".", "!", "?", "?!", "...", ";"]),
    st.sampled_from([" ", "  ", "\n", "\n\n", " \n"]),
)


@NO_DEADLINE
@given(
    sentences=st.lists(PLAIN_SENTENCE | CHINESE_SENTENCE, min_size=1, max_size=30),
    extra=st.integers(0, 120),
    edited=st.integers(0, 29),
)
def test_sentence_chunks_are_the_sentences_and_an_edit_moves_no_other(
    sentences: list[str], extra: int, edited: int
) -> None:
    text = "".join(sentences)
    limit = max(map(len, sentences)) + extra
    chunks = split_sentences(text, limit)
    assert "".join(chunks) == text
    assert set(cuts(chunks)) == set(itertools.accumulate(map(len, sentences[:-1])))
    at = edited % len(sentences)
    changed = [*sentences[:at], "Edited words here. ", *sentences[at + 1 :]]
    others = split_sentences("".join(changed), max(limit, 19))
    assert [c for i, c in enumerate(others) if i != at] == [
        c for i, c in enumerate(split_sentences(text, max(limit, 19))) if i != at
    ]


def test_short_sentences_join_the_next_one() -> None:
    text = "Yes. Go. The long sentence follows here. Fine."
    assert split_sentences(text, 40, shortest=8) == [
        "Yes. Go. ",
        "The long sentence follows here. ",
        "Fine.",
    ]
    assert split_sentences(text, 40) == [
        "Yes. ",
        "Go. ",
        "The long sentence follows here. ",
        "Fine.",
    ]


GAP = st.sampled_from([" ", "  ", "\n", "\t", " \n ", "\n\n"])
TOKEN = st.text(LETTERS + "ABCXYZ0123456789.,;:!?'-\"()", min_size=1, max_size=15)


@NO_DEADLINE
@given(
    parts=st.lists(st.tuples(TOKEN, GAP | st.text(" ", min_size=1, max_size=40)), min_size=1),
    extra=st.integers(1, 30),
)
def test_words_shorter_than_the_limit_are_never_cut(
    parts: list[tuple[str, str]], extra: int
) -> None:
    text = "".join(word + gap for word, gap in parts)
    limit = max(len(word) for word, _ in parts) + extra
    chunks = split_text(text, limit)
    check_invariants(text, limit, chunks)
    for at in cuts(chunks):
        assert text[at - 1].isspace() or text[at].isspace(), (text[at - 5 : at + 5], chunks)


@NO_DEADLINE
@given(
    parts=st.lists(st.tuples(TOKEN | HAN, GAP), min_size=1),
    limit=st.integers(30, 80),
)
def test_no_whitespace_only_chunk_when_whitespace_fits_beside_its_word(
    parts: list[tuple[str, str]], limit: int
) -> None:
    text = "".join(word + gap for word, gap in parts)
    chunks = split_text(text, limit)
    check_invariants(text, limit, chunks)
    assert not any(chunk.isspace() for chunk in chunks), chunks


# Marks attach to any base but a control (Unicode's grapheme rules); ZWJ joins two emoji.
CLUSTER = st.builds(
    lambda base, marks: base + "".join(marks),
    st.sampled_from([*"abz .。,，中ア👍"]),
    st.lists(st.sampled_from(MARKS), max_size=3),
) | st.sampled_from(["\n", "\r\n", "👍\u200d👍"])


@NO_DEADLINE
@given(clusters=st.lists(CLUSTER, min_size=1), limit=st.integers(6, 40))
def test_clusters_are_never_split(clusters: list[str], limit: int) -> None:
    text = "".join(clusters)
    chunks = split_text(text, limit)
    check_invariants(text, limit, chunks)
    boundaries = set(itertools.accumulate(map(len, clusters)))
    assert set(cuts(chunks)) <= boundaries


# --- examples ------------------------------------------------------------------------------


def test_short_text_comes_back_whole() -> None:
    assert split_text("Hello.", 6) == ["Hello."]
    assert split_text("你好。", 300) == ["你好。"]
    assert split_text("   ", 3) == ["   "]


def test_empty_text_has_no_chunks() -> None:
    assert split_text("", 5) == []


@pytest.mark.parametrize("limit", [0, -1])
def test_limit_below_one_is_rejected(limit: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        split_text("text", limit)


def test_western_sentences_pack_greedily() -> None:
    text = "One two. Three four! Five six? Seven eight; nine ten.\nEleven."
    assert marked(text, 21) == "One two. Three four! |Five six? |Seven eight; |nine ten.\nEleven."
    assert marked(text, 40) == "One two. Three four! Five six? |Seven eight; nine ten.\nEleven."


def test_abbreviations_decimals_and_initials_do_not_end_sentences() -> None:
    text = "Mr. Smith paid 3.14 to Dr. J. Watson, e.g. for tea. Then he left."
    assert marked(text, 55) == "Mr. Smith paid 3.14 to Dr. J. Watson, e.g. for tea. |Then he left."


def test_closing_quotes_stay_with_their_sentence() -> None:
    text = '他说：“走吧。”我们就走了。「行くよ！」と彼は言った。He said "Go." We went.'
    assert (
        marked(text, 14)
        == '他说：“走吧。”我们就走了。|「行くよ！」と彼は言った。|He said "Go." |We went.'
    )
    assert split_text(text, 8)[0] == "他说：“走吧。”"


def test_long_sentence_is_cut_at_clauses_then_words_then_hard() -> None:
    zh = "春天来了，柳树发芽了，河水也变得清澈了，孩子们在河边奔跑。"
    assert marked(zh, 12) == "春天来了，柳树发芽了，|河水也变得清澈了，|孩子们在河边奔跑。"
    en = "When the fog lifted, the passengers, tired and cold, boarded the train."
    assert (
        marked(en, 30)
        == "When the fog lifted, |the passengers, |tired and cold, |boarded the train."
    )
    assert (
        marked("When the fog lifted over the river", 12) == "When the |fog lifted |over the |river"
    )
    assert marked("a supercalifragilistic word", 10) == "a |supercalif|ragilistic| word"
    assert marked("春天来了柳树发芽了", 4) == "春天来了|柳树发芽|了"


def test_whitespace_is_merged_into_a_neighbour_where_it_fits() -> None:
    assert split_text("abcdefgh     xyz", 10) == ["abcdefgh  ", "   xyz"]
    # Unavoidable: the word and its trailing whitespace do not fit in one chunk.
    assert split_text("abcdefgh  ", 9) == ["abcdefgh ", " "]
    assert split_text("     ", 2) == ["  ", "  ", " "]


def test_cjk_runs_are_cut_between_characters_but_not_before_closing_punctuation() -> None:
    text = "「" + "あ" * 9 + "」" + "い" * 9 + "、" + "う" * 9 + "ー"
    chunks = split_text(text, 10)
    check_invariants(text, 10, chunks)
    assert not any(chunk[0] in "」、ー" for chunk in chunks)
    assert not any(chunk[-1] == "「" for chunk in chunks)


def test_combining_marks_stay_with_their_base() -> None:
    text = "e\u0301" * 7
    assert split_text(text, 5) == ["e\u0301e\u0301", "e\u0301e\u0301", "e\u0301e\u0301", "e\u0301"]
    # A cluster longer than the limit has to be cut.
    assert split_text("a" + "\u0301" * 5, 3) == ["a\u0301\u0301", "\u0301\u0301\u0301"]


def test_chinese_text_of_five_thousand_characters() -> None:
    text = repeat_to(ZH_PARAGRAPHS, 5000)
    assert len(text) >= 5000
    chunks = split_text(text, 300)
    check_invariants(text, 300, chunks)
    assert all(ends_sentence(chunk) for chunk in chunks)
    assert not any(chunk.isspace() for chunk in chunks)
    assert len(chunks) == 18  # 5,072 characters: at least 17 chunks of 300
    assert [len(split_text(text, limit)) for limit in (100, 200, 500)] == [61, 27, 11]


def test_japanese_text() -> None:
    text = repeat_to(JA_PARAGRAPHS, 2000)
    chunks = split_text(text, 200)
    check_invariants(text, 200, chunks)
    assert all(ends_sentence(chunk) for chunk in chunks)
    assert len(chunks) == 11


def test_english_chapter() -> None:
    chunks = split_text(EN_CHAPTER, 400)
    check_invariants(EN_CHAPTER, 400, chunks)
    assert all(ends_sentence(chunk) for chunk in chunks)
    assert not any(re.search(r"\b(Mr|Dr|e\.g|7)\.\s*\Z", chunk) for chunk in chunks)
    assert len(chunks) == 6


def test_english_chapter_with_a_sentence_longer_than_the_limit() -> None:
    chunks = split_text(EN_CHAPTER, 300)
    check_invariants(EN_CHAPTER, 300, chunks)
    # "He had taken the same train ... catch its breath." is 330 characters: cut at a comma.
    assert [ends_sentence(chunk) for chunk in chunks] == [True, False, *[True] * 6]
    assert chunks[1].endswith("without explanation, ")
    assert chunks[2].startswith("as though time itself")


@pytest.mark.parametrize(
    "text",
    ["a" * 20000, "." * 20000, "," * 20000, "\n" * 20000, " " * 20000, "中" * 20000, "a. " * 7000],
    ids=["letters", "dots", "commas", "newlines", "spaces", "han", "tiny-sentences"],
)
def test_pathological_inputs_at_the_maximum_length(text: str) -> None:
    chunks = split_text(text, 300)
    check_invariants(text, 300, chunks)
    assert len(chunks) <= len(text) // 150


def test_mixed_scripts_without_spaces_are_cut_between_cjk_and_latin() -> None:
    text = "我们用Python和Kafka处理语音合成请求" * 3
    chunks = split_text(text, 16)
    check_invariants(text, 16, chunks)
    for word in ("Python", "Kafka"):
        assert text.count(word) == sum(chunk.count(word) for chunk in chunks)
    assert unicodedata.category(chunks[0][-1]) == "Lo"
