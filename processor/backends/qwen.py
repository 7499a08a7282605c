"""Qwen3-TTS served by vLLM-Omni: ``POST {base_url}/v1/audio/speech`` with its extensions.

Each vLLM-Omni server runs one checkpoint, and each Qwen3-TTS checkpoint does one task:
CustomVoice (named speakers), VoiceDesign (a described voice) or Base (cloning). The task is
chosen from the utterance's voice; a server loaded with another checkpoint answers 400
(Permanent).

    utterance            how this backend serves it
    text                 ``input``; empty or blank text is refused by the server (400, Permanent)
    no voice             ``task_type: "CustomVoice"``, ``voice`` = the constructor's
                         ``default_speaker``
    voice.preset         ``task_type: "CustomVoice"``, ``voice`` lower-cased (the server matches
                         lower-case names); one of Vivian, Serena, Uncle_Fu, Dylan, Eric, Ryan,
                         Aiden, Ono_Anna, Sohee (any case), else InvalidInput naming them
    voice.description    alone: ``task_type: "VoiceDesign"``, ``instructions``; with a preset:
                         CustomVoice with ``instructions`` as the style/emotion prompt. At most 500
                         characters (the server's limit), else InvalidInput
    voice.reference      ``task_type: "Base"``, ``ref_audio`` = the loaded reference WAV as a
                         ``data:audio/wav;base64,`` URI (1 to 30 s, the server's limits, else
                         InvalidInput), ``ref_text`` = ``reference.text``. Without a transcript
                         the server refuses Base unless ``x_vector_only_mode`` is set, so it is
                         set: the clone then takes the speaker embedding only (timbre, weaker
                         than in-context cloning) instead of failing
    reference + preset   InvalidInput: a clone prompt or a named speaker, not both
    or description       (Base takes no speaker and no instruct)
    language             ``language``: auto Auto, zh Chinese, en English, ja Japanese, ko Korean,
                         de German, fr French, ru Russian, pt Portuguese, es Spanish, it Italian
                         (region subtags such as ``pt-BR`` use the primary one); any other code
                         is InvalidInput listing these
    always               ``response_format: "wav"``, 24 kHz (the pipeline transcodes)
    seed                 ``seed``
    params.speed         ``speed`` (0.25 to 4, else InvalidInput)
    params.max_new_tokens ``max_new_tokens`` (1 to 4096, the server's range, else InvalidInput)
    params.temperature,  ``temperature``, ``top_p``, ``top_k``: passed through as top-level
    top_p, top_k         fields. vLLM-Omni has no such request fields and ignores them (its
                         sampling comes from the deploy config); servers that read them use them
    other params         ignored

Outcomes map onto the error tree:

    400 whose message says generation itself failed ("Speech generation failed: ...", "TTS
    model did not produce audio output", "No output generated", "Client disconnected")
                                     Transient (vLLM-Omni turns any exception inside generation,
                                     e.g. CUDA out of memory under load, into a 400)
    other 400 (empty input, bad voice/language/instructions, reference audio out of range,
    checkpoint/task mismatch)        Permanent
    other HTTP status (non-2xx)      processor.classify.error_for_status (5xx Transient, 401 and
                                     404 unknown model Systemic, ...)
    2xx, empty body                  Transient  error_type="empty_body"
    2xx, body cut short              Transient  error_type="truncated"
    2xx, wav that does not parse     Transient  error_type="malformed_audio"
    timeout (any phase, or the call's overall deadline)
                                     Transient  error_type="timeout"
    connect/other transport          Transient  error_type="connect"
    unusable utterance               InvalidInput, before any request is sent
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from types import MappingProxyType

import httpx

from processor.backends._http import HttpBackend, HttpClient, status_error
from processor.backends.base import (
    Audio,
    ReferenceAudio,
    Utterance,
    integer,
    invalid,
    measure,
    number,
    reference_audio,
    transient,
)
from processor.errors import VoxlineError

#: vLLM-Omni queues requests rather than refusing them: a long read timeout.
DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=5.0)
DEFAULT_MODEL = "Qwen/Qwen3-TTS"
SPEAKERS = ("Vivian", "Serena", "Uncle_Fu", "Dylan", "Eric", "Ryan", "Aiden", "Ono_Anna", "Sohee")
LANGUAGES: Mapping[str, str] = MappingProxyType(
    {
        "auto": "Auto",
        "zh": "Chinese",
        "en": "English",
        "ja": "Japanese",
        "ko": "Korean",
        "de": "German",
        "fr": "French",
        "ru": "Russian",
        "pt": "Portuguese",
        "es": "Spanish",
        "it": "Italian",
    }
)
MAX_INSTRUCTIONS = 500
MIN_SPEED, MAX_SPEED = 0.25, 4.0
MIN_NEW_TOKENS, MAX_NEW_TOKENS = 1, 4096
#: The server's limits on reference audio.
MIN_REFERENCE_MS, MAX_REFERENCE_MS = 1_000, 30_000
#: Messages of 400s that report a failure inside generation, not a bad request.
GENERATION_FAILURES = (
    "speech generation failed",
    "did not produce audio output",
    "no output generated",
    "client disconnected",
)

JsonBody = dict[str, object]
_KNOWN_SPEAKERS = frozenset(name.lower() for name in SPEAKERS)


def speech_body(utterance: Utterance, *, model: str, default_speaker: str) -> JsonBody:
    """The JSON body, but for ``ref_audio`` (see ``reference_data_uri``), which the caller adds
    from the loaded reference; ``InvalidInput`` for what Qwen3-TTS cannot take."""
    body: JsonBody = {"input": utterance.text}
    if model:
        body["model"] = model
    body.update(_task_fields(utterance, default_speaker))
    body["language"] = language_name(utterance.language)
    body["response_format"] = "wav"
    if utterance.seed is not None:
        body["seed"] = utterance.seed
    body.update(sampling_params(utterance.params))
    return body


def speaker_name(preset: str) -> str:
    """The server's (lower-case) name of a known speaker; ``InvalidInput`` otherwise."""
    if preset.lower() not in _KNOWN_SPEAKERS:
        raise invalid(
            f"qwen3-tts has no speaker {preset!r}; voice.preset must be one of "
            f"{', '.join(SPEAKERS)}"
        )
    return preset.lower()


