"""OpenAI-compatible speech servers: ``POST {base_url}/v1/audio/speech``.

Covers OpenAI itself, Kokoro-FastAPI, Speaches, LocalAI and vLLM-Omni (Qwen3-TTS). Outcomes map
onto the error tree as follows:

    HTTP status (non-2xx)        processor.classify.error_for_status (429/5xx Transient, ...)
    2xx, empty body              Transient  error_type="empty_body"
    2xx, body cut short          Transient  error_type="truncated"
    2xx, wav that does not parse Transient  error_type="malformed_audio"
    timeout (any phase)          Transient  error_type="timeout"
    connect/other transport      Transient  error_type="connect"  (runs of these: server down)
    reference audio, mp3/flac/.. InvalidInput, before any request is sent

Only wav and pcm are accepted for now: completion events report measured audio properties,
and compressed formats cannot be measured until transcoding arrives.
"""

from __future__ import annotations

import json
import math

import httpx

from processor.audio import fix_streamed_wav, pcm_to_wav, wav_info
from processor.backends.base import Audio
from processor.classify import error_for_status
from processor.errors import InvalidInput, Stage, Transient
from processor.request import Request

#: Synthesis is slow: a long read timeout, a short connect timeout.
DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=5.0)
#: OpenAI documents ``pcm`` as 24 kHz mono signed 16-bit little-endian.
DEFAULT_PCM_RATE = 24000
MEASURABLE_FORMATS = ("wav", "pcm")
MAX_MESSAGE = 300


def speech_body(request: Request, *, model: str, default_voice: str) -> dict[str, object]:
    """The JSON body for a request; ``InvalidInput`` for what the API cannot express."""
    if request.voice.reference is not None:
        raise _invalid("openai-compatible backend cannot clone (voice.reference is set)")
    if request.format not in MEASURABLE_FORMATS:
        raise _invalid(
            f"format {request.format!r}: transcoding/measuring compressed formats arrives in a "
            "later release; use wav or pcm"
        )
    body: dict[str, object] = {
        "model": model,
        "input": request.text,
        "voice": request.voice.preset or default_voice,
        "response_format": request.format,
    }
    if request.voice.description is not None:
        body["instructions"] = request.voice.description
    speed = request.params.get("speed")
    if speed is not None:
        if not isinstance(speed, int | float) or isinstance(speed, bool):
            raise _invalid("params.speed must be a number")
        if not math.isfinite(speed):
            raise _invalid("params.speed must be finite")
        body["speed"] = float(speed)
    return body


def error_message(body: bytes) -> str:
    """A short message from an error body: ``{"error": {"message"}}``, ``{"detail"}``, or text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed: object = json.loads(text)
    except ValueError:
        return _short(text)
    return _short(_message_of(parsed) or text)


def _message_of(parsed: object) -> str | None:
    if not isinstance(parsed, dict):
        return None
    error = parsed.get("error")
    if isinstance(error, dict) and error.get("message") is not None:
        return str(error["message"])
    if isinstance(error, str):
        return error
    detail = parsed.get("detail")
    if isinstance(detail, list):  # FastAPI validation: [{"loc": [...], "msg": "..."}]
        return "; ".join(_validation_item(item) for item in detail)
    if detail is not None:
        return detail if isinstance(detail, str) else json.dumps(detail)
    message = parsed.get("message")
    return None if message is None else str(message)


def _validation_item(item: object) -> str:
    if not isinstance(item, dict):
        return str(item)
    location = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
    message = str(item.get("msg", item))
    return f"{location}: {message}" if location else message


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _invalid(message: str) -> InvalidInput:
    return InvalidInput(message, stage=Stage.SYNTHESIZE)


def _transient(message: str, error_type: str, http_status: int | None = None) -> Transient:
    return Transient(
        message, stage=Stage.SYNTHESIZE, http_status=http_status, error_type=error_type
    )


async def read_body(response: httpx.Response) -> bytes:
    """The body; a connection dropped after the headers, or a body shorter than its
    Content-Length, is a truncated body (transient). Shared by the HTTP adapters."""
    try:
        data = await response.aread()
    except httpx.TimeoutException:
        raise
    except httpx.TransportError as exc:
        if not response.is_success:
            return b""  # the status says enough; a cut error message is no loss
        raise _transient(
            f"empty/truncated body: {exc or type(exc).__name__}", "truncated", response.status_code
        ) from exc
    expected = response.headers.get("Content-Length")
    if (
        response.is_success
        and expected is not None
        and expected.isdigit()
        and "Content-Encoding" not in response.headers
        and len(data) < int(expected)
    ):
        raise _transient(
            f"empty/truncated body: {len(data)} of {expected} bytes",
            "truncated",
            response.status_code,
        )
    return data


def measure(data: bytes, request: Request, *, pcm_rate: int, http_status: int) -> Audio:
    """Audio from a 2xx body, or ``Transient`` when the body is empty or not whole."""
    if not data:
        raise _transient(
            "empty/truncated body: the server sent no audio", "empty_body", http_status
        )
    try:
        if request.format == "pcm":
            # Measured as the WAV it would make: whole frames only, the same rounding.
            info = wav_info(pcm_to_wav(data, pcm_rate))
            return Audio(data, "pcm", info.sample_rate, info.channels, info.duration_ms)
        # Servers that stream wav write placeholder sizes, as espeak-ng does.
        wav = fix_streamed_wav(data)
        info = wav_info(wav)
    except ValueError as exc:
        raise _transient(
            f"truncated/malformed audio: {exc}", "malformed_audio", http_status
        ) from exc
    if info.frames == 0:
        raise _transient("truncated/malformed audio: no frames", "malformed_audio", http_status)
    return Audio(wav, "wav", info.sample_rate, info.channels, info.duration_ms)


class OpenAIBackend:
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
        pcm_rate: int = DEFAULT_PCM_RATE,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.name = name
        base = base_url.rstrip("/")
        # Accept a base URL given with or without the API's /v1 prefix.
        self._url = f"{base}/audio/speech" if base.endswith("/v1") else f"{base}/v1/audio/speech"
        self._model = model
        self._default_voice = default_voice
        self._pcm_rate = pcm_rate
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    def __repr__(self) -> str:  # never the key
        return f"OpenAIBackend(name={self.name!r}, url={self._url!r}, model={self._model!r})"

    async def synthesize(self, request: Request) -> Audio:
        body = speech_body(request, model=self._model, default_voice=self._default_voice)
        if (
            request.format == "pcm"
            and request.sample_rate is not None
            and request.sample_rate != self._pcm_rate
        ):
            raise _invalid(f"this backend's pcm is {self._pcm_rate} Hz; resampling arrives later")
        status, data = await self._post(body)
        audio = measure(data, request, pcm_rate=self._pcm_rate, http_status=status)
        if request.sample_rate is not None and audio.sample_rate != request.sample_rate:
            raise _invalid(
                f"the server produces {audio.sample_rate} Hz, not {request.sample_rate}; "
                "resampling arrives later"
            )
        return audio

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def _post(self, body: dict[str, object]) -> tuple[int, bytes]:
        """Status and whole body of a 2xx answer; raises for everything else."""
        try:
            async with self._client.stream(
                "POST", self._url, json=body, headers=self._headers
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
        error = error_for_status(
            response.status_code,
            error_message(data),
            stage=Stage.SYNTHESIZE,
            retry_after=response.headers.get("Retry-After"),
        )
        if error is None:  # pragma: no cover - every non-2xx status maps to an error
            raise _transient(f"unexpected HTTP {response.status_code}", "http_unexpected")
        raise error
