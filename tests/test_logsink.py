"""The log sink: a full disk or an unread pipe never blocks or crashes the daemon."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from cosched.logsink import LogSink
from test_daemon import BASE_CONFIG, COSCHEDCTL, COSCHEDD, SLEEPER, WAIT, merged, render_toml, \
    write_job

CHATTY = """
    import trio

    async def main(task):
        for i in range(40_000):   # 6 MB of lines: more than the 4 MB queue and a pipe hold
            task.log.info("chatter", i=i, pad="x" * 100)
            if i % 1000 == 0:
                await trio.sleep(0)
        await trio.sleep(1000)
"""


def test_sink_counts_lines_it_cannot_write():
    with open("/dev/full", "wb") as full:
        sink = LogSink(full.fileno())
        for _ in range(10):
            sink.write("a line\n")
        assert sink.drain(WAIT)
    assert sink.dropped >= 1


def test_sink_drops_when_the_queue_is_full_without_blocking():
    r, w = os.pipe()
    try:
        sink = LogSink(w, max_queued=10_000)
        began = time.monotonic()
        for _ in range(10_000):   # far more than a pipe and the queue hold
            sink.write("x" * 99 + "\n")
        assert time.monotonic() - began < WAIT
        assert sink.dropped > 0
        data = os.read(r, 1 << 20)
        assert data.startswith(b"x" * 99 + b"\n")
    finally:
        os.close(r)


def _start(tmp_path: Path, stderr, jobs: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    (tmp_path / "jobs").mkdir()
    for name, source in jobs.items():
        write_job(tmp_path / "jobs", name, source)
    config = tmp_path / "coschedd.toml"
    config.write_text(render_toml(merged(BASE_CONFIG, {"log": {"level": "info"}})))
    proc = subprocess.Popen([COSCHEDD, "--config", str(config)], stdout=stderr, stderr=stderr,
                            stdin=subprocess.DEVNULL, cwd=tmp_path)
    return proc, tmp_path / "run" / "coschedd.sock"


def _status(sock: Path) -> dict | None:
    import json
    proc = subprocess.run([COSCHEDCTL, "--socket", str(sock), "--json", "status"],
                          capture_output=True, text=True, timeout=30)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def _wait(pred, sock: Path) -> dict:
    deadline = time.monotonic() + 30
    while True:
        s = _status(sock)
        if s is not None and pred(s):
            return s
        assert time.monotonic() < deadline, s
        time.sleep(0.1)


@pytest.mark.parametrize("where", ["dev-full", "unread-pipe"])
def test_daemon_outlives_a_log_it_cannot_write(tmp_path, where):
    if where == "dev-full":
        out = open("/dev/full", "wb")
        keep = None
    else:
        r, w = os.pipe()
        out, keep = os.fdopen(w, "wb"), r   # nobody reads r
    try:
        proc, sock = _start(tmp_path, out, {"chatty": CHATTY, "bystander": SLEEPER})
        try:
            s = _wait(lambda s: s["daemon"]["dropped_log_lines"] > 0
                      and all(t["state"] == "waiting" for t in s["tasks"]), sock)
            assert {t["name"] for t in s["tasks"]} == {"chatty", "bystander"}
            assert proc.poll() is None
            proc.terminate()
            proc.wait(WAIT + 5)   # stops although its last lines cannot be written
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        out.close()
        if keep is not None:
            os.close(keep)

