"""The espeak-ng backend: a local subprocess, no server, 22050 Hz mono WAV.

Each call runs ``espeak-ng --stdout --stdin -v VOICE [-s WPM] [-p PITCH]`` with the text on
standard input, never in argv, so a text such as ``--help`` is spoken rather than parsed. espeak-ng
writes placeholder RIFF sizes when its output is a pipe; ``fix_streamed_wav`` repairs them and
``wav_info`` measures the result.

The voices espeak-ng has are listed once (``--voices`` and ``--voices=variant``) on first use and
cached; presets and languages are checked against that list before any synthesis.

    utterance            how this backend serves it
    voice.preset         ``-v`` with that espeak-ng voice (``en-us``, ``cmn``, ``en+f3``), else
                         InvalidInput naming it
    no voice, language   ``-v`` with the language's voice (``auto``: chosen by the text's script)
    voice.description,   InvalidInput: espeak-ng cannot design or clone voices
    voice.reference
    params.speed         ``-s`` (a multiplier of 175 wpm, 0.25 to 4, clamped into 80-450 wpm)
    params.pitch         ``-p`` (an integer 0 to 99)
    seed, other params   ignored
    always               WAV at 22050 Hz (the pipeline transcodes)

    outcome                          error
    the binary missing               Systemic   error_type="espeak_missing"
    non-zero exit                    Transient  error_type="espeak_exit"
    no output, or no frames          Transient  error_type="empty_audio"
    output that is not a WAV         Transient  error_type="malformed_audio"
    slower than ``timeout``          Transient  error_type="timeout" (the process is killed)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import Mapping

from processor.backends.base import Audio, Utterance, finite, invalid, measure, transient
from processor.errors import Stage, Systemic

DEFAULT_WPM = 175
#: The rates espeak-ng accepts for ``-s``; a speed multiplier is clamped into it.
MIN_WPM, MAX_WPM = 80, 450
MIN_SPEED, MAX_SPEED = 0.25, 4.0
#: Request language code -> espeak-ng voices to try, in order (older releases say ``zh``).
LANGUAGE_VOICES: Mapping[str, tuple[str, ...]] = {
    "en": ("en",),
    "zh": ("cmn", "zh"),
    "ja": ("ja",),
    "ko": ("ko",),
}
MAX_MESSAGE = 300

_VOICE_LINE = re.compile(r"^\s*(\d+)\s+(\S+)\s+\S+\s+(\S+)\s+(\S+)(.*)$")
_OTHER_LANGUAGE = re.compile(r"\((\S+)\s+(\d+)\)")


@dataclasses.dataclass(frozen=True, slots=True)
class Voices:
    """What ``-v`` accepts, each spelling (lower-cased) mapped to the voice file to pass."""

    voices: Mapping[str, str]
    variants: Mapping[str, str]

    def resolve(self, name: str) -> str | None:
        """The voice file for a name (``en-us``, ``gmw/en``, ``en+f3``, ...), or ``None``."""
        base, plus, variant = name.partition("+")
        voice = self.voices.get(base.lower())
        if voice is None or not plus:
            return voice
        known_variant = self.variants.get(variant.lower())
        return None if known_variant is None else f"{voice}+{known_variant}"


def parse_voice_list(output: str) -> dict[str, str]:
    """Spellings ``-v`` accepts -> voice file, from a ``--voices`` listing.

    A voice is known by its language, its name, its file (``gmw/en-US``) and the file's last
    part, and by the other languages it speaks (``(en 3)``); where several voices share a
    language, the lowest priority number wins, as in espeak-ng's own choice. The file is what
    is passed on: espeak-ng matches it case-insensitively, whatever the spelling asked for.
    """
    best: dict[str, tuple[int, str]] = {}

    def offer(spelling: str, priority: int, file: str) -> None:
        key = spelling.lower()
        if key not in best or priority < best[key][0]:
            best[key] = (priority, file)

    for line in output.splitlines()[1:]:
        match = _VOICE_LINE.match(line)
        if match is None:
            continue
        priority, language, voice_name, file, rest = match.groups()
        for spelling in (voice_name, file, file.rpartition("/")[2]):
            offer(spelling, -1, file)  # a name or file means exactly this voice
        offer(language, int(priority), file)
        for other, other_priority in _OTHER_LANGUAGE.findall(rest):
            offer(other, int(other_priority), file)
    return {key: file for key, (_, file) in best.items()}


def detect_language(text: str) -> str:
    """A language code from the text's script: kana ja, Hangul ko, Han (only) zh, else en."""
    has_han = False
    for char in text:
        point = ord(char)
        if 0x3040 <= point <= 0x30FF or 0x31F0 <= point <= 0x31FF or 0xFF66 <= point <= 0xFF9F:
            return "ja"
        if 0xAC00 <= point <= 0xD7AF or 0x1100 <= point <= 0x11FF or 0x3130 <= point <= 0x318F:
            return "ko"
        if _is_han(point):
            has_han = True
    return "zh" if has_han else "en"


def _is_han(point: int) -> bool:
    return (
        0x4E00 <= point <= 0x9FFF
        or 0x3400 <= point <= 0x4DBF
        or 0xF900 <= point <= 0xFAFF
        or 0x20000 <= point <= 0x2FA1F
    )


