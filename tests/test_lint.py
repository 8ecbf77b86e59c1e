"""ruff and mypy, as configured in pyproject.toml, pass on the package and the tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_ruff():
    proc = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", "cosched", "tests"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_on_the_public_api():
    proc = subprocess.run([str(BIN / "mypy")], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
