"""``voxline``: the command line, and the composition root that reads the environment."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from processor import __version__, config, logs
from processor.config import BackendsConfig
from processor.settings import KafkaSettings, Settings, StoreSettings

F = TypeVar("F", bound=Callable[..., Any])
# Piped output gets a wide table rather than rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)


def _options(*opts: Callable[[F], F]) -> Callable[[F], F]:
    def apply(func: F) -> F:
        for opt in reversed(opts):
            func = opt(func)
        return func

    return apply


def _opt(*names: str, envvar: str, **kw: Any) -> Callable[[F], F]:
    kw.setdefault("show_default", True)
    return click.option(*names, envvar=envvar, show_envvar=True, **kw)


kafka_options = _options(
    _opt(
        "--bootstrap-servers",
        envvar="KAFKA_BOOTSTRAP_SERVERS",
        default="localhost:9092",
        help="Kafka bootstrap servers, comma-separated.",
    ),
    _opt(
        "--request-topic",
        envvar="VOXLINE_REQUEST_TOPIC",
        default="tts.requests",
        help="Topic the synthesis requests arrive on.",
    ),
    _opt(
        "--completion-topic",
        envvar="VOXLINE_COMPLETION_TOPIC",
        default="tts.completions",
        help="Topic completion events (succeeded/failed) are published to.",
    ),
    _opt(
        "--security-protocol",
        envvar="KAFKA_SECURITY_PROTOCOL",
        default="PLAINTEXT",
        type=click.Choice(["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]),
        help="How to talk to the brokers.",
    ),
    _opt(
        "--sasl-mechanism",
        envvar="KAFKA_SASL_MECHANISM",
        default=None,
        type=click.Choice(["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]),
        help="SASL mechanism (with SASL_PLAINTEXT or SASL_SSL).",
    ),
    _opt("--sasl-username", envvar="KAFKA_SASL_USERNAME", default=None, help="SASL user."),
    _opt(
        "--sasl-password",
        envvar="KAFKA_SASL_PASSWORD",
        default=None,
        show_default=False,
        help="SASL password; never logged (prefer the environment variable to the flag).",
    ),
    _opt("--ssl-cafile", envvar="KAFKA_SSL_CAFILE", default=None, help="CA bundle for TLS."),
    _opt("--ssl-certfile", envvar="KAFKA_SSL_CERTFILE", default=None, help="Client cert (mTLS)."),
    _opt("--ssl-keyfile", envvar="KAFKA_SSL_KEYFILE", default=None, help="Client key (mTLS)."),
    _opt(
        "--dlq-topic",
        envvar="VOXLINE_DLQ_TOPIC",
        default="tts.requests.dlq",
        help="Dead-letter topic.",
    ),
)

run_options = _options(
    _opt(
        "--group-instance-id",
        envvar="VOXLINE_GROUP_INSTANCE_ID",
        default=None,
        help="Static group membership: give each instance a stable id so a rolling restart "
        "within the session timeout does not rebalance.",
    ),
    _opt(
        "--group-id",
        envvar="VOXLINE_GROUP_ID",
        default="voxline",
        help="Consumer group; run more instances with the same group to scale out.",
    ),
    _opt(
        "--s3-endpoint-url",
        envvar="S3_ENDPOINT_URL",
        default=None,
        help="S3-compatible endpoint; unset means AWS. Credentials come from the standard "
        "AWS chain (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, profiles, roles).",
    ),
    _opt("--s3-bucket", envvar="S3_BUCKET", default="voxline-audio", help="Bucket for audio."),
    _opt("--s3-prefix", envvar="S3_PREFIX", default="", help="Key prefix for audio objects."),
    _opt("--aws-region", envvar="AWS_REGION", default=None, help="S3 region."),
    _opt(
        "--backend",
        envvar="VOXLINE_BACKEND",
        default="espeak",
        type=click.Choice(["espeak", "openai", "cosyvoice", "fish", "qwen"]),
        help="The TTS backend.",
    ),
    _opt(
        "--backend-url",
        envvar="VOXLINE_BACKEND_URL",
        default=None,
        help="Base URL of the backend server (openai: the URL before /v1/audio/speech).",
    ),
    _opt(
        "--backend-api-key",
        envvar="VOXLINE_BACKEND_API_KEY",
        default=None,
        show_default=False,
        help="Bearer key for the backend; never logged.",
    ),
    _opt(
        "--max-in-flight",
        envvar="VOXLINE_MAX_IN_FLIGHT",
        default=8,
        type=click.IntRange(1, 4096),
        help="Records processed concurrently (the window).",
    ),
    _opt(
        "--adaptive/--static",
        envvar="VOXLINE_ADAPTIVE",
        default=False,
        help="Let each backend's window find the backend's capacity (between 1 and "
        "--max-in-flight) instead of keeping it fixed.",
    ),
    _opt(
        "--max-records",
        envvar="VOXLINE_MAX_RECORDS",
        default=0,
        type=click.IntRange(0),
        help="Records the consumer holds at once; 0 means 2x the sum of the backends' "
        "windows (at least 32).",
    ),
    _opt(
        "--max-uncommitted",
        envvar="VOXLINE_MAX_UNCOMMITTED",
        default=1000,
        type=click.IntRange(1),
        help="Records of one partition read but not yet committed before that partition "
        "pauses: bounds the work a crash redoes.",
    ),
    _opt(
        "--reference-buckets",
        envvar="VOXLINE_REFERENCE_BUCKETS",
        default="",
        help="Comma-separated buckets that voice.reference.audio_uri may name (clone "
        "prompts); any other is invalid_input.",
    ),
    _opt(
        "--config",
        "config_path",
        envvar="VOXLINE_CONFIG",
        default=None,
        type=click.Path(exists=True, dir_okay=False),
        help="TOML file declaring several named backends, each with its own window and "
        "limits (overrides --backend/--backend-url).",
    ),
    _opt(
        "--max-text-chars",
        envvar="VOXLINE_MAX_TEXT_CHARS",
        default=20_000,
        type=click.IntRange(1),
        help="Longest accepted text; longer is invalid_input.",
    ),
    _opt(
        "--backend-timeout",
        envvar="VOXLINE_BACKEND_TIMEOUT",
        default=120.0,
        type=click.FloatRange(0.1),
        help="Seconds one backend call may take (synthesis is slow; a hung call is retried).",
    ),
    _opt(
        "--retry-attempts",
        envvar="VOXLINE_RETRY_ATTEMPTS",
        default=5,
        type=click.IntRange(1),
        help="Backend calls per record for transient failures.",
    ),
    _opt(
        "--retry-timeout",
        envvar="VOXLINE_RETRY_TIMEOUT",
        default=60.0,
        type=click.FloatRange(0.1),
        help="Seconds a record may spend on retries.",
    ),
    _opt(
        "--drain-timeout",
        envvar="VOXLINE_DRAIN_TIMEOUT",
        default=20.0,
        type=click.FloatRange(0),
        help="Seconds in-flight work gets to finish on shutdown or when partitions are revoked.",
    ),
    _opt(
        "--http-port",
        envvar="VOXLINE_HTTP_PORT",
        default=9400,
        type=click.IntRange(-1, 65535),
        help="Port for /healthz, /readyz and /metrics (Prometheus); -1 turns it off.",
    ),
    _opt(
        "--http-host",
        envvar="VOXLINE_HTTP_HOST",
        default="127.0.0.1",
        help="Address the HTTP endpoint binds (0.0.0.0 in a container).",
    ),
    _opt(
        "--topic-partitions",
        envvar="VOXLINE_TOPIC_PARTITIONS",
        default=4,
        type=click.IntRange(0),
        help="Partitions for topics created at start-up when missing; 0 never creates topics.",
    ),
)


def _backends(kw: dict[str, Any]) -> BackendsConfig:
    if kw.get("config_path"):
        return config.load(kw["config_path"])
    return config.single_backend(
        kw.get("backend", "espeak"),
        url=kw.get("backend_url"),
        api_key=kw.get("backend_api_key"),
        max_in_flight=kw.get("max_in_flight", 8),
        adaptive=kw.get("adaptive", False),
        timeout_s=kw.get("backend_timeout", 120.0),
        retry_attempts=kw.get("retry_attempts", 5),
        retry_timeout_s=kw.get("retry_timeout", 60.0),
        max_records=kw.get("max_records", 0),
        reference_buckets=frozenset(
            b.strip() for b in kw.get("reference_buckets", "").split(",") if b.strip()
        ),
    )


def _settings(**kw: Any) -> Settings:
    return Settings(
        kafka=KafkaSettings(
            bootstrap_servers=kw["bootstrap_servers"],
            group_id=kw.get("group_id", "voxline"),
            request_topic=kw["request_topic"],
            completion_topic=kw["completion_topic"],
            dlq_topic=kw["dlq_topic"],
            create_topics_partitions=kw.get("topic_partitions", 4),
            group_instance_id=kw.get("group_instance_id"),
            security_protocol=kw.get("security_protocol", "PLAINTEXT"),
            sasl_mechanism=kw.get("sasl_mechanism"),
            sasl_username=kw.get("sasl_username"),
            sasl_password=kw.get("sasl_password"),
            ssl_cafile=kw.get("ssl_cafile"),
            ssl_certfile=kw.get("ssl_certfile"),
            ssl_keyfile=kw.get("ssl_keyfile"),
        ),
        store=StoreSettings(
            endpoint_url=kw.get("s3_endpoint_url"),
            bucket=kw.get("s3_bucket", "voxline-audio"),
            prefix=kw.get("s3_prefix", ""),
            region=kw.get("aws_region"),
        ),
        backends=_backends(kw),
        max_uncommitted=kw.get("max_uncommitted", 1000),
        max_text_chars=kw.get("max_text_chars", 20_000),
        drain_timeout_s=kw.get("drain_timeout", 20.0),
        http_host=kw.get("http_host", "127.0.0.1"),
        http_port=None if kw.get("http_port", -1) < 0 else kw["http_port"],
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="voxline")
@_opt(
    "--log-level",
    envvar="VOXLINE_LOG_LEVEL",
    default="info",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Log level.",
)
@_opt(
    "--log-format",
    envvar="VOXLINE_LOG_FORMAT",
    default="json",
    type=click.Choice(["json", "console"]),
    help="Log line format (on stderr).",
)
def main(log_level: str, log_format: str) -> None:
    """Voxline: text-to-speech requests from Kafka to audio in S3."""
    logs.configure(log_level, json=log_format == "json")


@main.command()
@kafka_options
@run_options
def run(**kw: Any) -> None:
    """Run the processor until SIGTERM/SIGINT, then drain in-flight work, commit and exit 0."""
    from processor.app import serve

    settings = _settings(**kw)
    try:
        asyncio.run(serve(settings, install_signals=True))
    except ValueError as exc:  # ConfigError and other configuration errors
        raise click.ClickException(str(exc)) from exc


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


@main.command()
@click.argument("file", type=click.File("r", encoding="utf-8"))
@kafka_options
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
def submit(file: Any, wait: bool, timeout: float, id_prefix: str | None, **kw: Any) -> None:
    """Send requests from FILE (JSON Lines, or plain text one request a line; - = stdin)."""
    from processor.ops.client import SubmitError, requests_from_lines

    try:
        requests = requests_from_lines(file, id_prefix=id_prefix)
    except SubmitError as exc:
        raise click.ClickException(str(exc)) from exc
    if not requests:
        raise click.ClickException("no requests in the input")
    kafka = _settings(**kw).kafka
    code = asyncio.run(_submit(kafka, requests, wait, timeout))
    sys.exit(code)


async def _submit(kafka: KafkaSettings, requests: list[Any], wait: bool, timeout: float) -> int:
    from processor.ops.client import CompletionFollower, produce

    follower = CompletionFollower(kafka) if wait else None
    if follower:
        await follower.start()
    started = time.monotonic()
    try:
        with _progress() as progress:
            sent = progress.add_task("sent", total=len(requests))
            await produce(kafka, requests, on_sent=lambda: progress.advance(sent))
            if follower is None:
                return 0
            done = progress.add_task("completed", total=len(requests))
            events = await follower.follow(
                {r.request_id for r in requests},
                timeout_s=timeout,
                on_event=lambda _: progress.advance(done),
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


# -- dlq -------------------------------------------------------------------------------------

_filter_options = _options(
    click.option(
        "--reason",
        "reasons",
        multiple=True,
        type=click.Choice(["invalid_input", "permanent", "retries_exhausted", "expired"]),
        help="Only this dlq.reason (repeatable).",
    ),
    click.option(
        "--error-type", "error_types", multiple=True, help="Only this dlq.error.type (repeatable)."
    ),
    click.option(
        "--request-id", "request_ids", multiple=True, help="Only this request_id (repeatable)."
    ),
    click.option(
        "--since",
        type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
        help="Only dead letters that failed at or after this time (UTC if no zone).",
    ),
    click.option(
        "--until",
        type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
        help="Only dead letters that failed before this time (UTC if no zone).",
    ),
)


def _aware(moment: dt.datetime | None) -> dt.datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=dt.UTC)


def _selected(kw: dict[str, Any]) -> list[Any]:
    from processor.ops.client import DeadLetterFilter, read_dead_letters

    chosen = DeadLetterFilter(
        reasons=frozenset(kw.pop("reasons")),
        error_types=frozenset(kw.pop("error_types")),
        request_ids=frozenset(kw.pop("request_ids")),
        since=_aware(kw.pop("since")),
        until=_aware(kw.pop("until")),
    )
    kafka = _settings(**kw).kafka
    return [d for d in asyncio.run(read_dead_letters(kafka)) if chosen(d)]


@main.group()
def dlq() -> None:
    """Inspect and replay dead letters."""


@dlq.command("list")
@kafka_options
@_filter_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per dead letter.")
def dlq_list(as_json: bool, **kw: Any) -> None:
    """List dead letters (oldest first), with their reason and error."""
    letters = _selected(kw)
    if as_json:
        for d in letters:
            click.echo(
                json.dumps(
                    {
                        "partition": d.partition,
                        "offset": d.offset,
                        "request_id": d.request_id,
                        "headers": {k: v.decode("utf-8", "replace") for k, v in d.headers},
                    },
                    ensure_ascii=False,
                )
            )
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


@dlq.command("replay")
@kafka_options
@_filter_options
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; send nothing.")
def dlq_replay(dry_run: bool, **kw: Any) -> None:
    """Resend dead letters to their original topic (fix the cause first)."""
    from processor.ops.client import replay

    filters = ("reasons", "error_types", "request_ids", "since", "until")
    kafka_kw = {k: v for k, v in kw.items() if k not in filters}
    letters = _selected(kw)
    if dry_run or not letters:
        verb = "would replay" if dry_run else "nothing to replay"
        click.echo(f"{verb}: {len(letters)} dead letter(s)")
        for d in letters:
            click.echo(f"  {d.request_id}  {d.header('dlq.reason')}  {d.header('dlq.error.type')}")
        return
    kafka = _settings(**kafka_kw).kafka
    with _progress() as progress:
        task = progress.add_task("replayed", total=len(letters))
        sent = asyncio.run(replay(kafka, letters, on_sent=lambda: progress.advance(task)))
    click.echo(f"replayed {sent} dead letter(s) to their original topic")


@main.command()
@click.option(
    "--keep-services", is_flag=True, help="Leave the Kafka broker and S3 store running afterwards."
)
@click.pass_context
def demo(ctx: click.Context, keep_services: bool) -> None:
    """The whole pipeline on this machine: local broker and store, espeak-ng, sample
    requests in English, Chinese and Japanese plus two invalid ones."""
    from processor.ops.demo import run_demo

    parent = ctx.parent
    if parent is not None and parent.get_parameter_source("log_level") in (
        click.core.ParameterSource.DEFAULT,
        None,
    ):
        # The demo's output is its table; keep the processor's info lines out of it.
        logs.configure("warning", json=False)

    sys.exit(asyncio.run(run_demo(console, keep_services=keep_services)))


def _register_reconcile() -> None:
    from processor.ops.reconcile import reconcile_command

    main.add_command(reconcile_command)


_register_reconcile()
