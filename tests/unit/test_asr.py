"""The quality gate's ASR round trip (processor/asr.py): normalisation, the error rates, the
``[quality.asr]`` table, and the transcription client against the fake server (right text,
wrong text, 503s, a server that is down or slow)."""

from __future__ import annotations

import asyncio
import time

import pytest

from processor.asr import AsrSettings, Transcriber, by_characters, error_rate, normalise
from processor.backends.base import Audio, Utterance
from processor.config import ConfigError, parse
from processor.observability import Metrics
from processor.quality import Thresholds
from processor.quality_gate import QualityFailed, QualityGate, quality_summary
from processor.testing import spoken
from tests.fakes.asr_server import running_fake

pytestmark = pytest.mark.timeout(60)

TEXT = "The quick brown fox jumps over the lazy dog."


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("Hello, World!", "hello world"),
        ("Ｈｅｌｌｏ，世界！", "hello 世界"),  # full width (NFKC)
        ("Don't stop—now.", "dont stop now"),
        ("  a\tb\n c \u200b", "a b c"),
        ("你好，世界。", "你好 世界"),
        ("ÉCOLE Straße", "école strasse"),
    ],
)
def test_normalise(text: str, normal: str) -> None:
    assert normalise(text) == normal


def test_word_error_rate_counts_substitutions_insertions_and_deletions() -> None:
    assert error_rate(TEXT, "the quick brown fox jumps over the lazy dog", "en") == 0.0
    # one substitution (cat), one deletion (lazy) of nine words
    assert error_rate(TEXT, "The quick brown cat jumps over the dog", "en") == pytest.approx(2 / 9)
    assert error_rate(TEXT, "", "en") == 1.0
    assert error_rate(TEXT, TEXT + " " + TEXT, "en") == 1.0  # nine words inserted
    assert error_rate("", "", "en") == 0.0


def test_character_error_rate_for_scripts_without_spaces() -> None:
    assert by_characters("zh", "x")
    assert by_characters("ja-JP", "x")
    assert by_characters("auto", "今天天气很好。")
    assert by_characters("en", "今天天气很好。"), "the script, whatever the language says"
    assert not by_characters("auto", TEXT)
    assert not by_characters("ko", "안녕하세요 세계"), "Korean is written with spaces"
    assert error_rate("今天天气很好。", "今天天气很好", "zh") == 0.0
    assert error_rate("今天天气很好。", "今天 天气 很坏", "auto") == pytest.approx(1 / 6)
    assert error_rate("東京は晴れです", "東京は雨です", "ja") == pytest.approx(2 / 7)


