"""Usage accounting: what one record cost, as every completion event reports it, and the
tenant label the usage metrics carry.

``Usage`` is filled in while a record is processed (the synthesize stage counts chunks,
backend calls, cache hits and the time spent in backend calls) and rendered once into the
event's ``usage`` object. ``TenantLabels`` keeps the metrics' label values bounded: the first
``max_tenants`` distinct tenants get a label of their own, every later one is ``other``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

#: The tenant label of a record whose metadata names no tenant.
NO_TENANT = "-"
#: The tenant label of every tenant after the first ``max_tenants``.
OTHER_TENANT = "other"


@dataclasses.dataclass(slots=True)
class Usage:
    """One record's usage. ``characters`` is the request text's length in Unicode code points
    (what hosted services bill by); ``audio_ms`` the delivered audio's duration, or for a
    failed record the audio its chunks had produced before it failed."""

    characters: int = 0
    chunks: int = 0
    backend_calls: int = 0
    cache_hits: int = 0
    audio_ms: int = 0
    backend_ms: int = 0
    #: The backend the record was routed to, once known (not part of the event's object).
    backend: str | None = None
    #: The quality gate's measures of each delivered chunk, and the syntheses it refused
    #: (``processor.quality_gate``; the event's ``quality``, not its ``usage``).
    quality: list[dict[str, float]] = dataclasses.field(default_factory=list)
    regenerated: int = 0
    #: The mastered file's loudness (``processor.mastering_step``; the event's ``loudness``).
    loudness: dict[str, float] | None = None

    def as_event(self) -> dict[str, int]:
        """The event's ``usage`` object (the six figures, all integers)."""
        return {
            "characters": self.characters,
            "chunks": self.chunks,
            "backend_calls": self.backend_calls,
            "cache_hits": self.cache_hits,
            "audio_ms": self.audio_ms,
            "backend_ms": self.backend_ms,
        }

    def call_took(self, seconds: float) -> None:
        """A backend call (successful or not) took ``seconds``."""
        self.backend_ms += max(0, round(seconds * 1000))


def tenant_of(metadata: Mapping[str, str], key: str) -> str:
    """The tenant a record's metadata names under ``key``, or ``NO_TENANT``."""
    return metadata.get(key) or NO_TENANT


class TenantLabels:
    """Bounded label values: the first ``max_tenants`` distinct tenants seen keep their name,
    later ones are ``other`` (so a producer cannot blow up the metrics' cardinality)."""

    def __init__(self, max_tenants: int) -> None:
        self.max_tenants = max_tenants
        self._seen: set[str] = set()

    def label(self, tenant: str) -> str:
        if tenant in self._seen:
            return tenant
        if len(self._seen) < self.max_tenants:
            self._seen.add(tenant)
            return tenant
        return OTHER_TENANT
