"""ARCHITECTURE.md stays true: it names every module of processor/, and every module it
names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAP = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8").split("```")[1]


def modules() -> set[str]:
    """processor/ modules as the map names them: a package's path, a module's file name."""
    found = set()
    for path in (ROOT / "processor").rglob("*.py"):
        if path.name in ("__init__.py", "__main__.py") and path.parent.name != "reconcile":
            continue
        found.add(path.name)
    return found


def test_every_module_is_on_the_map() -> None:
    named = set(re.findall(r"[a-z0-9_]+\.py", MAP))
    missing = sorted(m for m in modules() if m not in named and m != "__init__.py")
    assert missing == [], f"add these to ARCHITECTURE.md: {missing}"


def test_every_module_on_the_map_exists() -> None:
    named = set(re.findall(r"[a-z0-9_]+\.py", MAP))
    gone = sorted(named - modules())
    assert gone == [], f"ARCHITECTURE.md names modules that do not exist: {gone}"


def test_no_module_is_over_400_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / "processor").rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400
    }
    assert long == {}
