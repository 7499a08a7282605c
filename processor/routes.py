"""A configured backend as the pipeline sees it: the adapter, its gate, its limits and the
retry policy its calls follow."""

from __future__ import annotations

import dataclasses

from processor.backends.base import Backend
from processor.config import BackendConfig
from processor.gate import Gate
from processor.retry import Policy


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    backend: Backend
    gate: Gate
    config: BackendConfig
    policy: Policy = dataclasses.field(default_factory=Policy)

    @property
    def name(self) -> str:
        return self.config.name
