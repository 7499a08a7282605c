"""The fault suite prints every scenario's figures again at the end of the run."""

from __future__ import annotations

import json

import pytest

from tests.faults import support


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not support.RECORDED:
        return
    write = terminalreporter.write_line
    terminalreporter.section("fault suite figures")
    columns = ("requests", "succeeded", "dead_lettered", "lost", "duplicates", "dup_allowed")
    keys = dict(zip(columns, (*columns[:-1], "duplicates_allowed"), strict=True))
    head = "".join(f"{c:>14}" for c in columns)
    write(f"{'scenario':<18}{head}{'recovery_s':>12}{'wall_s':>9}  dead-lettered by reason")
    for figures in support.RECORDED:
        cells = "".join(f"{_cell(figures.get(keys[c])):>14}" for c in columns)
        tail = f"{_cell(figures.get('recovery_s')):>12}{_cell(figures.get('wall_s')):>9}"
        reasons = figures.get("dead_lettered_by_reason") or {}
        write(f"{figures['scenario']:<18}{cells}{tail}  {reasons or '-'}")
    write(f"(one JSON line per scenario in {support.results_path()})")
    for figures in support.RECORDED:
        write(json.dumps(figures))


def _cell(value: object) -> str:
    return "-" if value is None else str(value)
