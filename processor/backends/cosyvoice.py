"""CosyVoice's FastAPI server (``runtime/python/fastapi/server.py``, default port 50000).

Every parameter is a form field (multipart when the prompt WAV is sent); the answer is a chunked
body of raw signed 16-bit little-endian mono PCM with no header and no rate, so the rate comes
from ``version`` (22050 Hz for CosyVoice-300M, 24000 Hz for CosyVoice2/3) and the PCM is wrapped
into WAV here. The route is chosen from the utterance's voice:

    utterance                      v1 (CosyVoice-300M)            v2, v3 (CosyVoice2, CosyVoice3)
    voice.preset                   /inference_sft spk_id          /inference_sft spk_id
    no voice                       /inference_sft spk_id=default_speaker; InvalidInput without one
    voice.reference + its text     /inference_zero_shot prompt_text + file prompt_wav
    voice.reference, no text       /inference_cross_lingual file prompt_wav
    voice.description              /inference_instruct spk_id =   /inference_instruct2 + file
                                   preset or default_speaker      prompt_wav = voice.reference
                                   (InvalidInput without one)     (InvalidInput without one)
    preset and reference together  InvalidInput: a speaker id or a clone prompt, not both
    language                       v1 cross-lingual: a <|zh|> <|en|> <|jp|> <|yue|> <|ko|> tag
                                   before the text; otherwise ignored (the model detects it)
    always                         WAV at the model's rate (the pipeline transcodes)
    seed, params (speed, ...)      ignored: the server has no seed or speed field

Prompt markup (as upstream ``example.py`` writes it): instruct texts end in ``<|endofprompt|>``;
CosyVoice3's LLM asserts that the marker is in its input (a 200 whose body then breaks off), so
for v3 the zero-shot ``prompt_text``, or else ``tts_text``, starts with ``You are a helpful
assistant.<|endofprompt|>`` and an instruct reads ``You are a helpful assistant.
{description}<|endofprompt|>``. Text that already holds the marker is sent unchanged.

Reference audio comes loaded with the utterance and must be at least 16 kHz and at most 30 s
(the server's limits, checked here before sending). Outcomes map onto the error tree:

    HTTP status (non-2xx)          processor.classify.error_for_status (422 missing field
                                   Permanent, 500 Transient)
    2xx, no body                   Transient  error_type="empty_body"
    2xx, body cut off or odd bytes Transient  error_type="truncated_body" (how the server fails
                                   inside synthesis: unknown spk_id, overload, OOM)
    timeout (any phase, or the     Transient  error_type="timeout"
    call's overall deadline)
    connect/other transport        Transient  error_type="connect"
    a voice the version cannot do  InvalidInput, before any request is sent
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

import httpx

from processor.audio import pcm_to_wav, wav_info
from processor.backends._http import DEFAULT_TIMEOUT, HttpClient
from processor.backends.base import (
    Audio,
    ReferenceAudio,
    Utterance,
    invalid,
    reference_audio,
    transient,
)

#: The model's output rate per CosyVoice version; the response does not say.
NATIVE_RATES: Mapping[int, int] = {1: 22050, 2: 24000, 3: 24000}
END_OF_PROMPT = "<|endofprompt|>"
V3_SYSTEM = "You are a helpful assistant."
V3_PREFIX = V3_SYSTEM + END_OF_PROMPT
#: The server's limits on the prompt audio.
MIN_PROMPT_RATE = 16000
MAX_PROMPT_MS = 30_000
#: CosyVoice-300M's language tags (cross-lingual mode), by request language.
V1_LANGUAGE_TAGS: Mapping[str, str] = {
    "zh": "<|zh|>",
    "en": "<|en|>",
    "ja": "<|jp|>",
    "yue": "<|yue|>",
    "ko": "<|ko|>",
}

Route = Literal[
    "inference_sft",
    "inference_zero_shot",
    "inference_cross_lingual",
    "inference_instruct",
    "inference_instruct2",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Call:
    """One call to the server: the route, its form fields and the reference to send, if any."""

    route: Route
    fields: Mapping[str, str]
    #: ``s3://`` URI of the reference audio to send as ``prompt_wav``.
    prompt_uri: str | None = None


def plan_call(utterance: Utterance, *, version: int, default_speaker: str | None = None) -> Call:
    """The route and form fields for an utterance; ``InvalidInput`` for a voice it cannot do."""
    voice = utterance.voice
    if voice.preset is not None and voice.reference is not None:
        raise invalid(
            "cosyvoice takes a speaker id (voice.preset) or a clone prompt (voice.reference), "
            "not both"
        )
    if voice.description is not None:
        return _instruct(utterance, version, default_speaker)
    if voice.reference is not None:
        return _clone(utterance, version)
    speaker = voice.preset or default_speaker
    if speaker is None:
        raise invalid("cosyvoice needs voice.preset (a speaker id) or a reference")
    text = _v3_text(utterance.text, version)
    return Call("inference_sft", {"tts_text": text, "spk_id": speaker})


def _instruct(utterance: Utterance, version: int, default_speaker: str | None) -> Call:
    description = utterance.voice.description or ""
    reference = utterance.voice.reference
    if version == 1:
        speaker = utterance.voice.preset or default_speaker
        if speaker is None:
            raise invalid(
                "cosyvoice v1 instruct (voice.description) needs a preset speaker: set "
                "voice.preset to a speaker id"
            )
        if reference is not None:
            raise invalid("cosyvoice v1 instruct cannot take voice.reference; use voice.preset")
        fields = {
            "tts_text": utterance.text,
            "spk_id": speaker,
            "instruct_text": _instruction(description, version),
        }
        return Call("inference_instruct", fields)
    if reference is None:
        raise invalid(
            f"cosyvoice v{version} instruct (voice.description) needs reference audio: set "
            "voice.reference to the voice to restyle"
        )
    fields = {"tts_text": utterance.text, "instruct_text": _instruction(description, version)}
    return Call("inference_instruct2", fields, reference.audio_uri)


def _clone(utterance: Utterance, version: int) -> Call:
    reference = utterance.voice.reference
    assert reference is not None
    if reference.text:  # the server takes an empty form field as missing
        prompt_text = _v3_text(reference.text, version)
        fields = {"tts_text": utterance.text, "prompt_text": prompt_text}
        return Call("inference_zero_shot", fields, reference.audio_uri)
    text = utterance.text
    if version == 1:
        text = _language_tag(text, utterance.language)
    fields = {"tts_text": _v3_text(text, version)}
    return Call("inference_cross_lingual", fields, reference.audio_uri)


def _v3_text(text: str, version: int) -> str:
    """CosyVoice3 wants the marker somewhere in its input; everything before it is not spoken."""
    if version != 3 or END_OF_PROMPT in text:
        return text
    return V3_PREFIX + text


def _instruction(description: str, version: int) -> str:
    if END_OF_PROMPT in description:
        return description
    if version == 3:
        return f"{V3_SYSTEM} {description}{END_OF_PROMPT}"
    return description + END_OF_PROMPT


def _language_tag(text: str, language: str) -> str:
    tag = V1_LANGUAGE_TAGS.get(language.split("-")[0].lower())
    if tag is None or text.lstrip().startswith("<|"):
        return text
    return tag + text


def check_prompt(audio: ReferenceAudio) -> None:
    """``InvalidInput`` for reference audio the server would refuse mid-synthesis."""
    if audio.sample_rate < MIN_PROMPT_RATE:
        raise invalid(
            f"reference audio {audio.uri} is {audio.sample_rate} Hz; cosyvoice needs at least "
            f"{MIN_PROMPT_RATE} Hz"
        )
    if audio.duration_ms > MAX_PROMPT_MS:
        raise invalid(
            f"reference audio {audio.uri} is {audio.duration_ms / 1000:.1f} s long; cosyvoice "
            f"takes at most {MAX_PROMPT_MS // 1000} s"
        )


def wrap_pcm(pcm: bytes, sample_rate: int, *, http_status: int = 200) -> Audio:
    """WAV audio from a 2xx body of raw PCM, or ``Transient`` when the body is not whole."""
    if not pcm:
        raise transient("empty body: the server sent no audio", "empty_body", http_status)
    try:
        wav = pcm_to_wav(pcm, sample_rate)
    except ValueError as exc:
        raise transient(f"truncated body: {exc}", "truncated_body", http_status) from exc
    info = wav_info(wav)
    return Audio(wav, "wav", info.sample_rate, info.channels, info.duration_ms)


class CosyVoiceBackend:
    """One CosyVoice FastAPI server, through one shared connection pool."""

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        version: Literal[1, 2, 3] = 2,
        sample_rate: int | None = None,
        default_speaker: str | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        max_connections: int = 16,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if version not in NATIVE_RATES:
            raise ValueError(f"cosyvoice version must be 1, 2 or 3, not {version!r}")
        if sample_rate is not None and sample_rate < 1:
            raise ValueError(f"sample_rate must be positive, not {sample_rate}")
        self.name = name
        self.version = version
        self.sample_rate = NATIVE_RATES[version] if sample_rate is None else sample_rate
        self._base = base_url.rstrip("/")
        self._default_speaker = default_speaker
        # The server fails inside synthesis by closing the socket after the headers.
        self._http = HttpClient(
            timeout=timeout,
            max_connections=max_connections,
            client=client,
            truncated="truncated_body",
        )

    def __repr__(self) -> str:
        return (
            f"CosyVoiceBackend(name={self.name!r}, url={self._base!r}, version={self.version}, "
            f"sample_rate={self.sample_rate})"
        )

    def check(self, utterance: Utterance) -> None:
        self._plan(utterance)

    async def synthesize(self, utterance: Utterance) -> Audio:
        call = self._plan(utterance)
        files = None
        if call.prompt_uri is not None:
            prompt = reference_audio(utterance)
            check_prompt(prompt)
            files = {"prompt_wav": ("prompt.wav", prompt.wav, "audio/wav")}
        url = f"{self._base}/{call.route}"
        status, pcm = await self._http.post(url, data=dict(call.fields), files=files)
        return wrap_pcm(pcm, self.sample_rate, http_status=status)

    async def aclose(self) -> None:
        await self._http.aclose()

    def _plan(self, utterance: Utterance) -> Call:
        return plan_call(utterance, version=self.version, default_speaker=self._default_speaker)
