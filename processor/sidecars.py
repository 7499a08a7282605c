"""The sidecars beside the audio: speech marks (``.marks.jsonl``) and subtitles (``.srt``,
``.vtt``), each one PUT under ``{prefix}{request_id}.{ext}``; their URIs for the event."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from processor.marks import jsonl, speech_marks
from processor.request import Request
from processor.retry import Policy
from processor.steps import run_step
from processor.store import AudioStore, object_key
from processor.subtitles import cues, render
from processor.synthesis import Synthesized

CONTENT_TYPES = {
    "marks.jsonl": "application/jsonl",
    "srt": "application/x-subrip",
    "vtt": "text/vtt",
}


def sidecar_files(request: Request, result: Synthesized) -> dict[str, bytes]:
    """Extension -> content of each sidecar the request asked for (pure)."""
    timing = result.timing
    if timing is None:
        return {}
    files = {}
    if request.marks:
        files["marks.jsonl"] = jsonl(speech_marks(request, timing))
    found = cues(timing) if request.subtitles else []
    for kind in sorted(request.subtitles):
        files[kind] = render(found, kind)
    return files


async def store_sidecars(
    store: AudioStore, prefix: str, request: Request, result: Synthesized, policy: Policy
) -> dict[str, object]:
    """Put the sidecars; the succeeded event's ``marks``/``subtitles`` (and ``notes``)."""
    extra: dict[str, object] = {}
    subtitles: dict[str, str] = {}
    for ext, data in sidecar_files(request, result).items():
        uri = await run_step(_put(store, object_key(prefix, request.request_id, ext), data,
                                  CONTENT_TYPES[ext], request.request_id), policy)  # fmt: skip
        if ext == "marks.jsonl":
            extra["marks"] = uri
        else:
            subtitles[ext] = uri
    if subtitles:
        extra["subtitles"] = subtitles
    if result.timing is not None and result.timing.plan.notes:
        extra["notes"] = list(result.timing.plan.notes)
    return extra


def _put(
    store: AudioStore, key: str, data: bytes, content_type: str, request_id: str
) -> Callable[[], Awaitable[str]]:
    return lambda: store.put(key, data, content_type, {"request_id": request_id})
