"""``voxline reconcile``: the command, its report table, and ``--since``."""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from collections.abc import Sequence
from typing import Any

import click
from rich.table import Table

from processor.kafka.access import needs
from processor.kafka.options import connection_options
from processor.ops import guard
from processor.ops.display import console
from processor.ops.options import KAFKA, STORE, options, settings_from_options
from processor.ops.reconcile.accounting import Report
from processor.ops.reconcile.gather import reconcile

#: Ids listed per problem in the table (``--json`` lists them all).
DEFAULT_SHOW = 20
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: dt.datetime) -> dt.datetime:
    """An ISO 8601 time (UTC if it names no zone) or a duration back from ``now``: ``90s``,
    ``15m``, ``2h``, ``7d``. ``ValueError`` for anything else."""
    match = _DURATION.fullmatch(text.strip())
    if match:
        return now - dt.timedelta(seconds=float(match.group(1)) * _UNIT_S[match.group(2)])
    moment = dt.datetime.fromisoformat(text.strip())
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return parse_since(value, dt.datetime.now(dt.UTC))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither an ISO time nor a duration like 15m or 2h"
        ) from None


def report_table(report: Report, show: int = DEFAULT_SHOW) -> Table:
    table = Table(title="voxline reconcile: " + ("OK" if report.ok else "PROBLEMS"))
    table.add_column("check")
    table.add_column("count", justify="right")
    table.add_column(f"ids (first {show})")
    rows: list[tuple[str, int, Sequence[str]]] = [
        ("requests", report.requests, ()),
        ("records read", report.records, ()),
        ("succeeded", report.succeeded, ()),
        ("failed (dead-lettered)", report.failed, ()),
        *((f"  failed: {r}", n, ()) for r, n in report.failed_reasons),
        ("lost (no outcome)", report.lost, report.lost_ids),
        ("parked (pending on the delay topic)", report.parked, report.parked_ids),
        ("conflicting outcomes", report.conflicts, report.conflict_ids),
        ("duplicate events", report.duplicates, report.duplicate_ids),
        ("missing objects", report.missing_objects, report.missing_object_ids),
        ("bad objects (size/sha256)", report.bad_objects, report.bad_object_ids),
        ("orphan objects", report.orphans, report.orphan_keys),
        ("missing dead letters", report.missing_dead_letters, report.missing_dead_letter_ids),
        ("bad dead letters", report.bad_dead_letters, report.bad_dead_letter_ids),
        ("dead-letter records", report.dead_letter_records, ()),
        ("objects under the prefix", report.objects, ()),
        ("objects downloaded and hashed", report.objects_downloaded, ()),
        ("unreadable events", report.unreadable_events, ()),
    ]
    for name, count, ids in rows:
        more = f" (+{len(ids) - show} more)" if len(ids) > show else ""
        table.add_row(name, str(count), ", ".join(ids[:show]) + more)
    return table


@click.command("reconcile", params=options(KAFKA, STORE))
@click.option(
    "--since",
    callback=_since,
    metavar="TIME|DURATION",
    default=None,
    help="Only requests sent at or after this ISO time (UTC if no zone), or this long ago "
    "(15m, 2h, 7d). Default: the whole topic.",
)
@click.option(
    "--verify-content/--metadata-only",
    default=False,
    show_default=True,
    help="Download and hash every object; else compare sizes and sha256 metadata and hash "
    "only a sample.",
)
@click.option(
    "--sample",
    default=20,
    show_default=True,
    type=click.IntRange(0),
    help="Objects downloaded and hashed with --metadata-only.",
)
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
@click.option(
    "--show", default=DEFAULT_SHOW, show_default=True, type=click.IntRange(0), help="Ids per row."
)
def reconcile_command(
    since: dt.datetime | None,
    verify_content: bool,
    sample: int,
    as_json: bool,
    show: int,
    **values: Any,
) -> None:
    """Check that every request ended as exactly one outcome with its audio object or dead
    letter in place. Exit 0 when nothing is lost and nothing conflicts or is missing or
    corrupt; 1 otherwise."""
    settings = settings_from_options(values)
    kafka, store = settings.kafka, settings.store
    try:
        connection_options(kafka)  # settings that cannot work (e.g. SASL without a user)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    report = guard.run(
        kafka,
        reconcile(kafka, store, since=since, verify_content=verify_content, sample=sample),
        needs(kafka, requests="READ", completions="READ", dlq="READ"),
    )
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        console.print(report_table(report, show))
    sys.exit(0 if report.ok else 1)
