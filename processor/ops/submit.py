"""``voxline submit``: send requests from a file, and optionally follow their outcomes."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import click
from rich.table import Table

from processor.kafka.access import needs as needs_of
from processor.ops import guard
from processor.ops.client import (
    CompletionFollower,
    Outgoing,
    SubmitError,
    produce,
    requests_from_lines,
)
from processor.ops.display import console, progress
from processor.ops.options import KAFKA, options, settings_from_options
from processor.settings import KafkaSettings


@click.command(params=options(KAFKA))
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option(
    "--wait/--no-wait",
    default=False,
    help="Follow the completion events until every request has one.",
)
@click.option(
    "--timeout",
    default=600.0,
    show_default=True,
    type=click.FloatRange(1),
    help="Seconds --wait waits at most.",
)
@click.option("--id-prefix", default=None, help="request_id prefix for plain-text lines.")
def submit(file: TextIO, wait: bool, timeout: float, id_prefix: str | None, **values: Any) -> None:
    """Send requests from FILE (JSON Lines, or plain text one request a line; - = stdin)."""
    try:
        requests = requests_from_lines(file, id_prefix=id_prefix)
    except SubmitError as exc:
        raise click.ClickException(str(exc)) from exc
    if not requests:
        raise click.ClickException("no requests in the input")
    kafka = settings_from_options(values).kafka
    needs = needs_of(kafka, requests="WRITE", **({"completions": "READ"} if wait else {}))
    sys.exit(guard.run(kafka, _submit(kafka, requests, wait, timeout), needs))


async def _submit(
    kafka: KafkaSettings, requests: list[Outgoing], wait: bool, timeout: float
) -> int:
    follower = CompletionFollower(kafka) if wait else None
    if follower:
        await follower.start()
    started = time.monotonic()
    try:
        with progress() as bar:
            sent = bar.add_task("sent", total=len(requests))
            await produce(kafka, requests, on_sent=lambda: bar.advance(sent))
            if follower is None:
                return 0
            done = bar.add_task("completed", total=len(requests))
            events = await follower.follow(
                {r.request_id for r in requests},
                timeout_s=timeout,
                on_event=lambda _: bar.advance(done),
            )
    finally:
        if follower:
            await follower.stop()
    elapsed = time.monotonic() - started
    console.print(summary_table(events, len(requests), elapsed))
    return 0 if len(events) == len(requests) else 1


def summary_table(events: dict[str, dict[str, Any]], total: int, elapsed: float) -> Table:
    ok = [e for e in events.values() if e.get("status") == "succeeded"]
    failed = [e for e in events.values() if e.get("status") == "failed"]
    audio_s = sum(int(e.get("audio", {}).get("duration_ms", 0)) for e in ok) / 1000
    reasons: dict[str, int] = {}
    for e in failed:
        reasons[str(e.get("reason"))] = reasons.get(str(e.get("reason")), 0) + 1
    table = Table(title="voxline submit")
    table.add_column("outcome")
    table.add_column("count", justify="right")
    table.add_row("succeeded", str(len(ok)))
    for reason, n in sorted(reasons.items()):
        table.add_row(f"failed: {reason}", str(n))
    table.add_row("no event yet", str(total - len(events)))
    table.add_row("wall time", f"{elapsed:.1f} s")
    table.add_row("throughput", f"{len(events) / elapsed if elapsed else 0:.1f} requests/s")
    table.add_row("audio produced", f"{audio_s:.1f} s")
    return table
