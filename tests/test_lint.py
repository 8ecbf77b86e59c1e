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


def test_job_authors_get_the_coroutine_api_typed(tmp_path):
    """cosched.coro's stub reaches a job author's type checker: a misuse is caught."""
    job = tmp_path / "typed_job.py"
    job.write_text(
        "from cosched import coro\n\n"
        "async def body(a: int) -> int:\n"
        "    await coro.yield_(a)\n"
        "    return a\n\n"
        "async def main(task: object) -> None:\n"
        "    co = coro.create(body)\n"
        "    ok, *values = await coro.resume(co, 1)\n"
        "    state: str = coro.status(co)\n"
        "    wrong: int = coro.status(co)\n")
    proc = subprocess.run([str(BIN / "mypy"), "--strict", "--no-incremental", str(job)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and "typed_job.py:11" in errors[0] and "Literal" in errors[0], errors
