"""``voxline usage``: what each tenant (or backend) used, read from the completion topic.

Every completion event carries ``usage`` (README: Usage accounting); this verb sums the events
of a time window by the tenant their metadata names (the key the processor's metrics use) or
by backend, and prints a table or JSON.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

import click
from rich.table import Table

from processor.kafka.records import read_to_end
from processor.ops.display import console
from processor.ops.options import KAFKA, USAGE, options, settings_from_options
from processor.usage import NO_TENANT, tenant_of

#: The figures of a row, in the order the table shows them.
FIGURES = (
    "requests",
    "failed",
    "characters",
    "chunks",
    "backend_calls",
    "cache_hits",
    "audio_ms",
    "backend_ms",
)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SPAN = re.compile(r"(\d+)([smhdw])")


def seconds_of(span: str) -> int:
    """``30m``, ``12h``, ``7d``, ``2w`` (or a sum such as ``1d12h``) in seconds."""
    text = span.strip().lower()
    parts = _SPAN.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{span!r} is not a time span such as 30m, 12h, 7d or 2w")
    return sum(int(n) * _UNITS[u] for n, u in parts)


def summarize(
    events: Iterable[Mapping[str, Any]], by: str, tenant_key: str
) -> dict[str, dict[str, int]]:
    """Rows by tenant or backend: requests, failed, and the sums of the ``usage`` figures
    (events from before usage accounting count as requests and add nothing)."""
    rows: dict[str, dict[str, int]] = {}
    for event in events:
        if by == "tenant":
            metadata = event.get("metadata") or {}
            name = tenant_of(metadata if isinstance(metadata, dict) else {}, tenant_key)
        else:
            name = str(event.get("backend") or NO_TENANT)
        row = rows.setdefault(name, dict.fromkeys(FIGURES, 0))
        row["requests"] += 1
        row["failed"] += event.get("status") == "failed"
        usage = event.get("usage") or {}
        for figure in FIGURES[2:]:
            value = usage.get(figure, 0)
            row[figure] += value if isinstance(value, int) else 0
    return dict(sorted(rows.items()))


async def read_events(settings: Any, since_s: int) -> list[dict[str, Any]]:
    """The completion events of the last ``since_s`` seconds."""
    since_ms = int((time.time() - since_s) * 1000)
    kafka = settings.kafka
    events = []
    for record in await read_to_end(kafka, kafka.completion_topic, since_ms=since_ms):
        if record.timestamp_ms < since_ms or not record.value:
            continue
        try:
            event = json.loads(record.value)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


@click.command("usage", params=options(KAFKA, USAGE))
@click.option("--since", default="7d", show_default=True, help="Time window: 30m, 12h, 7d, 2w.")
@click.option(
    "--by",
    type=click.Choice(["tenant", "backend"]),
    default="tenant",
    show_default=True,
    help="Group by the tenant metadata key or by backend.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object: rows by name.")
def usage(since: str, by: str, as_json: bool, **values: Any) -> None:
    """What each tenant or backend used (characters, calls, audio), from completion events."""
    try:
        since_s = seconds_of(since)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from exc
    settings = settings_from_options(values)
    rows = summarize(asyncio.run(read_events(settings, since_s)), by, settings.usage_tenant_key)
    if as_json:
        click.echo(json.dumps({"since": since, "by": by, "rows": rows}, sort_keys=True))
        return
    table = Table(title=f"usage over the last {since}, by {by}")
    table.add_column(by)
    for figure in FIGURES:
        table.add_column(figure, justify="right")
    for name, row in rows.items():
        table.add_row(name, *(f"{row[f]:,}" for f in FIGURES))
    console.print(table)
