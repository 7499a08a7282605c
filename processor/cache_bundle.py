"""Pure: the chunk cache's request bundles, every chunk of a request in one object.

Each chunk is cached under its own key (:mod:`processor.cache`); a bundle keeps a request's
chunks together as well, under a name made from its first and last chunk keys. A request seen
before then costs one GET instead of one per chunk, and a request with a few sentences edited
(its first and last unchanged) still finds every other chunk in that one object: only the
edited ones go through the per-chunk path.

Layout: the header's length (4 bytes, big-endian), the header (JSON:
``{"format": 1, "parts": [[chunk key, bytes], ...]}``), then the parts' bytes in order. The
object's metadata carries the SHA-256 and length of the whole, as a chunk's does, and each part
must still be a WAV.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

#: The bundle's own layout; bumping it retires every bundle (not the chunks).
BUNDLE_FORMAT = 1
_HEADER_BYTES = 4


def bundle_name(prefix: str, keys: Sequence[str]) -> str:
    """Where the bundle of a request whose chunks have ``keys`` lives (two or more keys)."""
    anchor = f"bundle{BUNDLE_FORMAT}:{keys[0]}:{keys[-1]}"
    digest = hashlib.sha256(anchor.encode()).hexdigest()
    return f"{prefix}bundles/{digest[:2]}/{digest}.bin"


def pack(keys: Sequence[str], parts: Sequence[bytes]) -> bytes:
    """The bundle of ``parts`` (each the WAV of the chunk with the same index in ``keys``)."""
    listed = [[key, len(part)] for key, part in zip(keys, parts, strict=True)]
    header = json.dumps({"format": BUNDLE_FORMAT, "parts": listed}).encode()
    return len(header).to_bytes(_HEADER_BYTES, "big") + header + b"".join(parts)


def unpack(data: bytes) -> dict[str, bytes]:
    """Chunk key to WAV bytes; ``ValueError`` when ``data`` is no bundle of this format."""
    size = int.from_bytes(data[:_HEADER_BYTES], "big")
    start = _HEADER_BYTES + size
    if len(data) < start:
        raise ValueError("bundle shorter than its header")
    try:
        header = json.loads(data[_HEADER_BYTES:start])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"bundle header is not JSON: {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != BUNDLE_FORMAT:
        raise ValueError("not a bundle of this format")
    out: dict[str, bytes] = {}
    at = start
    for entry in header.get("parts", []):
        key, length = entry
        if not isinstance(key, str) or not isinstance(length, int) or length < 0:
            raise ValueError(f"bad bundle part {entry!r}")
        out[key] = data[at : at + length]
        at += length
    if at != len(data):
        raise ValueError("bundle parts do not add up to its length")
    return out
