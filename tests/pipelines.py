"""A scripted pipeline for runner tests: records finish at once unless held."""

from __future__ import annotations

import asyncio

from processor.errors import VoxlineError
from processor.kafka.records import Record

Key = tuple[int, int]  # (partition, offset)


class FakePipeline:
    """Records finish at once unless held (``hold``) until released, or ``never`` finish."""

    def __init__(self) -> None:
        self.started: list[Key] = []
        self.finished: list[Key] = []
        self.cancelled: list[Key] = []
        self.dead: list[tuple[Key, VoxlineError]] = []
        self.dead_records: list[Record] = []
        self.active: set[Key] = set()
        #: For each started record, what else was in flight when it started.
        self.alongside: dict[Key, set[Key]] = {}
        self.gates: dict[Key, asyncio.Event] = {}
        self.raises: set[Key] = set()

    def hold(self, partition: int, *offsets: int) -> None:
        for offset in offsets:
            self.gates[(partition, offset)] = asyncio.Event()

    def release(self, partition: int, *offsets: int) -> None:
        for offset in offsets:
            self.gates.pop((partition, offset)).set()

    async def handle(self, record: Record) -> str:
        key = (record.partition, record.offset)
        self.started.append(key)
        self.alongside[key] = set(self.active)
        self.active.add(key)
        try:
            gate = self.gates.get(key)
            if gate is not None:
                await gate.wait()
            await asyncio.sleep(0)
            if key in self.raises:
                raise RuntimeError("a bug")
        except asyncio.CancelledError:
            self.cancelled.append(key)
            raise
        finally:
            self.active.discard(key)
        self.finished.append(key)
        return "succeeded"

    async def dead_letter(self, record: Record, error: VoxlineError) -> str:
        self.dead.append(((record.partition, record.offset), error))
        self.dead_records.append(record)
        return "failed"
