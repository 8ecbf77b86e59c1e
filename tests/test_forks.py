"""A job that forks: the child never acts as the daemon, and is reaped when it exits."""

from __future__ import annotations

import os
import time

import psutil

from test_daemon import WAIT, daemon  # noqa: F401
from test_supervisor import bystander_ok, start_with_bystander

FORKER = """
    import os
    from pathlib import Path

    import trio

    async def main(task):
        pid = os.fork()
        if pid == 0:
            # The child runs on, as if it were the daemon: it returns to the event loop.
            Path(task.config["childfile"]).write_text(str(os.getpid()))
            if task.config.get("exit"):
                raise SystemExit(0)
            await trio.sleep(1000)
        await trio.sleep(1000)
"""


def _wait_for(path, d) -> int:
    deadline = time.monotonic() + WAIT
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, d.log_tail()
        time.sleep(0.05)
    return int(path.read_text())


def _gone(pid: int) -> bool:
    """Exited and reaped (a zombie still has its process entry)."""
    try:
        psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    return False


def test_forked_child_never_serves_and_is_reaped(daemon, tmp_path):
    childfile = tmp_path / "child.pid"
    d, by = start_with_bystander(daemon, {"forker": FORKER}, {
        "jobs": {"restart": "no"}, "job": {"forker": {"config": {"childfile": str(childfile)}}}})
    child = _wait_for(childfile, d)
    assert child != d.proc.pid
    deadline = time.monotonic() + WAIT
    while not _gone(child):   # it exits as it returns to the loop, and the daemon reaps it
        assert time.monotonic() < deadline, (psutil.Process(child).status(), d.log_tail())
        time.sleep(0.05)
    # Every answer comes from the daemon itself, and its socket is still there.
    for _ in range(5):
        assert d.ok("ping")["pid"] == d.proc.pid
    assert d.socket.exists()
    assert [c.pid for c in psutil.Process(d.proc.pid).children()
            if c.status() == psutil.STATUS_ZOMBIE] == []
    assert any(r.get("event") == "process forked by a task exited" and r.get("pid") == child
               for r in d.log_records()), d.log_tail()
    bystander_ok(d, by)


def test_forked_child_that_exits_leaves_the_socket_alone(daemon, tmp_path):
    childfile = tmp_path / "child.pid"
    d, by = start_with_bystander(daemon, {"forker": FORKER}, {
        "jobs": {"restart": "no"},
        "job": {"forker": {"config": {"childfile": str(childfile), "exit": True}}}})
    child = _wait_for(childfile, d)
    deadline = time.monotonic() + WAIT
    while not _gone(child):
        assert time.monotonic() < deadline, d.log_tail()
        time.sleep(0.05)
    assert d.socket.exists()
    assert os.path.exists(d.socket)
    assert d.ok("ping")["pid"] == d.proc.pid
    bystander_ok(d, by)
