"""Fish Speech 1.5 / OpenAudio S1, S2 (``tools/api_server.py``): ``POST {base_url}/v1/tts``.

The body is a ``ServeTTSRequest``: JSON, or ``application/msgpack`` when it carries reference
audio (raw bytes rather than base64). The answer is the whole WAV file, 44.1 kHz mono.

    utterance            how this backend serves it
    text                 ``text``; over the server's ``--max-text-length`` it answers 400
                         (Permanent); a text too long for the model's prompt is a 500
                         "Prompt is too long" (Permanent too: retrying cannot shorten it)
    no voice             the model's default voice (no ``reference_id``, no ``references``)
    voice.preset         ``reference_id`` (a folder under the server's ``references/``) with
                         ``use_memory_cache: "on"``: its encoding is cached per id. An unknown id
                         silently falls back to the default voice (the server does not say)
    voice.reference      ``references: [{audio, text}]`` in a msgpack body: the loaded reference
                         WAV and ``reference.text``, which Fish requires
                         (InvalidInput without it); ``use_memory_cache: "off"``, because that
                         cache is keyed by audio hash, never evicts, and in 1.5 mis-reads a hit
    voice.description    InvalidInput: Fish Speech has no voice design
    preset + reference   InvalidInput: a reference id or reference audio, not both
    language             not sent: the model reads the language from the text
    seed                 ``seed``
    params               ``temperature``, ``top_p``, ``repetition_penalty`` (numbers) and
                         ``max_new_tokens``, ``chunk_length`` (integers; ``chunk_length`` defaults
                         to the constructor's); the server checks ranges (422, Permanent).
                         Other knobs (``speed``, ``top_k``, ...) are ignored: the self-hosted
                         server has no such fields
    always               ``format: "wav"`` at the model's rate (the pipeline transcodes),
                         ``normalize: true``, ``streaming: false``

Outcomes map onto the error tree:

    HTTP status (non-2xx)            processor.classify.error_for_status (401 Systemic, 400/422
                                     Permanent, 429/500/503 Transient, Retry-After kept) except:
    500 "Prompt is too long"         Permanent
    402 (hosted: out of credits)     Systemic
    2xx, empty body                  Transient  error_type="empty_body"
    2xx, body cut short              Transient  error_type="truncated"
    2xx, wav that does not parse     Transient  error_type="malformed_audio"
    timeout (any phase, or the call's overall deadline)
                                     Transient  error_type="timeout"
    connect/other transport          Transient  error_type="connect"
    unusable utterance               InvalidInput, before any request is sent

Error bodies are ``{"statusCode", "message", "error"}`` (``message`` a list of pydantic errors
for a 422), or ``{"message", "status"}`` from hosted Fish Audio; both become short messages.
The API key is sent as a Bearer token and appears in no message or repr.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import httpx
import msgpack  # type: ignore[import-untyped]  # no stubs or py.typed

from processor.backends._http import (
    HttpBackend,
    HttpClient,
    clip,
    status_error,
    validation_message,
)
from processor.backends._http import error_message as generic_error_message
from processor.backends.base import (
    Audio,
    Utterance,
    integer,
    invalid,
    measure,
    number,
    reference_audio,
)
from processor.errors import Permanent, Systemic, VoxlineError

#: Fish runs one generation at a time and queues the rest: a long read timeout.
DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=5.0)
DEFAULT_CHUNK_LENGTH = 200
FLOAT_PARAMS = ("temperature", "top_p", "repetition_penalty")
INT_PARAMS = ("max_new_tokens", "chunk_length")
#: A 500 with this message is the input's fault: the prompt does not fit the model.
PROMPT_TOO_LONG = "prompt is too long"

JsonBody = dict[str, object]


def check_voice(utterance: Utterance) -> None:
    """Reject at once the voices Fish Speech cannot do, before any I/O."""
    voice = utterance.voice
    if voice.description is not None:
        raise invalid("fish speech has no voice design; use a reference_id or reference audio")
    if voice.reference is None:
        return
    if voice.preset is not None:
        raise invalid(
            "fish speech takes a reference_id (voice.preset) or reference audio "
            "(voice.reference), not both"
        )
    if voice.reference.text is None or not voice.reference.text.strip():
        raise invalid(
            "fish speech needs the transcript of the reference audio (voice.reference.text)"
        )


def tts_body(utterance: Utterance, *, chunk_length: int) -> JsonBody:
    """The ``ServeTTSRequest`` fields for a checked utterance, all but reference audio."""
    body: JsonBody = {
        "text": utterance.text,
        "format": "wav",
        "chunk_length": chunk_length,
        "normalize": True,
        "streaming": False,
        "use_memory_cache": "off",
    }
    if utterance.voice.preset is not None:
        body["reference_id"] = utterance.voice.preset
        body["use_memory_cache"] = "on"
    if utterance.seed is not None:
        body["seed"] = utterance.seed
    body.update(sampling_params(utterance.params))
    return body


def with_reference(body: JsonBody, wav: bytes, transcript: str) -> JsonBody:
    """``body`` carrying one inline reference (its WAV bytes and transcript)."""
    return {**body, "references": [{"audio": wav, "text": transcript}]}


def sampling_params(params: Mapping[str, object]) -> JsonBody:
    """The knobs Fish knows, type-checked; ranges are the server's to judge."""
    out: JsonBody = {}
    for name in FLOAT_PARAMS:
        if name in params:
            out[name] = number(params[name], f"params.{name}")
    for name in INT_PARAMS:
        if name in params:
            out[name] = integer(params[name], f"params.{name}")
    return out


