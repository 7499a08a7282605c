"""Sentences in English, Chinese and Japanese, and chunks drawn from them: the texts the quality
gate's false-positive tests and the ``quality`` benchmark speak with espeak-ng."""

from __future__ import annotations

import random

SENTENCES: dict[str, list[str]] = {
    "en": [
        "The quick brown fox jumps over the lazy dog.",
        "She sells sea shells by the sea shore.",
        "In the beginning the universe was created.",
        "This has made a lot of people very angry and been widely regarded as a bad move.",
        "It was the best of times, it was the worst of times.",
        "Call me Ishmael.",
        "Some years ago, never mind how long precisely, I thought I would sail about a little.",
        "Hello.",
        "Yes.",
        "Chapter one.",
        "In 1984 the price was $3.50, or 12% more than in 2023!",
        "Dr. Smith arrived at 10:45 a.m. on the 3rd of May.",
        "Why would anyone, least of all a lighthouse keeper, want to leave the island?",
        "The committee met on Tuesday; nothing was decided.",
    ],
    "zh": [
        "今天天气很好。",
        "我们一起去公园散步吧。",
        "这本书讲述了一个古老的故事。",
        "他每天早上六点起床。",
        "中国的历史非常悠久。",
        "你好。",
        "谢谢你的帮助。",
        "人工智能正在改变世界，语音合成技术也越来越成熟。",
        "会议将在下午三点开始，请大家准时参加。",
        "春天来了，花园里开满了五颜六色的花。",
    ],
    "ja": [
        "今日はいい天気ですね。",
        "私は毎朝コーヒーを飲みます。",
        "この本はとても面白いです。",
        "東京は日本の首都です。",
        "こんにちは。",
        "ありがとうございます。",
        "音声合成の技術は急速に進歩しています。",
        "駅までは歩いて十分ほどかかります。",
        "明日の会議は午後三時からです。",
    ],
}

#: The espeak-ng voice for each language.
ESPEAK_VOICE = {"en": "en-us", "zh": "cmn", "ja": "ja"}


def chunks(language: str, count: int, seed: int = 0) -> list[str]:
    """``count`` chunks of one to four sentences of ``language``, drawn with ``seed``."""
    rng = random.Random(seed)
    pool = SENTENCES[language]
    glue = " " if language == "en" else ""
    return [glue.join(rng.sample(pool, rng.randint(1, 4))) for _ in range(count)]