def choose_voice(utterance: Utterance, voices: Voices) -> str:
    """The ``-v`` argument for an utterance, or ``InvalidInput`` naming what espeak-ng lacks."""
    preset = utterance.voice.preset
    if preset is not None:
        resolved = voices.resolve(preset)
        if resolved is None:
            raise invalid(f"espeak-ng has no voice {preset!r} (see `espeak-ng --voices`)")
        return resolved
    language = utterance.language.lower()
    detected = language == "auto"
    if detected:
        language = detect_language(utterance.text)
    # ``zh-TW`` falls back to ``zh``, ``en-AU`` to ``en``, as espeak-ng's own matching does.
    primary = language.partition("-")[0]
    for code in (language, primary):
        for candidate in LANGUAGE_VOICES.get(code, (code,)):
            resolved = voices.voices.get(candidate)
            if resolved is not None:
                return resolved
    origin = " (detected from the text's script)" if detected else ""
    raise invalid(f"espeak-ng has no voice for language {language!r}{origin}")


def prosody_args(params: Mapping[str, object]) -> list[str]:
    """``-s``/``-p`` from ``params.speed`` (a multiplier of 175 wpm) and ``params.pitch`` (0-99)."""
    args: list[str] = []
    speed = params.get("speed")
    if speed is not None:
        multiplier = finite(speed)
        if multiplier is None or not MIN_SPEED <= multiplier <= MAX_SPEED:
            raise invalid(f"params.speed must be a number from {MIN_SPEED} to {MAX_SPEED}")
        wpm = min(MAX_WPM, max(MIN_WPM, round(DEFAULT_WPM * multiplier)))
        args += ["-s", str(wpm)]
    pitch = params.get("pitch")
    if pitch is not None:
        if not isinstance(pitch, int) or isinstance(pitch, bool) or not 0 <= pitch <= 99:
            raise invalid("params.pitch must be an integer from 0 to 99 for espeak")
        args += ["-p", str(pitch)]
    return args


def check_utterance(utterance: Utterance) -> list[str]:
    """Reject at once what espeak-ng cannot do, before spawning anything; the prosody
    arguments of what it can."""
    if utterance.voice.description is not None or utterance.voice.reference is not None:
        raise invalid("espeak does not support voice design/cloning")
    return prosody_args(utterance.params)


def _short(data: bytes) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


class EspeakBackend:
    """espeak-ng as a subprocess per call; at most ``max_concurrency`` at once (None: no cap)."""

    def __init__(
        self,
        name: str = "espeak",
        binary: str = "espeak-ng",
        max_concurrency: int | None = None,
        *,
        timeout: float = 30.0,
    ) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.name = name
        self._binary = binary
        self._timeout = timeout
        self._slots = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        self._voices: Voices | None = None
        self._voices_lock = asyncio.Lock()
        self._running: set[asyncio.subprocess.Process] = set()

    def check(self, utterance: Utterance) -> None:
        check_utterance(utterance)

    async def synthesize(self, utterance: Utterance) -> Audio:
        prosody = check_utterance(utterance)
        args = ["-v", choose_voice(utterance, await self.voices()), *prosody]
        # NUL would end espeak-ng's text buffer early.
        text = utterance.text.replace("\x00", " ").encode("utf-8")
        if self._slots is None:
            return measure(await self._speak(args, text), silent="empty_audio")
        async with self._slots:
            return measure(await self._speak(args, text), silent="empty_audio")

    async def voices(self) -> Voices:
        """The voices espeak-ng has, listed at first use and then cached."""
        async with self._voices_lock:
            if self._voices is None:
                voices = parse_voice_list(await self._list("--voices"))
                variants = parse_voice_list(await self._list("--voices=variant"))
                self._voices = Voices(voices, _variant_names(variants))
            return self._voices

    async def aclose(self) -> None:
        for process in list(self._running):
            await _reap(process)

    async def _list(self, option: str) -> str:
        code, out, err = await self._run([option], b"")
        if code != 0:
            raise transient(f"espeak-ng {option} exited with {code}: {_short(err)}", "espeak_exit")
        return out.decode("utf-8", "replace")

    async def _speak(self, args: list[str], text: bytes) -> bytes:
        code, out, err = await self._run(["--stdout", "--stdin", *args], text)
        if code != 0:
            raise transient(f"espeak-ng exited with {code}: {_short(err)}", "espeak_exit")
        if not out:
            raise transient(f"espeak-ng produced no audio: {_short(err)}", "empty_audio")
        return out

    async def _run(self, args: list[str], stdin: bytes) -> tuple[int, bytes, bytes]:
        """Run the binary; the process is killed and reaped on timeout or cancellation."""
        try:
            process = await asyncio.create_subprocess_exec(
                self._binary,
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:  # missing or not executable: down for every request alike
            raise Systemic(
                f"cannot run {self._binary!r}: {exc.strerror or exc}; install it with "
                "infra/packages.sh",
                stage=Stage.SYNTHESIZE,
                error_type="espeak_missing",
            ) from exc
        self._running.add(process)
        try:
            async with asyncio.timeout(self._timeout):
                out, err = await process.communicate(stdin)
        except TimeoutError:
            raise transient(f"espeak-ng took longer than {self._timeout:g} s", "timeout") from None
        finally:
            self._running.discard(process)
            await _reap(process)
        assert process.returncode is not None  # communicate() waits for the exit
        return process.returncode, out, err


def _variant_names(listing: Mapping[str, str]) -> dict[str, str]:
    # Variant files are listed as ``!v/f3``; ``-v en+f3`` wants the part after the slash.
    names = {key: file.rpartition("/")[2] for key, file in listing.items()}
    names.pop("variant", None)
    return names


async def _reap(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    # Shielded so a second cancellation cannot leave a zombie behind.
    await asyncio.shield(process.wait())
