"""``voxline``: the command group, its logging options, and the verbs.

Each verb lives in a module of its own (``run``, ``submit``, ``dlq``, ``reconcile``, ``demo``);
the settings flags they share are declared once in ``options``.
"""

from __future__ import annotations

import click

from processor import __version__, logs
from processor.ops.cache import cache
from processor.ops.demo import demo
from processor.ops.dlq import dlq
from processor.ops.reconcile import reconcile_command
from processor.ops.run import run
from processor.ops.submit import submit
from processor.ops.usage import usage


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="voxline")
@click.option(
    "--log-level",
    envvar="VOXLINE_LOG_LEVEL",
    show_envvar=True,
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Log level.",
)
@click.option(
    "--log-format",
    envvar="VOXLINE_LOG_FORMAT",
    show_envvar=True,
    default="json",
    show_default=True,
    type=click.Choice(["json", "console"]),
    help="Log line format (on stderr).",
)
def main(log_level: str, log_format: str) -> None:
    """Voxline: text-to-speech requests from Kafka to audio in S3."""
    logs.configure(log_level, json=log_format == "json")


for _verb in (run, submit, dlq, reconcile_command, demo, usage, cache):
    main.add_command(_verb)
