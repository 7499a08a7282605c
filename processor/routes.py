"""A configured backend as the pipeline sees it: the adapter, its gate and its limits."""

from __future__ import annotations

import dataclasses

from processor.backends.base import Backend
from processor.config import BackendConfig
from processor.gate import Gate


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    backend: Backend
    gate: Gate
    config: BackendConfig

    @property
    def name(self) -> str:
        return self.config.name