def language_name(code: str) -> str:
    """Qwen3-TTS's language name for a request language code."""
    name = LANGUAGES.get(code.lower()) or LANGUAGES.get(code.lower().partition("-")[0])
    if name is None:
        supported = ", ".join(f"{key} ({value})" for key, value in LANGUAGES.items())
        raise invalid(f"qwen3-tts does not speak language {code!r}; supported: {supported}")
    return name


def sampling_params(params: Mapping[str, object]) -> JsonBody:
    """``speed`` and ``max_new_tokens`` checked against the server's ranges; sampling knobs
    type-checked and passed through."""
    out: JsonBody = {}
    if "speed" in params:
        speed = number(params["speed"], "params.speed")
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise invalid(f"params.speed must be from {MIN_SPEED} to {MAX_SPEED}")
        out["speed"] = speed
    if "max_new_tokens" in params:
        tokens = integer(params["max_new_tokens"], "params.max_new_tokens")
        if not MIN_NEW_TOKENS <= tokens <= MAX_NEW_TOKENS:
            raise invalid(
                f"params.max_new_tokens must be from {MIN_NEW_TOKENS} to {MAX_NEW_TOKENS}"
            )
        out["max_new_tokens"] = tokens
    for name in ("temperature", "top_p"):
        if name in params:
            out[name] = number(params[name], f"params.{name}")
    if "top_k" in params:
        out["top_k"] = integer(params["top_k"], "params.top_k")
    return out


def reference_data_uri(reference: ReferenceAudio) -> str:
    """The reference WAV as a data URI; ``InvalidInput`` outside the server's 1-30 s."""
    if not MIN_REFERENCE_MS <= reference.duration_ms <= MAX_REFERENCE_MS:
        raise invalid(
            f"reference audio {reference.uri} lasts {reference.duration_ms} ms; qwen3-tts takes "
            f"{MIN_REFERENCE_MS // 1000} to {MAX_REFERENCE_MS // 1000} s"
        )
    return "data:audio/wav;base64," + base64.b64encode(reference.wav).decode("ascii")


def error_for_response(status: int, message: str, retry_after: str | None) -> VoxlineError:
    """The error for a non-2xx answer: generation failures reported as 400 are Transient."""
    if status == 400 and any(marker in message.lower() for marker in GENERATION_FAILURES):
        return transient(f"HTTP {status}: {message}", f"http_{status}", status)
    return status_error(status, message, retry_after)


class QwenTTSBackend(HttpBackend):
    """One vLLM-Omni server running a Qwen3-TTS checkpoint, through one connection pool."""

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        api_key: str | None = None,
        model: str = DEFAULT_MODEL,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        max_connections: int = 8,
        default_speaker: str = "vivian",
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.name = name
        base = base_url.rstrip("/").removesuffix("/v1")
        self._url = f"{base}/v1/audio/speech"
        self._health_url = f"{base}/health"
        #: Sent as ``model``; vLLM answers 404 (Systemic) unless it is the served model's name.
        #: An empty string leaves the field out, which the server accepts as its own model.
        self._model = model
        try:
            self._default_speaker = speaker_name(default_speaker)
        except VoxlineError as exc:
            raise ValueError(f"default_speaker: {exc.message}") from None
        self._http = HttpClient(
            timeout=timeout,
            max_connections=max_connections,
            api_key=api_key,
            client=client,
            classify=error_for_response,
        )

    async def synthesize(self, utterance: Utterance) -> Audio:
        body = self._body(utterance)
        if utterance.voice.reference is not None:
            body["ref_audio"] = reference_data_uri(reference_audio(utterance))
        status, data = await self._http.post(self._url, json=body)
        return measure(data, http_status=status)

    async def ready(self) -> bool:
        """Whether vLLM's ``GET /health`` answers 200 (the engine is up)."""
        response = await self._http.get(self._health_url)
        return response is not None and response.status_code == 200

    def _body(self, utterance: Utterance) -> JsonBody:
        return speech_body(utterance, model=self._model, default_speaker=self._default_speaker)


def _task_fields(utterance: Utterance, default_speaker: str) -> JsonBody:
    voice = utterance.voice
    if voice.reference is not None:
        if voice.preset is not None or voice.description is not None:
            raise invalid(
                "qwen3-tts clones from voice.reference alone (task Base); drop voice.preset "
                "and voice.description"
            )
        fields: JsonBody = {"task_type": "Base"}
        if voice.reference.text is not None and voice.reference.text.strip():
            fields["ref_text"] = voice.reference.text
        else:
            fields["x_vector_only_mode"] = True
        return fields
    if voice.description is not None and len(voice.description) > MAX_INSTRUCTIONS:
        raise invalid(
            f"voice.description has {len(voice.description)} characters; qwen3-tts takes at "
            f"most {MAX_INSTRUCTIONS}"
        )
    if voice.preset is None and voice.description is not None:
        return {"task_type": "VoiceDesign", "instructions": voice.description}
    fields = {
        "task_type": "CustomVoice",
        "voice": default_speaker if voice.preset is None else speaker_name(voice.preset),
    }
    if voice.description is not None:
        fields["instructions"] = voice.description
    return fields
