"""The espeak-ng backend: pure voice/prosody rules, error paths through stand-in binaries, and
real synthesis when espeak-ng is installed (required in CI)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from processor.backends.espeak import (
    EspeakBackend,
    Voices,
    choose_voice,
    detect_language,
    parse_voice_list,
    prosody_args,
)
from processor.errors import InvalidInput, Stage, Systemic, Transient
from processor.request import Reference, Voice
from tests.unit.backend_helpers import measured_rate, refused, utterance
from tests.unit.programs import required

pytestmark = pytest.mark.timeout(60)

VOICE_LISTING = """\
Pty Language       Age/Gender VoiceName          File                 Other Languages
 5  af              --/M      Afrikaans          gmw/af
 5  cmn             --/M      Chinese_(Mandarin,_latin_as_English) sit/cmn  (zh-cmn 5)(zh 5)
 5  en-029          --/M      English_(Caribbean) gmw/en-029           (en 10)
 2  en-gb           --/M      English_(Great_Britain) gmw/en               (en 2)
 5  en-us           --/M      English_(America)  gmw/en-US            (en 3)
 5  ja              --/M      Japanese           jpx/ja
"""
VARIANT_LISTING = """\
Pty Language       Age/Gender VoiceName          File                 Other Languages
 5  variant         --/M      Alex               !v/Alex
 5  variant         --/F      female3            !v/f3
