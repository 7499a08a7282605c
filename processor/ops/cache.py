"""``voxline cache stats`` and ``voxline cache prune``: the chunk cache's size, its hit ratio
(from a processor's /metrics), and removing old chunks or keeping it under a size bound."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import urllib.request
from collections.abc import Iterable
from typing import Any

import click
from prometheus_client.parser import text_string_to_metric_families

from processor.cache_store import CachedObject, S3CacheStore
from processor.ops.options import CACHE, STORE, options, settings_from_options
from processor.ops.usage import seconds_of
from processor.settings import Settings

#: Lookup results that made no backend call, and all lookup results the ratio counts.
HITS = frozenset({"hit", "shared"})
LOOKUPS = frozenset({"hit", "shared", "miss", "corrupt", "error"})


def store_of(settings: Settings) -> S3CacheStore:
    return S3CacheStore(
        settings.cache.bucket or settings.store.bucket,
        settings.cache.prefix,
        endpoint_url=settings.store.endpoint_url,
        region=settings.store.region,
    )


async def listing(settings: Settings) -> list[CachedObject]:
    async with store_of(settings) as store:
        return [obj async for obj in store.objects()]


def hit_ratio(metrics_text: str) -> tuple[int, int]:
    """(lookups that made no backend call, lookups) from ``voxline_cache_total``."""
    hits = lookups = 0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name != "voxline_cache_total" or sample.labels.get("op") != "lookup":
                continue
            result = sample.labels.get("result", "")
            lookups += int(sample.value) if result in LOOKUPS else 0
            hits += int(sample.value) if result in HITS else 0
    return hits, lookups


def to_prune(
    objects: Iterable[CachedObject], *, before: dt.datetime | None, max_bytes: int
) -> list[CachedObject]:
    """Objects last written before ``before``, then the oldest of the rest until what stays
    fits in ``max_bytes`` (0: no bound)."""
    by_age = sorted(objects, key=lambda o: o.last_modified)
    doomed = [o for o in by_age if before is not None and o.last_modified < before]
    kept = [o for o in by_age if not (before is not None and o.last_modified < before)]
    size = sum(o.size for o in kept)
    for obj in kept:
        if max_bytes <= 0 or size <= max_bytes:
            break
        doomed.append(obj)
        size -= obj.size
    return doomed


@dataclasses.dataclass(frozen=True, slots=True)
class Stats:
    objects: int
    bytes: int
    oldest: str | None
    newest: str | None
    hits: int | None
    lookups: int | None

    def as_json(self) -> dict[str, Any]:
        ratio = None if not self.lookups else round((self.hits or 0) / self.lookups, 4)
        return {**dataclasses.asdict(self), "hit_ratio": ratio}


def stats_of(objects: list[CachedObject], counts: tuple[int, int] | None) -> Stats:
    times = sorted(o.last_modified for o in objects)
    return Stats(
        len(objects),
        sum(o.size for o in objects),
        times[0].isoformat() if times else None,
        times[-1].isoformat() if times else None,
        None if counts is None else counts[0],
        None if counts is None else counts[1],
    )


def _scrape(url: str) -> tuple[int, int] | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return hit_ratio(resp.read().decode())
    except OSError:
        return None


@click.group("cache")
def cache() -> None:
    """The chunk cache: its size and hit ratio, and pruning it."""


@cache.command("stats", params=options(STORE, CACHE))
@click.option(
    "--metrics-url",
    default="http://127.0.0.1:9400/metrics",
    show_default=True,
    help="A processor's /metrics, for the hit ratio ('' to skip).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def stats(metrics_url: str, as_json: bool, **values: Any) -> None:
    """Objects and bytes in the cache, and the hit ratio a processor reports."""
    settings = settings_from_options(values)
    found = stats_of(asyncio.run(listing(settings)), _scrape(metrics_url) if metrics_url else None)
    doc = found.as_json()
    if as_json:
        click.echo(json.dumps(doc, sort_keys=True))
        return
    where = f"s3://{settings.cache.bucket or settings.store.bucket}/{settings.cache.prefix}"
    click.echo(f"chunk cache at {where}")
    for name, value in doc.items():
        click.echo(f"  {name:10} {'n/a' if value is None else value}")


@cache.command("prune", params=options(STORE, CACHE))
@click.option("--older-than", default=None, help="Delete chunks last written longer ago: 30d.")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing.")
def prune(older_than: str | None, dry_run: bool, **values: Any) -> None:
    """Delete chunks older than --older-than, then the oldest until the cache fits in
    --cache-max-bytes."""
    settings = settings_from_options(values)
    try:
        age = None if older_than is None else seconds_of(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from exc
    before = None if age is None else dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age)
    doomed = to_prune(
        asyncio.run(listing(settings)), before=before, max_bytes=settings.cache.max_bytes
    )
    freed = sum(o.size for o in doomed)
    if not dry_run and doomed:
        asyncio.run(_delete(settings, [o.key for o in doomed]))
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {len(doomed)} cached chunk(s), {freed:,} bytes")


async def _delete(settings: Settings, keys: list[str]) -> None:
    async with store_of(settings) as store:
        await store.delete(keys)
