"""``voxline dlq list`` and ``voxline dlq replay``: inspect dead letters and resend them."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

import click
from rich.table import Table

from processor.errors import Reason
from processor.kafka.access import needs
from processor.ops import guard
from processor.ops.client import DeadLetter, DeadLetterFilter, read_dead_letters, replay
from processor.ops.display import console, progress
from processor.ops.options import KAFKA, options, settings_from_options

_MOMENT = click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"])


def _filters() -> list[click.Parameter]:
    return [
        click.Option(
            ["--reason", "reasons"],
            multiple=True,
            type=click.Choice([reason.value for reason in Reason]),
            help="Only this dlq.reason (repeatable).",
        ),
        click.Option(
            ["--error-type", "error_types"],
            multiple=True,
            help="Only this dlq.error.type (repeatable).",
        ),
        click.Option(
            ["--request-id", "request_ids"],
            multiple=True,
            help="Only this request_id (repeatable).",
        ),
        click.Option(
            ["--since"],
            type=_MOMENT,
            help="Only dead letters that failed at or after this time (UTC if no zone).",
        ),
        click.Option(
            ["--until"],
            type=_MOMENT,
            help="Only dead letters that failed before this time (UTC if no zone).",
        ),
    ]


def _aware(moment: dt.datetime | None) -> dt.datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=dt.UTC)


def _selected(values: Mapping[str, Any]) -> list[DeadLetter]:
    chosen = DeadLetterFilter(
        reasons=frozenset(values["reasons"]),
        error_types=frozenset(values["error_types"]),
        request_ids=frozenset(values["request_ids"]),
        since=_aware(values["since"]),
        until=_aware(values["until"]),
    )
    kafka = settings_from_options(values).kafka
    letters = guard.run(kafka, read_dead_letters(kafka), needs(kafka, dlq="READ"))
    return [d for d in letters if chosen(d)]


@click.group()
def dlq() -> None:
    """Inspect and replay dead letters."""


@dlq.command("list", params=options(KAFKA) + _filters())
@click.option("--json", "as_json", is_flag=True, help="One JSON object per dead letter.")
def dlq_list(as_json: bool, **values: Any) -> None:
    """List dead letters (oldest first), with their reason and error."""
    letters = _selected(values)
    if as_json:
        for d in letters:
            click.echo(json.dumps(_as_json(d), ensure_ascii=False))
        return
    table = Table(title=f"dead letters ({len(letters)})")
    for col in ("request_id", "reason", "stage", "error", "attempts", "replays", "failed at"):
        table.add_column(col)
    for d in letters:
        table.add_row(
            d.request_id or "?",
            d.header("dlq.reason") or "",
            d.header("dlq.stage") or "",
            f"{d.header('dlq.error.type')}: {d.header('dlq.error.message')}",
            d.header("dlq.attempts") or "",
            d.header("dlq.replay_count") or "0",
            d.header("dlq.failed_at") or "",
        )
    console.print(table)


def _as_json(letter: DeadLetter) -> dict[str, Any]:
    return {
        "partition": letter.partition,
        "offset": letter.offset,
        "request_id": letter.request_id,
        "headers": {name: letter.header(name) for name, _ in letter.headers},
    }


@dlq.command("replay", params=options(KAFKA) + _filters())
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; send nothing.")
def dlq_replay(dry_run: bool, **values: Any) -> None:
    """Resend dead letters to their original topic (fix the cause first)."""
    letters = _selected(values)
    if dry_run or not letters:
        verb = "would replay" if dry_run else "nothing to replay"
        click.echo(f"{verb}: {len(letters)} dead letter(s)")
        for d in letters:
            click.echo(f"  {d.request_id}  {d.header('dlq.reason')}  {d.header('dlq.error.type')}")
        return
    kafka = settings_from_options(values).kafka
    with progress() as bar:
        task = bar.add_task("replayed", total=len(letters))
        sending = replay(kafka, letters, on_sent=lambda: bar.advance(task))
        sent = guard.run(kafka, sending, needs(kafka, requests="WRITE"))
    click.echo(f"replayed {sent} dead letter(s) to their original topic")
