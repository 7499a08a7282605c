"""Fish Speech 1.5 / OpenAudio S1, S2 (``tools/api_server.py``): ``POST {base_url}/v1/tts``.

The body is a ``ServeTTSRequest``: JSON, or ``application/msgpack`` when it carries reference
audio (raw bytes rather than base64). The answer is the whole WAV file, 44.1 kHz mono.

    request feature      how this backend serves it
    text                 ``text``; over the server's ``--max-text-length`` it answers 400
                         (Permanent); a text too long for the model's prompt is a 500
                         "Prompt is too long" (Permanent too: retrying cannot shorten it)
    no voice             the model's default voice (no ``reference_id``, no ``references``)
    voice.preset         ``reference_id`` (a folder under the server's ``references/``) with
                         ``use_memory_cache: "on"``: its encoding is cached per id. An unknown id
                         silently falls back to the default voice (the server does not say)
    voice.reference      ``references: [{audio, text}]`` in a msgpack body: the WAV from the
                         ``ReferenceLoader`` and ``reference.text``, which Fish requires
                         (InvalidInput without it); ``use_memory_cache: "off"``, because that
                         cache is keyed by audio hash, never evicts, and in 1.5 mis-reads a hit
    voice.description    InvalidInput: Fish Speech has no voice design
    preset + reference   InvalidInput: a reference id or reference audio, not both
    language             not sent: the model reads the language from the text
    format, sample_rate  not sent per request: always ``format: "wav"`` at the model's rate
                         (the pipeline transcodes; the completion event reports the real rate)
    seed                 ``seed``
    params               ``temperature``, ``top_p``, ``repetition_penalty`` (numbers) and
                         ``max_new_tokens``, ``chunk_length`` (integers; ``chunk_length`` defaults
                         to the constructor's); the server checks ranges (422, Permanent).
                         Other knobs (``speed``, ``top_k``, ...) are ignored: the self-hosted
                         server has no such fields
    always               ``normalize: true``, ``streaming: false``

Outcomes map onto the error tree:

    HTTP status (non-2xx)            processor.classify.error_for_status (401 Systemic, 400/422
                                     Permanent, 429/500/503 Transient, Retry-After kept) except:
    500 "Prompt is too long"         Permanent
    402 (hosted: out of credits)     Systemic
    2xx, empty body                  Transient  error_type="empty_body"
    2xx, body cut short              Transient  error_type="truncated"
    2xx, wav that does not parse     Transient  error_type="malformed_audio"
    timeout (any phase)              Transient  error_type="timeout"
    connect/other transport          Transient  error_type="connect"
    unusable request                 InvalidInput, before any request is sent

Error bodies are ``{"statusCode", "message", "error"}`` (``message`` a list of pydantic errors
for a 422), or ``{"message", "status"}`` from hosted Fish Audio; both become short messages.
The API key is sent as a Bearer token and appears in no message or repr.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping

import httpx
import msgpack  # type: ignore[import-untyped]  # no stubs or py.typed

from processor.backends.base import Audio, ReferenceAudio, ReferenceLoader
from processor.backends.openai import error_message as openai_error_message
from processor.backends.openai import measure, read_body
from processor.classify import error_for_status
from processor.errors import InvalidInput, Permanent, Stage, Systemic, Transient, VoxlineError
from processor.request import Request

#: Fish runs one generation at a time and queues the rest: a long read timeout.
DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=5.0)
DEFAULT_CHUNK_LENGTH = 200
FLOAT_PARAMS = ("temperature", "top_p", "repetition_penalty")
INT_PARAMS = ("max_new_tokens", "chunk_length")
#: A 500 with this message is the input's fault: the prompt does not fit the model.
PROMPT_TOO_LONG = "prompt is too long"
MAX_MESSAGE = 300

JsonBody = dict[str, object]


def check_request(request: Request, *, can_load_references: bool) -> None:
    """Reject at once what Fish Speech cannot do, before any I/O."""
    voice = request.voice
    if voice.description is not None:
        raise _invalid("fish speech has no voice design; use a reference_id or reference audio")
    if voice.reference is None:
        return
    if voice.preset is not None:
        raise _invalid(
            "fish speech takes a reference_id (voice.preset) or reference audio "
            "(voice.reference), not both"
        )
    if voice.reference.text is None or not voice.reference.text.strip():
        raise _invalid(
            "fish speech needs the transcript of the reference audio (voice.reference.text)"
        )
    if not can_load_references:
        raise _invalid(
            f"this backend has no reference loader configured: cannot read "
            f"{voice.reference.audio_uri}"
        )


def tts_body(request: Request, *, chunk_length: int) -> JsonBody:
    """The ``ServeTTSRequest`` fields for a checked request, all but reference audio."""
    body: JsonBody = {
        "text": request.text,
        "format": "wav",
        "chunk_length": chunk_length,
        "normalize": True,
        "streaming": False,
        "use_memory_cache": "off",
    }
    if request.voice.preset is not None:
        body["reference_id"] = request.voice.preset
        body["use_memory_cache"] = "on"
    if request.seed is not None:
        body["seed"] = request.seed
    body.update(sampling_params(request.params))
    return body


def with_reference(body: JsonBody, reference: ReferenceAudio, transcript: str) -> JsonBody:
    """``body`` carrying one inline reference (its WAV bytes and transcript)."""
    return {**body, "references": [{"audio": reference.wav, "text": transcript}]}


def sampling_params(params: Mapping[str, object]) -> JsonBody:
    """The knobs Fish knows, type-checked; ranges are the server's to judge."""
    out: JsonBody = {}
    for name in FLOAT_PARAMS:
        if name in params:
            out[name] = _number(params[name], f"params.{name}")
    for name in INT_PARAMS:
        if name in params:
            out[name] = _integer(params[name], f"params.{name}")
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
        return openai_error_message(body)
    if isinstance(parsed, list):  # kui's 422: a bare list of pydantic errors
        return _validation_message(parsed)
    if (
        isinstance(parsed, dict)
        and "message" in parsed
        and not isinstance(parsed.get("error"), dict)
    ):
        message = parsed["message"]
        if isinstance(message, list):
            return _validation_message(message)
        if message is None:  # e.g. 415: the HTTP reason phrase is all there is
            return _clip(str(parsed.get("error") or ""))
        return _clip(message if isinstance(message, str) else json.dumps(message))
    return openai_error_message(body)


