"""OpenAI-compatible speech servers: ``POST {base_url}/v1/audio/speech``.

Covers OpenAI itself, Kokoro-FastAPI, Speaches, LocalAI and vLLM-Omni (Qwen3-TTS).

    utterance            how this backend serves it
    text                 ``input``
    no voice             ``voice`` = the constructor's ``default_voice``
    voice.preset         ``voice``
    voice.description    ``instructions``
    voice.reference      InvalidInput: the API cannot clone
    language, seed       not sent
    params.speed         ``speed`` (a finite number, else InvalidInput; the range is the
                         server's to judge); other params ignored
    always               ``response_format: "wav"`` (the pipeline transcodes)

Outcomes map onto the error tree as follows:

    HTTP status (non-2xx)        processor.classify.error_for_status (429/5xx Transient, ...)
    2xx, empty body              Transient  error_type="empty_body"
    2xx, body cut short          Transient  error_type="truncated"
    2xx, wav that does not parse Transient  error_type="malformed_audio"
    timeout (any phase, or the   Transient  error_type="timeout"
    call's overall deadline)
    connect/other transport      Transient  error_type="connect"  (runs of these: server down)
    an unusable utterance        InvalidInput, before any request is sent
"""

from __future__ import annotations

import httpx

from processor.backends._http import DEFAULT_TIMEOUT, HttpBackend, HttpClient
from processor.backends.base import Audio, Utterance, invalid, measure, number


def speech_body(utterance: Utterance, *, model: str, default_voice: str) -> dict[str, object]:
    """The JSON body for an utterance; ``InvalidInput`` for what the API cannot express."""
    voice = utterance.voice
    if voice.reference is not None:
        raise invalid("openai-compatible backend cannot clone (voice.reference is set)")
    body: dict[str, object] = {
        "model": model,
        "input": utterance.text,
        "voice": voice.preset or default_voice,
        "response_format": "wav",
    }
    if voice.description is not None:
        body["instructions"] = voice.description
    if "speed" in utterance.params:
        body["speed"] = number(utterance.params["speed"], "params.speed")
    return body


class OpenAIBackend(HttpBackend):
    """One OpenAI-compatible speech server, through one shared connection pool."""

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        api_key: str | None = None,
        model: str = "tts-1",
        default_voice: str = "alloy",
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        max_connections: int = 16,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.name = name
        base = base_url.rstrip("/")
        # Accept a base URL given with or without the API's /v1 prefix.
        self._url = f"{base}/audio/speech" if base.endswith("/v1") else f"{base}/v1/audio/speech"
        self._model = model
        self._default_voice = default_voice
        self._http = HttpClient(
            timeout=timeout, max_connections=max_connections, api_key=api_key, client=client
        )

    async def synthesize(self, utterance: Utterance) -> Audio:
        status, data = await self._http.post(self._url, json=self._body(utterance))
        return measure(data, http_status=status)

    def _body(self, utterance: Utterance) -> dict[str, object]:
        return speech_body(utterance, model=self._model, default_voice=self._default_voice)
