"""The dashboard and the alert rules against a real Prometheus (Debian's package) scraping a
live processor under load: every PromQL expression must evaluate without error, the
dashboard's and the recording rules' must return series, every metric they name must exist,
and ``promtool check rules`` must pass. A missing ``prometheus`` is a failure (``make setup``
installs it)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.openai_server import running_fake
from tests.integration.harness import produce, request, running, unique_settings, wait_for_events
from tests.integration.services import Services

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "voxline-dashboard.json"
RULES = DEPLOY / "prometheus" / "voxline-rules.yaml"
#: What the dashboard's Grafana variables stand for when the test evaluates its queries.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "1s"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: `make setup` installs it (infra/platform.sh)")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every query of the dashboard, variables substituted."""
    out = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            out.append((panel["title"], expr))
    return out


def rule_exprs() -> list[tuple[str, str, str]]:
    """(kind, name, expression) of every rule, read from the file's plain YAML structure."""
    out: list[tuple[str, str, str]] = []
    lines = RULES.read_text().splitlines()
    for i, line in enumerate(lines):
        found = re.match(r"\s+- (record|alert): (\S+)", line)
        if not found:
            continue
        expr_line = next(ln for ln in lines[i + 1 :] if ln.strip().startswith("expr:"))
        indent = len(expr_line) - len(expr_line.lstrip())
        text = expr_line.split("expr:", 1)[1].strip()
        if text == ">-":  # a folded block: the more-indented lines after it
            start = lines.index(expr_line, i) + 1
            block = []
            for ln in lines[start:]:
                if ln.strip() and len(ln) - len(ln.lstrip()) <= indent:
                    break
                block.append(ln.strip())
            text = " ".join(b for b in block if b)
        out.append((found.group(1), found.group(2), text))
    return out


def test_promtool_checks_the_rules() -> None:
    done = subprocess.run(
        [tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = [k for k, _, _ in rule_exprs()]
    assert f"SUCCESS: {len(kinds)} rules found" in done.stdout, "the test reads every rule"
    assert kinds.count("alert") >= 5


@contextlib.contextmanager
def prometheus(tmp: Path, target_port: int) -> Iterator[str]:
    """Prometheus on 127.0.0.1 scraping ``target_port`` every second, with the rules (their
    groups evaluated every second too); yields its base URL."""
    rules = tmp / "rules.yaml"
    rules.write_text(re.sub(r"interval: \d+s", "interval: 1s", RULES.read_text()))
    config = tmp / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{rules}]\n"
        "scrape_configs:\n"
        "  - job_name: voxline\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n"
    )
    port = free_port()
    log = (tmp / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            tool("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@dataclasses.dataclass
class Api:
    http: httpx.AsyncClient

    async def get(self, path: str, **params: str) -> Any:
        response = await self.http.get(path, params=params)
        body = response.json()
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    async def query(self, expr: str) -> list[Any]:
        data = await self.get("/api/v1/query", query=expr)
        result: list[Any] = data["result"]
        return result


@contextlib.asynccontextmanager
async def api(base: str) -> AsyncIterator[Api]:
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        for _ in range(600):  # up to 60 s for start-up
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/-/ready")).status_code == 200:
                    break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("prometheus did not become ready within 60 s")
        yield Api(http)


async def test_every_dashboard_and_rule_expression_returns_series(
    services: Services, tmp_path: Path
) -> None:
    metrics_port = free_port()
    ids = [f"prom-{i}" for i in range(120)]
    bad = [f"prom-bad-{i}" for i in range(6)]
    async with running_fake(latency_ms=20, error_ratio=0.2, seed=7) as fake:
        settings = dataclasses.replace(
            unique_settings(
                services, "prom", backend="openai", backend_url=fake.url, max_in_flight=4
            ),
            http_port=metrics_port,
            park_after_s=1.0,  # the outage parks records too
        )
        async with running(settings), api_with_prometheus(tmp_path, metrics_port) as prom:
            await produce(settings, [request(rid, "A short line to speak.") for rid in ids[:60]])
            await produce(settings, [(rid.encode(), b"not json") for rid in bad])
            fake.set(down=True)  # an outage long enough to open the breaker
            await produce(settings, [request(rid, "Spoken after the outage.") for rid in ids[60:]])
            await wait_for_series(prom, 'voxline_breaker_transitions_total{to="open"} > 0')
            await wait_for_series(prom, "voxline_parked_total > 0")
            fake.set(down=False)
            await wait_for_events(settings, {*ids, *bad}, timeout=180)
            missing = await wait_until_all_answer(prom)
            assert not missing, "expressions that returned no series:\n" + "\n".join(missing)
            await check_rules_and_names(prom)


@contextlib.asynccontextmanager
async def api_with_prometheus(tmp: Path, target_port: int) -> AsyncIterator[Api]:
    with prometheus(tmp, target_port) as base:
        async with api(base) as prom:
            yield prom


async def wait_for_series(prom: Api, expr: str) -> None:
    for _ in range(120):
        if await prom.query(expr):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"no series for {expr} was scraped within 60 s")


def alert_condition(expr: str) -> str:
    """An alert's expression made to answer for every series it looks at: each comparison
    with ``bool`` (0 or 1 instead of a filter), ``absent(x)`` as ``x``. Empty means the
    expression matches no series at all (a wrong name or label), not that all is well."""
    inner = re.fullmatch(r"absent\((.*)\)", expr.strip())
    if inner:
        return inner.group(1)
    return re.sub(r"(==|!=|>=|<=|>|<)\s*", r"\1 bool ", expr)


async def wait_until_all_answer(prom: Api) -> list[str]:
    """Polls until every dashboard query, recording rule and alert condition returns series
    (up to 60 s, as rates need two scrapes after the load and recording rules an evaluation);
    returns the ones that still return none."""
    wanted = [(f"dashboard {t!r}", e) for t, e in dashboard_queries()]
    for kind, name, expr in rule_exprs():
        wanted.append((f"{kind} {name}", name if kind == "record" else alert_condition(expr)))
    missing = wanted
    for _ in range(60):
        missing = [(what, e) for what, e in missing if not await prom.query(e)]
        if not missing:
            break
        await asyncio.sleep(1)
    return [f"{what}: {e}" for what, e in missing]


async def check_rules_and_names(prom: Api) -> None:
    # Every rule's own expression evaluates (an alert's is empty unless it fires).
    for _kind, _name, expr in rule_exprs():
        await prom.query(expr)
    groups = (await prom.get("/api/v1/rules"))["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(loaded) == {name for _, name, _ in rule_exprs()}
    for name, rule in loaded.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))
    # A misspelled metric would hide behind `or`: every name used must exist.
    names = set(await prom.get("/api/v1/label/__name__/values"))
    text = DASHBOARD.read_text() + RULES.read_text()
    used = {n for n in re.findall(r"\bvoxline_[a-z_]+", text) if not n.endswith("_")}
    assert used, "the test found no metric names"
    assert used <= names, f"not exported by the processor: {sorted(used - names)}"