def error_for_response(status: int, message: str, retry_after: str | None) -> VoxlineError:
    """The error for a non-2xx answer: the shared classifier, with Fish's exceptions."""
    error = error_for_status(status, message, stage=Stage.SYNTHESIZE, retry_after=retry_after)
    if error is None:  # pragma: no cover - callers pass non-2xx statuses only
        error = Transient(f"unexpected HTTP {status}", stage=Stage.SYNTHESIZE, http_status=status)
    if status == 500 and PROMPT_TOO_LONG in message.lower():
        return _reclass(Permanent, error)
    if status == 402:
        return _reclass(Systemic, error)
    return error


class FishSpeechBackend:
    """One Fish Speech API server, through one shared connection pool."""

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        max_connections: int = 4,
        references: ReferenceLoader | None = None,
        chunk_length: int = DEFAULT_CHUNK_LENGTH,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.name = name
        base = base_url.rstrip("/").removesuffix("/v1")
        self._url = f"{base}/v1/tts"
        self._health_url = f"{base}/v1/health"
        self._references = references
        self._chunk_length = chunk_length
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    def __repr__(self) -> str:  # never the key
        return f"FishSpeechBackend(name={self.name!r}, url={self._url!r})"

    async def synthesize(self, request: Request) -> Audio:
        check_request(request, can_load_references=self._references is not None)
        body = tts_body(request, chunk_length=self._chunk_length)
        reference = request.voice.reference
        if reference is not None and reference.text is not None and self._references is not None:
            loaded = await self._references.load(reference.audio_uri)
            body = with_reference(body, loaded, reference.text)
        status, data = await self._post(*encode_body(body))
        # Fish is asked for wav whatever the request's format: measure it as wav.
        return measure(
            data, dataclasses.replace(request, format="wav"), pcm_rate=0, http_status=status
        )

    async def ready(self) -> bool:
        """Whether ``GET /v1/health`` answers ``{"status": "ok"}`` (it waits behind a running
        generation, as every route of the server does)."""
        try:
            response = await self._client.get(self._health_url, headers=self._headers)
            answer: object = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return False
        return isinstance(answer, dict) and answer.get("status") == "ok"

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def _post(self, content: bytes, content_type: str) -> tuple[int, bytes]:
        """Status and whole body of a 2xx answer; raises for everything else."""
        headers = {**self._headers, "Content-Type": content_type}
        try:
            async with self._client.stream(
                "POST", self._url, content=content, headers=headers
            ) as response:
                data = await read_body(response)
        except httpx.TimeoutException as exc:
            raise _transient(f"timed out: {type(exc).__name__}", "timeout") from exc
        except httpx.TransportError as exc:
            raise _transient(
                f"cannot reach {self._url}: {exc or type(exc).__name__}", "connect"
            ) from exc
        if response.is_success:
            return response.status_code, data
        raise error_for_response(
            response.status_code, error_message(data), response.headers.get("Retry-After")
        )


def _validation_message(errors: list[object]) -> str:
    # The openai parser already renders FastAPI-style {"detail": [{loc, msg}]}.
    return openai_error_message(json.dumps({"detail": errors}, default=str).encode())


def _number(value: object, field: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            number = math.inf
        if math.isfinite(number):
            return number
    raise _invalid(f"{field} must be a finite number")


def _integer(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"{field} must be an integer")
    if isinstance(value, float) and not value.is_integer():
        raise _invalid(f"{field} must be an integer")
    return int(value)


def _reclass(kind: type[VoxlineError], error: VoxlineError) -> VoxlineError:
    return kind(
        error.message,
        stage=error.stage,
        http_status=error.http_status,
        retry_after=error.retry_after,
        error_type=error.error_type,
    )


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _invalid(message: str) -> InvalidInput:
    return InvalidInput(message, stage=Stage.SYNTHESIZE)


def _transient(message: str, error_type: str, http_status: int | None = None) -> Transient:
    return Transient(
        message, stage=Stage.SYNTHESIZE, http_status=http_status, error_type=error_type
    )