def encode_body(body: JsonBody) -> tuple[bytes, str]:
    """Content and Content-Type: msgpack when the body carries audio bytes, JSON otherwise."""
    if "references" in body:
        packed: bytes = msgpack.packb(body, use_bin_type=True)
        return packed, "application/msgpack"
    return json.dumps(body, ensure_ascii=False).encode(), "application/json"


def error_message(body: bytes) -> str:
    """A short message from a Fish error body (self-hosted, hosted, or a 422 list)."""
    try:
        parsed: object = json.loads(body)
    except ValueError:
        return generic_error_message(body)
    if isinstance(parsed, list):  # kui's 422: a bare list of pydantic errors
        return validation_message(parsed)
    if (
        isinstance(parsed, dict)
        and "message" in parsed
        and not isinstance(parsed.get("error"), dict)
    ):
        message = parsed["message"]
        if isinstance(message, list):
            return validation_message(message)
        if message is None:  # e.g. 415: the HTTP reason phrase is all there is
            return clip(str(parsed.get("error") or ""))
        return clip(message if isinstance(message, str) else json.dumps(message))
    return generic_error_message(body)


def error_for_response(status: int, message: str, retry_after: str | None) -> VoxlineError:
    """The error for a non-2xx answer: the shared classifier, with Fish's exceptions."""
    error = status_error(status, message, retry_after)
    if status == 500 and PROMPT_TOO_LONG in message.lower():
        return _reclass(Permanent, error)
    if status == 402:
        return _reclass(Systemic, error)
    return error


class FishSpeechBackend(HttpBackend):
    """One Fish Speech API server, through one shared connection pool."""

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        max_connections: int = 4,
        chunk_length: int = DEFAULT_CHUNK_LENGTH,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.name = name
        base = base_url.rstrip("/").removesuffix("/v1")
        self._url = f"{base}/v1/tts"
        self._health_url = f"{base}/v1/health"
        self._chunk_length = chunk_length
        self._http = HttpClient(
            timeout=timeout,
            max_connections=max_connections,
            api_key=api_key,
            client=client,
            describe=error_message,
            classify=error_for_response,
        )

    async def synthesize(self, utterance: Utterance) -> Audio:
        body = self._body(utterance)
        reference = utterance.voice.reference
        if reference is not None:
            body = with_reference(body, reference_audio(utterance).wav, reference.text or "")
        content, content_type = encode_body(body)
        status, data = await self._http.post(
            self._url, content=content, headers={"Content-Type": content_type}
        )
        return measure(data, http_status=status)

    async def ready(self) -> bool:
        """Whether ``GET /v1/health`` answers ``{"status": "ok"}`` (it waits behind a running
        generation, as every route of the server does)."""
        response = await self._http.get(self._health_url)
        if response is None or response.status_code != 200:
            return False
        try:
            answer: object = response.json()
        except ValueError:
            return False
        return isinstance(answer, dict) and answer.get("status") == "ok"

    def _body(self, utterance: Utterance) -> JsonBody:
        check_voice(utterance)
        return tts_body(utterance, chunk_length=self._chunk_length)


def _reclass(kind: type[VoxlineError], error: VoxlineError) -> VoxlineError:
    return kind(
        error.message,
        stage=error.stage,
        http_status=error.http_status,
        retry_after=error.retry_after,
        error_type=error.error_type,
    )
