"""``voxline run``: the processor, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from processor.ops import guard
from processor.ops.options import CACHE, KAFKA, RUN, USAGE, options, settings_from_options
from processor.settings import Settings


async def serve_until_signalled(settings: Settings) -> None:
    """The processor from start-up to a drained stop on SIGTERM/SIGINT: the one call the
    command makes into the composition root."""
    from processor import tracing
    from processor.app import run_until_signalled  # the whole processor: loaded to run it

    await guard.processor_start(settings)  # access refused: one error line, exit 1
    with tracing.configured():  # OTEL_* variables turn traces on
        await run_until_signalled(settings)


@click.command(params=options(KAFKA, RUN, CACHE, USAGE))
def run(**values: Any) -> None:
    """Run the processor until SIGTERM/SIGINT, then drain in-flight work, commit and exit 0."""
    try:
        asyncio.run(serve_until_signalled(settings_from_options(values)))
    except ValueError as exc:  # ConfigError and other configuration errors
        raise click.ClickException(str(exc)) from exc
