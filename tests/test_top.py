"""coschedctl top (cosched.top): the model and screen text in process, and the real
command against a real coschedd, under a real pseudo-terminal and through a pipe."""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import time

from cosched.top import Model, screen_lines
import pytest

from test_daemon import BASE_CONFIG, COSCHEDCTL, SLEEPER, WAIT, Daemon

BUSY = """
    import trio

    async def main(task):
        while True:
            sum(range(20000))
            await trio.sleep(0.001)
"""


def status(*tasks, uptime=5.0):
    return {"daemon": {"version": "0.1.0", "pid": 42, "uptime": uptime, "rss": 2**20,
                       "cpu_time": 1.0, "cpu_percent": 3.0}, "tasks": list(tasks)}


def task(tid, name, busy, state="waiting"):
    return {"id": tid, "name": name, "job": name, "state": state, "busy": busy, "steps": 1,
            "restarts": 0, "waiting_on": None}


def test_tasks_are_sorted_by_their_share_of_the_last_interval():
    model = Model()
    model.status(status(task(1, "old", 50.0), task(2, "new", 0.0)), now=100.0)
    assert [t["name"] for t in model.rows()] == ["old", "new"]  # no interval yet: total busy
    model.status(status(task(1, "old", 50.0), task(2, "new", 0.5)), now=101.0)
    assert [t["name"] for t in model.rows()] == ["new", "old"]
    assert round(model.share[2]) == 50 and model.share[1] == 0


def test_an_event_updates_the_state_and_adds_new_tasks_at_once():
    model = Model()
    model.status(status(task(1, "a", 1.0)), now=1.0)
    model.event({"time": 2.0, "event": "killed", "task": "a", "id": 1, "job": "a",
                 "state": "killed"})
    model.event({"time": 2.0, "event": "started", "task": "b", "id": 2, "job": "b",
                 "state": "running"})
    assert {t["id"]: t["state"] for t in model.rows()} == {1: "killed", 2: "running"}
    assert "started b[2]" in model.last_event


def test_the_screen_is_cut_to_its_size_and_escapes_what_the_daemon_sent():
    model = Model()
    model.status(status(task(1, "evil\x1b[2Jname", 1.0)), now=1.0)
    lines = screen_lines(model, width=40, height=5)
    assert len(lines) == 5 and all(len(line) < 40 for line in lines)
    assert "pid 42" in lines[0] and "1 alive, 1 listed" in "\n".join(screen_lines(model, 200, 9))
    assert "\x1b" not in "".join(screen_lines(model, 200, 9))
    assert "evil\\x1b[2Jname" in "\n".join(screen_lines(model, 200, 9))


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    daemon = Daemon(tmp_path_factory.mktemp("top"), BASE_CONFIG,
                    {"busybody": BUSY, "sleeper": SLEEPER}, None)
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        daemon.stop()


def test_top_through_a_pipe_prints_one_table_and_exits(d):
    d.wait_task("sleeper", lambda t: t["state"] == "waiting", "waiting")
    rc, out, err = d.ctl("top", json_output=False)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("coschedd ") and "pid" in lines[0]
    assert lines[2].split() == ["ID", "NAME", "STATE", "%BUSY", "BUSY", "STEPS", "RESTARTS",
                                "WAITING-ON"]
    assert ["sleeper", "waiting"] in [line.split()[1:3] for line in lines[3:]]


def on_a_terminal(d, keys: bytes) -> tuple[str, int]:
    """Run `coschedctl top` on a new pseudo-terminal (its controlling terminal, so that
    Ctrl-C works as on a real one) until it shows both tasks, type ``keys``; what it
    showed and its exit code."""
    main, child = os.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 140, 0, 0))

    def take_terminal():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([COSCHEDCTL, "--socket", str(d.socket), "top"], stdin=child,
                            stdout=child, stderr=child, env=dict(os.environ, TERM="xterm"),
                            preexec_fn=take_terminal)
    os.close(child)
    try:
        seen = read_until(main, lambda text: "busybody" in text and "sleeper" in text
                          and "%BUSY" in text)
        os.write(main, keys)
        return seen, proc.wait(WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
        os.close(main)


def test_top_on_a_terminal_shows_the_tasks_and_quits_on_q(d):
    d.wait_task("sleeper", lambda t: t["state"] == "waiting", "waiting")
    seen, code = on_a_terminal(d, b"q")
    assert "coschedd 0.1.0" in seen and code == 0


def test_top_quits_on_ctrl_c(d):
    seen, code = on_a_terminal(d, b"\x03")
    assert "busybody" in seen and code == 0


def read_until(fd: int, done, timeout: float = WAIT) -> str:
    """What the terminal received until ``done(text)``; fails the test after ``timeout``."""
    text, deadline = "", time.monotonic() + timeout
    while not done(text):
        left = deadline - time.monotonic()
        assert left > 0, f"the screen never showed what was expected:\n{text[-2000:]!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                text += os.read(fd, 65536).decode("utf-8", "replace")
            except OSError:  # EIO: the program closed the terminal
                break
    return text


def test_other_commands_do_not_load_the_screen_library():
    code = ("import sys, cosched.ctl as c; c.main(['--socket', '/nonexistent', 'ping']); "
            "print('curses' in sys.modules, 'cosched.top' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=WAIT).stdout
    assert out.strip() == "False False"
