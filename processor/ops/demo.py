"""``voxline demo``: the main job end to end on this machine, on the embedded backend."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from processor import logs
from processor.config import single_backend
from processor.ops import display
from processor.ops.client import CompletionFollower, Outgoing, produce
from processor.settings import KafkaSettings, Settings, StoreSettings

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"

SAMPLES: list[tuple[str, str]] = [
    ("en", "Welcome to Voxline, where text becomes speech at scale."),
    ("en", "Chapter one. It was a bright cold day in April, and the clocks were striking."),
    ("en", "Please hold the line; an agent will be with you shortly."),
    ("en", "Lesson three covers consumer groups, partitions and offsets."),
    ("zh", "欢迎使用语音合成服务。"),
    ("zh", "今天天气很好，我们去公园散步吧。"),
    ("zh", "第一章：春天来了，万物复苏。"),
    ("zh", "您的订单已经发货，请注意查收。"),
    ("ja", "こんにちは、音声合成のデモへようこそ。"),
    ("ja", "今日はとても良い天気ですね。"),
    ("ja", "第一章、吾輩は猫である。名前はまだ無い。"),
    ("ja", "ご注文ありがとうございました。"),
]

#: One request in SSML with speech marks and subtitles: the sidecars land beside its audio.
SSML_SAMPLE = (
    "<speak><p><s>Chapter two.</s><break time='1500ms'/><mark name='body'/>"
    "<s>The <sub alias='World Wide Web Consortium'>W3C</sub> published SSML on "
    "<say-as interpret-as='date'>2004-09-07</say-as>.</s><s>Subtitles follow each sentence.</s>"
    "</p></speak>"
)

LOCAL_ENV = {
    "AWS_ACCESS_KEY_ID": "voxline",
    "AWS_SECRET_ACCESS_KEY": "voxline-secret",
    "AWS_REGION": "us-east-1",
}


def demo_requests(run_id: str) -> list[Outgoing]:
    """A dozen valid requests in three languages, one in SSML with marks and subtitles, then
    two that must be dead-lettered."""
    out = []
    for i, (lang, text) in enumerate(SAMPLES, start=1):
        rid = f"{run_id}-{i:02d}-{lang}"
        body = {"request_id": rid, "text": text, "language": lang, "metadata": {"demo": run_id}}
        out.append(Outgoing(rid, json.dumps(body, ensure_ascii=False).encode()))
    rid = f"{run_id}-ssml"
    ssml = {"request_id": rid, "text": SSML_SAMPLE, "text_type": "ssml", "language": "en",
            "marks": ["sentence", "ssml"], "subtitles": ["srt", "vtt"]}  # fmt: skip
    out.append(Outgoing(rid, json.dumps(ssml).encode()))
    out.append(Outgoing(f"{run_id}-13-not-json", b"this is not JSON {"))
    empty = {"request_id": f"{run_id}-14-empty-text", "text": ""}
    out.append(Outgoing(empty["request_id"], json.dumps(empty).encode()))
    return out


def _service(name: str, verb: str) -> bool:
    script = INFRA / f"{name}.sh"
    return subprocess.run([str(script), verb], cwd=ROOT, check=False).returncode == 0


def _ensure_services(console: Console) -> list[str]:
    if not INFRA.is_dir():
        raise SystemExit("voxline demo needs a source checkout (infra/ is missing)")
    if shutil.which("espeak-ng") is None:
        console.print("[bold]installing espeak-ng[/bold]")
        if not _service("packages", "install"):
            raise SystemExit("espeak-ng is missing and infra/packages.sh could not install it")
    started = []
    for name in ("kafka", "s3"):
        if _service(name, "status"):
            console.print(f"{name}: already running")
            continue
        console.print(f"{name}: starting")
        if not _service(name, "start"):
            raise SystemExit(f"could not start {name}: see .infra/ logs")
        started.append(name)
    return started


async def run_demo(console: Console, *, keep_services: bool = False) -> int:
    for key, value in LOCAL_ENV.items():
        os.environ.setdefault(key, value)
    started = await asyncio.to_thread(_ensure_services, console)
    try:
        return await _demo(console)
    finally:
        if not keep_services:
            for name in reversed(started):
                console.print(f"{name}: stopping (started by the demo)")
                await asyncio.to_thread(_service, name, "stop")


async def _demo(console: Console) -> int:
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9092", group_id="voxline-demo"),
        store=StoreSettings(endpoint_url="http://127.0.0.1:8333", region="us-east-1"),
        backends=single_backend("espeak", max_in_flight=4),
    )
    run_id = "demo-" + dt.datetime.now(dt.UTC).strftime("%m%d-%H%M%S")
    requests = demo_requests(run_id)
    async with _processor(settings):
        follower = CompletionFollower(settings.kafka)
        await follower.start()
        t0 = time.monotonic()
        try:
            await produce(settings.kafka, requests)
            console.print(f"submitted {len(requests)} requests (run {run_id}); waiting for events")
            events = await follower.follow({r.request_id for r in requests}, timeout_s=180)
        finally:
            await follower.stop()
    elapsed = time.monotonic() - t0
    console.print(_table(requests, events))
    ok = sum(1 for e in events.values() if e["status"] == "succeeded")
    bad = sum(1 for e in events.values() if e["status"] == "failed")
    console.print(
        f"{ok} succeeded, {bad} dead-lettered, {len(requests) - len(events)} missing, "
        f"in {elapsed:.1f} s"
    )
    expected_ok = len(SAMPLES) + 1  # the samples and the SSML request
    return 0 if ok == expected_ok and bad == len(requests) - expected_ok else 1


@contextlib.asynccontextmanager
async def _processor(settings: Settings) -> AsyncIterator[None]:
    """The processor running in this process from start-up until the block ends."""
    from processor.app import App  # the whole processor: loaded to run it

    app = App(settings)
    server = asyncio.create_task(app.run())
    await asyncio.wait(
        [server, asyncio.create_task(app.started.wait())], return_when=asyncio.FIRST_COMPLETED
    )
    if server.done():
        server.result()  # start-up failed: raise its error
    try:
        yield
    finally:
        app.stop()
        with contextlib.suppress(Exception):
            await server


def _table(requests: list[Outgoing], events: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="voxline demo")
    for col in ("request_id", "outcome", "where", "audio"):
        table.add_column(col, overflow="fold")
    for req in requests:
        event = events.get(req.request_id)
        if event is None:
            table.add_row(req.request_id, "[red]no event[/red]", "", "")
        elif event["status"] == "succeeded":
            audio = event["audio"]
            sidecars = [event.get("marks"), *event.get("subtitles", {}).values()]
            table.add_row(
                req.request_id,
                "[green]succeeded[/green]",
                "\n".join([audio["uri"], *(s for s in sidecars if s)]),
                f"{audio['duration_ms'] / 1000:.2f} s, {audio['sample_rate']} Hz, "
                f"{audio['bytes']} B",
            )
        else:
            dl = event["dead_letter"]
            table.add_row(
                req.request_id,
                f"[yellow]dead-lettered: {event['reason']}[/yellow]",
                f"{dl['topic']} partition {dl['partition']} offset {dl['offset']}",
                event["error"]["message"],
            )
    return table


@click.command()
@click.option(
    "--keep-services", is_flag=True, help="Leave the Kafka broker and S3 store running afterwards."
)
@click.pass_context
def demo(ctx: click.Context, keep_services: bool) -> None:
    """The whole pipeline on this machine: local broker and store, espeak-ng, sample
    requests in English, Chinese and Japanese plus two invalid ones."""
    parent = ctx.parent
    if parent is not None and parent.get_parameter_source("log_level") in (
        click.core.ParameterSource.DEFAULT,
        None,
    ):
        # The demo's output is its table; keep the processor's info lines out of it.
        logs.configure("warning", json=False)

    sys.exit(asyncio.run(run_demo(display.console, keep_services=keep_services)))
