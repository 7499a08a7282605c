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
    columns = ("requests", "succeeded", "dead_lettered", "lost", "duplicates", "recovery_s")
    write(f"{'scenario':<22}" + "".join(f"{c:>15}" for c in columns) + f"{'wall_s':>10}")
    for figures in support.RECORDED:
        cells = "".join(f"{_cell(figures.get(c)):>15}" for c in columns)
        write(f"{figures['scenario']:<22}{cells}{_cell(figures.get('wall_s')):>10}")
    write(f"(one JSON line per scenario in {support.results_path()})")
    for figures in support.RECORDED:
        write(json.dumps(figures))


def _cell(value: object) -> str:
    return "-" if value is None else str(value)
