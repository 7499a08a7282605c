"""Pure: the chunk cache's key, a hash over everything that determines a chunk's audio.

The key covers the backend (name, kind, the adapter's mapping version, its options, where the
model is named), and every field of the ``Utterance`` the adapter receives: the chunk's text
as sent, voice (preset, description, the reference's transcript), language, seed and params.
The reference audio enters by the SHA-256 of its bytes (stronger than its ETag: the same
audio under another name is the same voice). A field added to ``Utterance`` later enters the
key without a change here, so a new input can never be silently ignored.

Safety rule: a backend that samples randomly gives different audio for two calls without a
seed, so such a call is cacheable only when the operator says so (``cache.unseeded``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping

from processor.backends.base import Utterance
from processor.config import BackendConfig

#: The key's own layout; bumping it retires every cached chunk.
KEY_FORMAT = 1

#: Per adapter, the version of its request mapping (how an ``Utterance`` becomes a call).
#: Bump a kind's number whenever its adapter changes what it sends: old chunks then miss.
MAPPING_VERSIONS: Mapping[str, int] = {
    "espeak": 1,
    "openai": 1,
    "cosyvoice": 1,
    "fish": 1,
    "qwen": 1,
}

#: Kinds whose output is the same for the same input without a seed (a local formant synth).
DETERMINISTIC_KINDS = frozenset({"espeak"})

#: Options that never change the audio (secrets must not be hashed into a visible key either).
_IGNORED_OPTIONS = frozenset({"api_key", "api_key_env"})


def cacheable(conf: BackendConfig, call: Utterance, *, unseeded: bool) -> bool:
    """Whether the audio of ``call`` on this backend may be served from the cache."""
    return call.seed is not None or conf.kind in DETERMINISTIC_KINDS or unseeded


def _plain(value: object) -> object:
    """A JSON-able rendering, stable across runs (mappings sorted when dumped)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | frozenset | set):
        items = [_plain(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, frozenset | set) else items
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def key_document(conf: BackendConfig, call: Utterance) -> dict[str, object]:
    """What the key hashes, as a document (tests and ``--explain`` read it)."""
    utterance: dict[str, object] = {}
    for field in dataclasses.fields(call):
        value = getattr(call, field.name)
        if field.name == "reference":
            utterance["reference"] = (
                None if value is None else hashlib.sha256(value.wav).hexdigest()
            )
        else:
            utterance[field.name] = _plain(value)
    options = {k: v for k, v in conf.options.items() if k not in _IGNORED_OPTIONS}
    return {
        "format": KEY_FORMAT,
        "backend": conf.name,
        "kind": conf.kind,
        "mapping_version": MAPPING_VERSIONS.get(conf.kind, 0),
        "options": _plain(options),
        "utterance": utterance,
    }


def chunk_key(conf: BackendConfig, call: Utterance) -> str:
    """The hex SHA-256 of :func:`key_document`."""
    doc = json.dumps(key_document(conf, call), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(doc.encode()).hexdigest()


def object_name(prefix: str, key: str) -> str:
    """Where a chunk lives: two levels of fan-out keep listings short."""
    return f"{prefix}{key[:2]}/{key}.wav"