def test_the_asr_table_is_checked_and_reads_the_key_from_the_environment() -> None:
    base = {"backends": {"e": {"kind": "espeak"}}}
    assert parse(base, {}).quality.asr is None
    table = {"url": "http://127.0.0.1:9", "max_error": 0.2, "api_key_env": "ASR_KEY"}
    asr = parse({**base, "quality": {"asr": table}}, {"ASR_KEY": "k"}).quality.asr
    assert asr == AsrSettings("http://127.0.0.1:9", api_key="k", max_error=0.2)
    assert "k" not in repr(asr)
    for bad, message in [
        ({"max_error": 0.2}, r"asr.url must be"),
        ({"url": "http://x", "max_eror": 1}, r"unknown keys max_eror"),
        ({"url": "http://x", "attempts": 0}, r"asr.attempts must be a whole number"),
        ({"url": "http://x", "wait_s": -1}, r"asr.wait_s must be a positive number"),
        ({"url": "http://x", "api_key_env": "NOPE"}, r"NOPE, which is not set"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse({**base, "quality": {"asr": bad}}, {})


def settings(url: str, **changes: object) -> AsrSettings:
    fast = {"timeout_s": 2.0, "wait_s": 1.0, "attempts": 3}
    return AsrSettings(url, **{**fast, **changes})  # type: ignore[arg-type]


def audio_of(text: str, language: str = "en") -> tuple[Audio, Utterance]:
    call = Utterance(text, language=language)
    return spoken(call), call


async def test_the_client_sends_the_openai_fields_and_reads_the_text() -> None:
    async with running_fake(text="the quick brown fox") as fake:
        asr = Transcriber(settings(fake.url + "/v1", model="whisper-large-v3"))
        audio, _ = audio_of(TEXT)
        assert await asr.heard(audio.data, "en-GB") == "the quick brown fox"
        await asr.aclose()
    sent = fake.stats()["last_request"]
    assert isinstance(sent, dict)
    assert (sent["model"], sent["language"], sent["response_format"]) == (
        "whisper-large-v3",
        "en",
        "json",
    )
    assert sent["file_bytes"] == len(audio.data)


async def test_503s_are_retried_and_a_server_that_is_down_skips_the_check() -> None:
    async with running_fake(text=TEXT, fail_first_n=2) as fake:
        asr = Transcriber(settings(fake.url))
        audio, _ = audio_of(TEXT)
        assert await asr.heard(audio.data, "en") == TEXT
        assert fake.stats()["requests"] == 3
        fake.set(down=True)
        started = time.monotonic()
        assert await asr.heard(audio.data, "en") is None
        # attempts and hold waits are bounded by wait_s (1 s) and the call timeout (2 s)
        assert time.monotonic() - started < 10
        await asr.aclose()


async def test_an_open_breaker_skips_without_calling_and_a_probe_closes_it() -> None:
    async with running_fake(text=TEXT, fail_status=503) as fake:
        asr = Transcriber(settings(fake.url, attempts=1))
        audio, _ = audio_of(TEXT)
        while asr.breaker.state == "closed":
            assert await asr.heard(audio.data, "en") is None
        calls = fake.stats()["requests"]
        assert await asr.heard(audio.data, "en") is None
        assert fake.stats()["requests"] == calls, "no call while the breaker is open"
        fake.set(fail_status=None)
        await asyncio.sleep(asr.breaker.retry_in(time.monotonic()))  # its cool-down's end
        assert await asr.heard(audio.data, "en") == TEXT, "the probe call"
        assert asr.breaker.state == "closed"  # type: ignore[comparison-overlap]
        await asr.aclose()


async def test_a_slow_server_is_skipped_after_the_timeout() -> None:
    async with running_fake(text=TEXT, latency_ms=5_000) as fake:
        asr = Transcriber(settings(fake.url, timeout_s=0.3, attempts=2))
        audio, _ = audio_of(TEXT)
        assert await asr.heard(audio.data, "en") is None
        await asr.aclose()


async def test_the_gate_regenerates_a_chunk_asr_heard_wrong_then_dead_letters_it() -> None:
    audio, call = audio_of(TEXT)
    log = __import__("structlog").get_logger()

    async def synthesize(_: Utterance) -> Audio:
        return audio

    metrics = Metrics()
    async with running_fake(script=["a completely different sentence"], text=TEXT) as fake:
        gate = QualityGate(Thresholds(attempts=2, asr=settings(fake.url)), metrics)
        made = await gate.made(call, "b", synthesize, log)
        assert made is audio
        assert fake.stats()["requests"] == 2, "wrong once, regenerated, right"
        fake.set(text="nothing like it")
        with pytest.raises(QualityFailed) as caught:
            await gate.made(call, "b", synthesize, log)
        fake.set(down=True)
        assert await gate.made(call, "b", synthesize, log) is audio, "unverified, passed"
        await gate.aclose()
    rendered = metrics.render().decode()
    assert 'voxline_quality_failures_total{backend="b",check="asr"} 3.0' in rendered
    assert 'voxline_quality_asr_skipped_total{backend="b"} 1.0' in rendered
    assert caught.value.checks == ["asr"]
    headers = caught.value.headers
    assert headers["dlq.quality.checks"] == "asr"
    assert float(headers["dlq.quality.asr_error_rate"]) == 1.0


async def test_the_event_reports_the_worst_rate_and_the_skipped_chunks() -> None:
    async with running_fake(script=["the quick brown fox jumps over the dog"], text=TEXT) as fake:
        gate = QualityGate(Thresholds(asr=settings(fake.url)), Metrics())
        chunks = []
        for _ in range(2):
            audio, call = audio_of(TEXT)
            chunks.append((await gate.check(audio, call))[0])
        fake.set(down=True)
        chunks.append((await gate.check(*audio_of(TEXT)))[0])
        await gate.aclose()
    summary = quality_summary(chunks, 0)
    assert summary["asr_error_rate"] == pytest.approx(1 / 9, abs=1e-4)
    assert summary["asr_skipped"] == 1
    assert "asr_error_rate" not in quality_summary(chunks[2:], 0)