"""


@pytest.fixture(scope="module")
def espeak_binary() -> str:
    """The real espeak-ng (required in CI)."""
    return required("espeak-ng")


def voices() -> Voices:
    return Voices(parse_voice_list(VOICE_LISTING), {"f3": "f3", "alex": "Alex"})


def stand_in(tmp_path: Path, speak: str, calls: Path | None = None) -> str:
    """An executable that lists voices like espeak-ng and runs ``speak`` (sh) to synthesize;
    with ``calls``, each run appends its first argument there."""
    (tmp_path / "voices.txt").write_text(VOICE_LISTING)
    (tmp_path / "variants.txt").write_text(VARIANT_LISTING)
    script = tmp_path / "espeak-ng"
    script.write_text(
        "#!/bin/sh\n" + (f'echo "$1" >> "{calls}"\n' if calls else "") + 'case "$1" in\n'
        f'  --voices) cat "{tmp_path}/voices.txt"; exit 0;;\n'
        f'  --voices=variant) cat "{tmp_path}/variants.txt"; exit 0;;\n'
        "esac\n"
        f"{speak}\n"
    )
    script.chmod(0o755)
    return str(script)


def is_gone(pid: int) -> bool:
    """True once the process has exited and been reaped (no zombie left in /proc)."""
    return not Path(f"/proc/{pid}").exists()


# Pure rules


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Hello world", "en"),
        ("你好 世界", "zh"),
        ("今日は良い天気ですね", "ja"),  # Han with kana is Japanese
        ("カタカナ", "ja"),
        ("안녕하세요 世界", "ko"),
        ("Ça va? 123", "en"),
        ("", "en"),
    ],
)
def test_detect_language_by_script(text: str, language: str) -> None:
    assert detect_language(text) == language


def test_voice_listing_knows_languages_names_and_files() -> None:
    names = parse_voice_list(VOICE_LISTING)

    assert names["en-us"] == "gmw/en-US"
    assert names["english_(america)"] == "gmw/en-US"
    assert names["gmw/en-us"] == "gmw/en-US"
    assert names["cmn"] == names["zh"] == "sit/cmn"
    assert names["en"] == "gmw/en"  # the lowest priority number, not the first listed
    assert "klingon" not in names


@pytest.mark.parametrize(
    ("fields", "voice"),
    [
        ({"language": "en"}, "gmw/en"),
        ({"language": "zh"}, "sit/cmn"),
        ({"language": "ja"}, "jpx/ja"),
        ({"language": "AF"}, "gmw/af"),
        ({"language": "en-US"}, "gmw/en-US"),
        ({"language": "en-AU"}, "gmw/en"),
        ({"language": "zh-TW"}, "sit/cmn"),
        ({"voice": Voice(preset="en-us")}, "gmw/en-US"),
        ({"voice": Voice(preset="English_(America)")}, "gmw/en-US"),
        ({"voice": Voice(preset="en-us+f3")}, "gmw/en-US+f3"),
        ({"voice": Voice(preset="EN-US+alex")}, "gmw/en-US+Alex"),
    ],
)
def test_choose_voice(fields: dict[str, Any], voice: str) -> None:
    assert choose_voice(utterance(**fields), voices()) == voice


def test_auto_language_follows_the_script() -> None:
    assert choose_voice(utterance("你好"), voices()) == "sit/cmn"
    assert choose_voice(utterance("こんにちは"), voices()) == "jpx/ja"
    assert choose_voice(utterance("Hello"), voices()) == "gmw/en"


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"voice": Voice(preset="klingon")}, "'klingon'"),
        ({"voice": Voice(preset="en-us+nosuchvariant")}, "'en-us+nosuchvariant'"),
        ({"voice": Voice(preset="--help")}, "'--help'"),
        ({"language": "TLH"}, "'tlh'"),
        ({"language": "en+f3"}, "'en+f3'"),
        ({"text": "안녕하세요"}, "'ko'"),  # detected, and this listing lacks it
    ],
)
def test_unknown_voices_are_invalid_input_naming_them(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        choose_voice(utterance(**fields), voices())

    assert named in caught.value.message
    assert caught.value.stage is Stage.SYNTHESIZE


@pytest.mark.parametrize(
    ("params", "args"),
    [
        ({}, []),
        ({"speed": 1}, ["-s", "175"]),
        ({"speed": 1.5}, ["-s", "262"]),
        ({"speed": 0.25}, ["-s", "80"]),  # clamped into espeak-ng's range
        ({"speed": 4.0}, ["-s", "450"]),
        ({"pitch": 70}, ["-p", "70"]),
        ({"speed": 2, "pitch": 0}, ["-s", "350", "-p", "0"]),
    ],
)
def test_prosody_args(params: dict[str, object], args: list[str]) -> None:
    assert prosody_args(params) == args


@pytest.mark.parametrize(
    "params",
    [
        {"speed": 0},
        {"speed": 5},
        {"speed": "fast"},
        {"speed": True},
        {"pitch": 100},
        {"pitch": 1.5},
    ],
)
def test_bad_prosody_is_invalid_input(params: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        prosody_args(params)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"voice": Voice(description="a warm old man")}, "voice design/cloning"),
        ({"voice": Voice(reference=Reference(audio_uri="s3://b/ref.wav"))}, "design/cloning"),
        ({"params": {"speed": 9}}, "params.speed"),
        ({"params": {"pitch": -1}}, "params.pitch"),
    ],
)
async def test_unsupported_utterances_are_refused_before_spawning(
    fields: dict[str, Any], message: str
) -> None:
    await refused(EspeakBackend(binary="/nonexistent/espeak-ng"), utterance(**fields), message)


# Error paths, through stand-in binaries


async def test_missing_binary_is_systemic() -> None:
    backend = EspeakBackend(binary="/nonexistent/espeak-ng")

    with pytest.raises(Systemic, match=r"infra/packages\.sh"):
        await backend.synthesize(utterance())


async def test_voices_are_listed_once_with_their_variants(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    backend = EspeakBackend(binary=stand_in(tmp_path, "exit 1", calls=calls))

    first, second = await asyncio.gather(backend.voices(), backend.voices())

    assert first is second
    assert first.resolve("en-us+alex") == "gmw/en-US+Alex"
    assert first.resolve("ja+F3") == "jpx/ja+f3"
    assert first.resolve("en+variant") is None
    assert calls.read_text().split() == ["--voices", "--voices=variant"]


async def test_nonzero_exit_is_transient_with_stderr(tmp_path: Path) -> None:
    backend = EspeakBackend(binary=stand_in(tmp_path, 'echo "no audio device" >&2; exit 3'))

    with pytest.raises(Transient) as caught:
        await backend.synthesize(utterance())

    assert "exited with 3" in caught.value.message
    assert "no audio device" in caught.value.message


async def test_empty_output_is_transient(tmp_path: Path) -> None:
    backend = EspeakBackend(binary=stand_in(tmp_path, "cat >/dev/null; exit 0"))

    with pytest.raises(Transient, match="no audio"):
        await backend.synthesize(utterance())


async def test_garbage_output_is_transient(tmp_path: Path) -> None:
    backend = EspeakBackend(binary=stand_in(tmp_path, "echo 'not a wav at all'"))

    with pytest.raises(Transient) as caught:
        await backend.synthesize(utterance())

    assert caught.value.error_type == "malformed_audio"


async def test_arguments_carry_no_text(tmp_path: Path) -> None:
    argv_file = tmp_path / "argv"
    stdin_file = tmp_path / "stdin"
    speak = f'echo "$@" > "{argv_file}"; cat > "{stdin_file}"; exit 1'
    backend = EspeakBackend(binary=stand_in(tmp_path, speak))

    with pytest.raises(Transient):
        await backend.synthesize(utterance("--help -w /tmp/x", params={"speed": 2}))

    assert argv_file.read_text().split() == ["--stdout", "--stdin", "-v", "gmw/en", "-s", "350"]
    assert stdin_file.read_text() == "--help -w /tmp/x"


async def test_timeout_kills_the_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    backend = EspeakBackend(
        binary=stand_in(tmp_path, f'echo $$ > "{pid_file}"; exec sleep 30'), timeout=0.5
    )

    with pytest.raises(Transient) as caught:
        await backend.synthesize(utterance())

    assert caught.value.error_type == "timeout"
    assert is_gone(int(pid_file.read_text()))


async def test_cancellation_kills_and_reaps_the_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    backend = EspeakBackend(binary=stand_in(tmp_path, f'echo $$ > "{pid_file}"; exec sleep 30'))
    task = asyncio.create_task(backend.synthesize(utterance()))
    for _ in range(200):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        await asyncio.sleep(0.01)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert is_gone(int(pid_file.read_text()))


async def test_max_concurrency_caps_running_processes(tmp_path: Path) -> None:
    log = tmp_path / "log"
    speak = f'echo start >> "{log}"; sleep 0.3; echo end >> "{log}"; exit 1'
    backend = EspeakBackend(binary=stand_in(tmp_path, speak), max_concurrency=2)

    results = await asyncio.gather(
        *(backend.synthesize(utterance()) for _ in range(4)), return_exceptions=True
    )

    assert all(isinstance(result, Transient) for result in results)
    running = peak = 0
    for line in log.read_text().split():
        running += 1 if line == "start" else -1
        peak = max(peak, running)
    assert peak == 2


# Real synthesis


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("The quick brown fox jumps over the lazy dog.", "en"),
        ("今天天气很好。", "zh"),
        ("こんにちは、元気ですか。", "ja"),
        ("今天天气很好。", "auto"),
        ("こんにちは", "auto"),
    ],
)
async def test_speaks_languages_as_valid_wav(espeak_binary: str, text: str, language: str) -> None:
    backend = EspeakBackend(binary=espeak_binary)

    audio = await backend.synthesize(utterance(text, language=language))

    assert measured_rate(audio) == 22050
    assert audio.duration_ms > 200


async def test_a_known_preset_is_used(espeak_binary: str) -> None:
    backend = EspeakBackend(binary=espeak_binary)

    audio = await backend.synthesize(utterance(voice=Voice(preset="en-us")))

    assert audio.duration_ms > 0


async def test_an_unknown_preset_is_invalid_input(espeak_binary: str) -> None:
    backend = EspeakBackend(binary=espeak_binary)

    with pytest.raises(InvalidInput, match="'no-such-voice'"):
        await backend.synthesize(utterance(voice=Voice(preset="no-such-voice")))


@pytest.mark.parametrize("text", ["--help", "-v xx --version", "-w /tmp/owned.wav hello"])
async def test_option_like_text_is_spoken(espeak_binary: str, text: str) -> None:
    backend = EspeakBackend(binary=espeak_binary)

    audio = await backend.synthesize(utterance(text))

    assert measured_rate(audio) == 22050
    assert audio.duration_ms > 200


async def test_speed_changes_the_duration(espeak_binary: str) -> None:
    backend = EspeakBackend(binary=espeak_binary)
    text = "This sentence is spoken at two different speeds."

    normal = await backend.synthesize(utterance(text))
    fast = await backend.synthesize(utterance(text, params={"speed": 2.0}))

    assert fast.duration_ms < normal.duration_ms * 0.8


async def test_concurrent_calls_share_one_voice_listing(espeak_binary: str) -> None:
    backend = EspeakBackend(binary=espeak_binary, max_concurrency=2)

    results = await asyncio.gather(
        *(backend.synthesize(utterance(f"Number {i}.")) for i in range(4))
    )

    assert all(audio.duration_ms > 0 for audio in results)
    await backend.aclose()
