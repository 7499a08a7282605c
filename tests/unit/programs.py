"""System programs that some tests run for real (espeak-ng, ffmpeg)."""

from __future__ import annotations

import os
import shutil

import pytest


def required(program: str) -> str:
    """The path of ``program``. Missing, it fails the test under CI=true (CI installs it) and
    skips it elsewhere, saying how to install it."""
    path = shutil.which(program)
    if path is None:
        hint = (
            f"{program} is not installed: run `bash infra/packages.sh` "
            f"(or `apt-get install {program}`) to run these tests"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(hint)
        pytest.skip(hint)
    return path
