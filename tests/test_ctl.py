"""Tests of coschedctl: the real CLI in a subprocess against the real control server,
which runs in a background thread with a recording backend of our own."""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pytest
import trio

from cosched import ctl, protocol
from cosched.control import serve
from cosched.protocol import ControlError

REPO = Path(__file__).resolve().parent.parent
WAIT = 10  # seconds; bound of every wait

TASK = {"id": 7, "name": "ticker", "job": "ticker", "state": "suspended",
        "waiting_on": "trio.sleep at jobs/ticker.py:12", "busy": 1.23, "steps": 42,
        "age": 184.0, "restarts": 0, "yielded": [1, "x"], "error": None}


# status --job NAME of these answers with many tasks: (how many, a name to put in one)
MANY = {"some": (30, None), "big": (12_000, None), "big-unicode": (12_000, "t\u00e2che\u202e")}


def many_tasks(n, odd_name=None):
    """n tasks with names, busy times and steps in an order unlike their ids'."""
    tasks = [dict(TASK, id=i, name=f"t{(i * 7919) % n:05d}", busy=((i * 31) % 97) / 1000,
                  steps=(i * 13) % 50, age=100.0 + i % 3) for i in range(n)]
    tasks[3]["busy"] = None   # a task without a figure sorts last
    if odd_name is not None:
        tasks[n // 2]["name"] = odd_name
    return tasks


class Backend:
    """Answers like the supervisor; records calls. Task "missing" does not exist;
    resuming task "done", "broken" or "slow" finishes, fails or keeps running."""

    def __init__(self, socket_path):
        self.socket_path = socket_path
        self.calls = []

    def _task(self, task):
        if task == "missing":
            raise ControlError("no-such-task", f"no task {task!r}")
        return TASK

    def status(self, task, job=None, state=None, columns=None, pages=False, limit=None):
        self.calls.append(("status", task) if job is None and state is None
                          else ("status", task, job, state))
        self.columns, self.pages, self.limit = columns, pages, limit
        tasks = [TASK] if task is None else [self._task(task)]
        if job in MANY:
            tasks = many_tasks(*MANY[job])
        if columns is not None:   # as coschedd answers: each task an array of those fields
            tasks = [[t.get(c) for c in columns] for t in tasks]
        cut = {} if limit is None else {"num_matching": len(tasks)}   # as coschedd does
        return {
            "daemon": {"pid": 4321, "uptime": 3700.0, "rss": 12 * 1024 * 1024,
                       "cpu_time": 1.25, "cpu_percent": 0.5, "num_tasks": 1,
                       "version": "0.1.0", "jobs_dir": "/srv/jobs", "socket": self.socket_path},
            "tasks": tasks if limit is None else tasks[:limit],
            "job_errors": [{"job": "broken", "path": "/srv/jobs/broken.py",
                            "error": "SyntaxError: invalid syntax (line 3)"}],
            **cut,
        }

    def show(self, task):
        self.calls.append(("show", task))
        return dict(self._task(task), stack=[
            {"file": "jobs/ticker.py", "line": 3, "function": "main"},
            {"file": "jobs/ticker.py", "line": 12, "function": "tick"},
        ], traceback="Traceback (most recent call last):\nValueError: old", longest_step=0.25,
            switches=99, started_at=1_700_000_000.0, config={"every": 5}, parent_task=3)

    async def resume(self, task, values, timeout):
        self.calls.append(("resume", task, values, timeout))
        outcome = {"done": "finished", "broken": "failed", "slow": "running"}.get(task, "yielded")
        error = "ValueError: bad value" if outcome == "failed" else None
        return {"task": self._task(task), "outcome": outcome,
                "values": None if error or outcome == "running" else values, "error": error}

    async def kill(self, task):
        self.calls.append(("kill", task))
        return {"task": dict(self._task(task), state="killed")}

    async def start(self, job, force=False):
        self.calls.append(("start", job) if not force else ("start", job, "force"))
        return {"task": dict(TASK, id=8, job=job, state="starting")}

    async def reload(self):
        self.calls.append(("reload",))
        return {"loaded": ["ticker", "mailer"], "removed": ["old"],
                "errors": [{"job": "broken", "path": "/srv/jobs/broken.py", "error": "boom"}]}

    def jobs(self):
        self.calls.append(("jobs",))
        return {"jobs": [
            {"name": "ticker", "path": "/srv/jobs/ticker.py", "state": "loaded", "error": None,
             "tasks": [7, 8]},
            {"name": "broken", "path": "/srv/jobs/broken.py", "state": "error",
             "error": "boom", "tasks": []},
        ]}


    async def history(self, target=None, since=None, limit=50):
        self.calls.append(("history", target, since, limit))
        return {"recording": True, "more": True, "events": [
            {"seq": 1, "time": 1_700_000_000.0, "task": 7, "name": "ticker", "job": "ticker",
             "event": "suspended", "values": ["q?", {"a": 1}]},
            {"seq": 2, "time": 1_700_000_001.0, "task": 7, "name": "ticker", "job": "ticker",
             "event": "failed", "error": "ValueError: bad\x1b[2J",
             "traceback": "Traceback (most recent call last):\nValueError: bad\n"},
            {"seq": 3, "time": 1_700_000_002.0, "task": None, "name": None, "job": "ticker",
             "event": "run-skipped", "due": 1_700_000_002.0, "alive": [7]},
        ]}


class ServerThread:
    """``serve`` in its own thread with its own trio.run; ``stop`` cancels and joins it."""

    def __init__(self, path):
        self.path = path
        self.backend = Backend(str(path))
        self.ready = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self):
        self.token = trio.lowlevel.current_trio_token()
        self.scope = trio.CancelScope()
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(partial(serve, self.path, 0o660, self.backend,
                                                max_line=65536))
                    self.ready.set()
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.ready.set()

    def start(self):
        self.thread.start()
        assert self.ready.wait(WAIT), "server did not start"
        assert self.error is None, self.error

    def stop(self):
        if self.thread.is_alive():
            self.token.run_sync_soon(self.scope.cancel)
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "server thread did not stop"


@pytest.fixture
def daemon(tmp_path):
    server = ServerThread(tmp_path / "c.sock")
    server.start()
    yield server
    server.stop()


def coschedctl(*args, env=None):
    """Run the CLI; COSCHED_SOCKET comes only from ``env``."""
    environ = {k: v for k, v in os.environ.items() if k != "COSCHED_SOCKET"}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environ.get("PYTHONPATH")]))
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "cosched.ctl", *map(str, args)], cwd=REPO,
                          env=environ, capture_output=True, text=True, timeout=WAIT)


def at(daemon, *args):
    return coschedctl("--socket", daemon.path, *args)


# -- rendering ----------------------------------------------------------------------

def test_status_prints_daemon_header_task_table_and_job_errors(daemon):
    proc = at(daemon, "status")
    assert proc.returncode == ctl.EXIT_OK, proc.stderr
    lines = proc.stdout.splitlines()
    header = lines[0]
    for part in ("pid 4321", "up 1h01m", "mem 12.0 MiB", "cpu 1.2s (0.5%)", "0.1.0"):
        assert part in header, header
    columns = next(line for line in lines if line.startswith("ID"))
    assert columns.split() == ["ID", "NAME", "STATE", "WAITING-ON", "BUSY", "STEPS", "AGE"]
    row = next(line for line in lines if line.startswith("7 "))
    assert row.split() == ["7", "ticker", "suspended", "trio.sleep", "at", "jobs/ticker.py:12",
                           "1.2s", "42", "3m04s"]
    assert "broken (/srv/jobs/broken.py): SyntaxError: invalid syntax (line 3)" in proc.stdout
    assert daemon.backend.calls == [("status", None)]
    assert daemon.backend.columns == list(ctl._TABLE_FIELDS)   # rows came as arrays


def daemon_before(monkeypatch, daemon, *newer: str) -> None:
    """Make ``daemon`` one from before these status arguments (upgraded, not yet
    restarted): it refuses them, and its backend must never be asked with them."""
    old = protocol.COMMANDS["status"]
    args = {k: v for k, v in old.args.items() if k not in newer}
    monkeypatch.setitem(protocol.COMMANDS, "status", old._replace(args=args))
    real = daemon.backend.status

    def status(task, job=None, state=None, **known):
        assert not set(known) & set(newer), known
        return real(task, job, state, **known)
    monkeypatch.setattr(daemon.backend, "status", status)


def test_status_table_from_a_daemon_that_predates_columns(daemon, monkeypatch):
    """Upgraded but not yet restarted, a daemon refuses "columns" (and "pages" and
    "limit", newer still): the table is drawn from its objects (asked again without
    them)."""
    daemon_before(monkeypatch, daemon, "columns", "pages", "limit")
    proc = at(daemon, "status")
    assert proc.returncode == ctl.EXIT_OK, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("7 "))
    assert row.split()[:3] == ["7", "ticker", "suspended"]
    assert daemon.backend.calls == [("status", None)]   # the refused request never got here


@pytest.mark.parametrize("json_out", [False, True])
def test_status_from_a_daemon_that_predates_pages(daemon, monkeypatch, json_out):
    """A daemon that knows "columns" but refuses "pages" is asked again without them:
    the same table, the same JSON."""
    expected = at(daemon, *(["--json"] if json_out else []), "status").stdout
    daemon_before(monkeypatch, daemon, "pages", "limit")
    daemon.backend.calls.clear()
    proc = at(daemon, *(["--json"] if json_out else []), "status")
    assert proc.returncode == ctl.EXIT_OK, proc.stderr
    assert daemon.backend.calls == [("status", None)]   # the refused request never got here
    assert _without_uptime(proc.stdout) == _without_uptime(expected)


def _without_uptime(text: str) -> str:
    return re.sub(r"(up |\"uptime\":)[0-9.a-z]+", "", text)


def test_status_rows_come_as_objects_for_json_and_views(daemon):
    """--json prints the daemon's rows as they are, and --sort/--limit sort objects: the
    table alone asks for arrays. The table and --json ask for pages; a view sorts or cuts
    the whole answer, so it asks for one line."""
    for argv in (["--json", "status"], ["status", "--sort", "busy"], ["status", "--limit", "1"]):
        proc = at(daemon, *argv)
        assert proc.returncode == ctl.EXIT_OK, proc.stderr
        assert daemon.backend.columns is None, argv
        assert daemon.backend.pages is (argv[0] == "--json"), argv
    at(daemon, "status")
    assert daemon.backend.pages is True and daemon.backend.columns == list(ctl._TABLE_FIELDS)
    assert json.loads(at(daemon, "--json", "status").stdout)["tasks"][0]["name"] == "ticker"


def test_status_filters_reach_the_daemon(daemon):
    assert at(daemon, "status", "--job", "ticker", "--state", "suspended").returncode == ctl.EXIT_OK
    assert at(daemon, "status", "--state", "failed").returncode == ctl.EXIT_OK
    assert daemon.backend.calls == [("status", None, "ticker", "suspended"),
                                    ("status", None, None, "failed")]


def test_status_with_an_unknown_state_is_a_usage_error(daemon):
    proc = at(daemon, "status", "--state", "sleepy")
    assert proc.returncode == ctl.EXIT_USAGE
    assert "invalid choice: 'sleepy'" in proc.stderr
    assert daemon.backend.calls == []


def test_task_argument_is_an_int_id_or_a_name(daemon):
    assert at(daemon, "status", "7").returncode == ctl.EXIT_OK
    assert at(daemon, "show", "ticker").returncode == ctl.EXIT_OK
    assert daemon.backend.calls == [("status", 7), ("show", "ticker")]


def test_show_prints_fields_yielded_stack_and_traceback(daemon):
    proc = at(daemon, "show", "7")
    assert proc.returncode == ctl.EXIT_OK, proc.stderr
    out = proc.stdout
    for line in ("name: ticker", "state: suspended",
                 "waiting on: trio.sleep at jobs/ticker.py:12", "busy: 1.2s",
                 "longest step: 250ms", "switches: 99", 'yielded: [1, "x"]',
                 'config: {"every": 5}', "parent task: 3", "  jobs/ticker.py:3 main",
                 "  jobs/ticker.py:12 tick",
                 "  ValueError: old"):
        assert line in out.splitlines(), (line, out)
    assert out.index("stack:") < out.index("traceback:")


def test_json_prints_the_raw_result(daemon):
    before = json.loads(at(daemon, "--json", "jobs").stdout)
    after = json.loads(at(daemon, "jobs", "--json").stdout)
    assert before == after == daemon.backend.jobs()


def test_resume_parses_each_value_as_json_else_string(daemon):
    proc = at(daemon, "resume", "t", "1", '"x"', "abc", '{"a":1}', "NaN", "-2")
    assert proc.returncode == ctl.EXIT_OK, proc.stderr
    values = [1, "x", "abc", {"a": 1}, "NaN", -2]
    assert daemon.backend.calls == [("resume", "t", values, 30.0)]
    assert proc.stdout.strip() == "yielded: " + json.dumps(values)


def test_resume_daemon_wait_stays_within_the_client_timeout(daemon):
    assert at(daemon, "--timeout", "4", "resume", "t").returncode == ctl.EXIT_OK
    _, _, _, wait = daemon.backend.calls[0]
    assert 0 < wait < 4


def test_resume_prints_each_outcome(daemon):
    outputs = [at(daemon, "resume", task, "5").stdout.strip()
               for task in ("done", "broken", "slow")]
    # A finished task's result prints as `show` prints it: one value as itself.
    assert outputs == ["finished: 5", "failed: ValueError: bad value", "still running"]


def test_kill_start_reload_jobs_and_ping_print_their_results(daemon):
    assert at(daemon, "kill", "7").stdout.strip() == "killed task 7 (ticker, job ticker): killed"
    assert at(daemon, "start", "mailer").stdout.strip() == \
        "started task 8 (ticker, job mailer): starting"
    reload = at(daemon, "reload").stdout
    assert "loaded: ticker, mailer" in reload and "removed: old" in reload
    assert "broken (/srv/jobs/broken.py): boom" in reload
    jobs = at(daemon, "jobs").stdout.splitlines()
    assert jobs[0].split() == ["NAME", "STATE", "TASKS", "PATH"]
    assert jobs[1].split() == ["ticker", "loaded", "7,8", "/srv/jobs/ticker.py"]
    assert at(daemon, "ping").stdout.strip() == f"pong from coschedd pid {os.getpid()}"
    assert [c[0] for c in daemon.backend.calls] == ["kill", "start", "reload", "jobs"]


# -- exit codes -------------------------------------------------------------------

def test_refused_request_exits_1_with_code_and_message(daemon):
    proc = at(daemon, "show", "missing")
    assert proc.returncode == ctl.EXIT_REFUSED == 1
    assert proc.stderr.strip() == "coschedctl: no-such-task: no task 'missing'"
    assert proc.stdout == ""


@pytest.mark.parametrize("args", [["frobnicate"], ["show"], [], ["--timeout", "-1", "ping"]])
def test_usage_error_exits_2(daemon, args):
    proc = at(daemon, *args)
    assert proc.returncode == ctl.EXIT_USAGE == 2, proc.stderr
    assert "usage:" in proc.stderr
    assert daemon.backend.calls == []


def test_help_prints_the_module_docstring(tmp_path):
    proc = coschedctl("--help")
    assert proc.returncode == ctl.EXIT_OK
    assert proc.stdout == ctl.__doc__


def test_missing_socket_exits_3_naming_the_path(tmp_path):
    missing = tmp_path / "absent.sock"
    proc = coschedctl("--socket", missing, "ping")
    assert proc.returncode == ctl.EXIT_UNREACHABLE == 3
    assert proc.stderr.startswith(f"coschedctl: cannot reach coschedd at {missing}: ")


def test_silent_daemon_exits_3_after_the_timeout(tmp_path):
    path = tmp_path / "mute.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mute:
        mute.bind(str(path))
        mute.listen()  # accepts (in the kernel) but never answers
        proc = coschedctl("--socket", path, "--timeout", "0.5", "ping")
    assert proc.returncode == ctl.EXIT_UNREACHABLE
    assert f"cannot reach coschedd at {path}: no answer within 0.5s" in proc.stderr


def test_cosched_socket_environment_variable_is_honoured(daemon, tmp_path):
    proc = coschedctl("ping", env={"COSCHED_SOCKET": str(daemon.path)})
    assert proc.returncode == ctl.EXIT_OK, proc.stderr
    assert "pong" in proc.stdout


def test_socket_option_overrides_the_environment(daemon, tmp_path):
    proc = coschedctl("--socket", daemon.path, "ping",
                      env={"COSCHED_SOCKET": str(tmp_path / "absent.sock")})
    assert proc.returncode == ctl.EXIT_OK, proc.stderr


# -- helpers, in process ------------------------------------------------------------

def test_durations_are_human_readable():
    assert [ctl.fmt_duration(s) for s in (0, 0.000224, 0.35, 0.9999, 1.23, 59.0, 184, 7500,
                                          200000, None)] == \
        ["0s", "0.2ms", "350ms", "1.0s", "1.2s", "59.0s", "3m04s", "2h05m", "2d07h", "-"]


def test_default_socket_prefers_the_environment():
    assert ctl.default_socket_path({"COSCHED_SOCKET": "/x/y.sock"}) == "/x/y.sock"


def test_default_socket_falls_back_to_xdg_runtime_dir_without_config(monkeypatch):
    monkeypatch.setitem(sys.modules, "cosched.config", None)  # the import fails
    assert ctl.default_socket_path({"XDG_RUNTIME_DIR": "/run/user/5"}) == \
        "/run/user/5/cosched/coschedd.sock"


# -- what the daemon says is escaped; --json stays exact --------------------------

class Impostor:
    """Whatever listens on the socket path: answers every connection's first request
    with ``answer`` (raw bytes), as an impostor or a broken daemon might."""

    def __init__(self, path, answer):
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen()
        self.answer = answer
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\n" not in data and (chunk := conn.recv(4096)):
                    data += chunk
                conn.sendall(self.answer)

    def close(self):
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(WAIT)


def ok_line(result):
    return json.dumps({"id": 1, "ok": True, "result": result}).encode() + b"\n"


EVIL = "x\x1b]0;pwned\x07\x1b[2J\nFAKE\x9b31m\u202e" + os.fsdecode(b"\xff")
UNSAFE_BYTES = (b"\x1b", b"\x07", b"\xc2\x9b", b"\xe2\x80\xae", b"\xff")


def raw_ctl(*args, env=None):
    environ = {k: v for k, v in os.environ.items() if k != "COSCHED_SOCKET"}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environ.get("PYTHONPATH")]))
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "cosched.ctl", *map(str, args)], cwd=REPO,
                          env=environ, capture_output=True, timeout=WAIT)


@pytest.mark.parametrize("cmd, result", [
    ("status", {"daemon": {"version": EVIL, "jobs_dir": EVIL}, "tasks": [
        {"id": EVIL, "name": EVIL, "state": EVIL, "waiting_on": EVIL, "busy": EVIL}],
        "job_errors": [{"job": EVIL, "path": EVIL, "error": EVIL}]}),
    ("show", {"name": EVIL, "error": EVIL, "yielded": [EVIL], "config": {EVIL: EVIL},
              EVIL: EVIL, "stack": [{"file": EVIL, "line": EVIL, "function": EVIL}],
              "traceback": EVIL, "started_at": 1e300}),
    ("jobs", {"jobs": [{"name": EVIL, "state": EVIL, "tasks": [EVIL], "path": EVIL,
                        "error": EVIL}]}),
    ("resume", {"outcome": "failed", "error": EVIL}),
    ("resume", {"outcome": EVIL, "values": [EVIL]}),
    ("reload", {"loaded": [EVIL], "removed": [EVIL], "errors": [{"job": EVIL}]}),
    ("kill", {"task": {"id": EVIL, "name": EVIL, "job": EVIL, "state": EVIL}}),
    ("ping", {"pid": EVIL}),
])
def test_every_human_output_escapes_control_characters(tmp_path, cmd, result):
    impostor = Impostor(tmp_path / "c.sock", ok_line(result))
    try:
        args = {"show": ["show", "t"], "resume": ["resume", "t"], "kill": ["kill", "t"]}.get(
            cmd, [cmd])
        proc = raw_ctl("--socket", tmp_path / "c.sock", *args)
        exact = raw_ctl("--socket", tmp_path / "c.sock", "--json", *args)
    finally:
        impostor.close()
    assert proc.returncode == 0, proc.stderr
    for raw in UNSAFE_BYTES:
        assert raw not in proc.stdout, (raw, proc.stdout)
    assert not any(line.startswith(b"FAKE") for line in proc.stdout.splitlines()), proc.stdout
    assert b"x\\x1b]0;pwned\\x07\\x1b[2J\\nFAKE\\x9b31m\\u202e\\xff" in proc.stdout or \
        b"\\u001b]0;pwned\\u0007\\u001b[2J\\nFAKE\\u009b31m\\u202e\\udcff" in proc.stdout
    assert exact.returncode == 0, exact.stderr
    for raw in UNSAFE_BYTES:
        assert raw not in exact.stdout
    assert json.loads(exact.stdout) == result  # the very same value


def test_json_output_survives_an_ascii_only_terminal(tmp_path):
    result = {"jobs": [{"name": EVIL + "é", "state": "loaded", "tasks": [], "path": "p"}]}
    impostor = Impostor(tmp_path / "c.sock", ok_line(result))
    try:
        env = {"PYTHONIOENCODING": "ascii", "LC_ALL": "C"}
        exact = raw_ctl("--socket", tmp_path / "c.sock", "--json", "jobs", env=env)
        human = raw_ctl("--socket", tmp_path / "c.sock", "jobs", env=env)
    finally:
        impostor.close()
    assert exact.returncode == 0, exact.stderr
    exact.stdout.decode("ascii")
    assert json.loads(exact.stdout) == result
    assert human.returncode == 0, human.stderr
    assert b"\\xe9" in human.stdout  # é, which ASCII cannot show


def test_error_message_from_the_daemon_is_escaped(tmp_path):
    answer = json.dumps({"id": 1, "ok": False, "error": {"code": "no\x1b-such", "message": EVIL}})
    impostor = Impostor(tmp_path / "c.sock", answer.encode() + b"\n")
    try:
        proc = raw_ctl("--socket", tmp_path / "c.sock", "show", "t")
    finally:
        impostor.close()
    assert proc.returncode == ctl.EXIT_REFUSED
    assert proc.stderr.startswith(b"coschedctl: no\\x1b-such: x\\x1b]0;pwned")
    for raw in UNSAFE_BYTES:
        assert raw not in proc.stderr


def test_an_answer_of_the_wrong_shape_is_reported_not_a_traceback(tmp_path):
    impostor = Impostor(tmp_path / "c.sock", ok_line(["not", "an", "object"]))
    try:
        proc = raw_ctl("--socket", tmp_path / "c.sock", "status")
    finally:
        impostor.close()
    assert proc.returncode == ctl.EXIT_UNREACHABLE
    assert proc.stderr.decode() == ("coschedctl: the daemon's answer has an unexpected shape "
                                    "(AttributeError); --json prints it as it came\n")


def page_line(rows) -> bytes:
    return json.dumps({"id": 1, "ok": True, "stream": rows}, separators=(",", ":")).encode() + b"\n"


HEAD = {"daemon": {"pid": 7, "num_tasks": 3, "version": "0.1.0"}}
ROWS = [{"id": i, "name": f"t.{i}", "state": "waiting", "waiting_on": "trio.sleep at t.py:3",
         "busy": 0.0002, "steps": 1, "age": 61.0} for i in (1, 2, 3)]


def paged_answer(*pages) -> bytes:
    return b"".join(map(page_line, pages)) + ok_line({**HEAD, "tasks": [], "job_errors": []})


def at_impostor(tmp_path, answer, *argv):
    path = tmp_path / f"c{len(list(tmp_path.glob('c*.sock')))}.sock"   # a new one each time
    impostor = Impostor(path, answer)
    try:
        return raw_ctl("--socket", path, *argv)
    finally:
        impostor.close()


def test_a_paged_status_prints_the_same_json_and_table_as_one_line(tmp_path):
    whole = ok_line({**HEAD, "tasks": ROWS, "job_errors": []})
    paged = paged_answer(ROWS[:2], [], ROWS[2:])
    for argv in (["--json", "status"], ["status"]):
        one, pages = at_impostor(tmp_path, whole, *argv), at_impostor(tmp_path, paged, *argv)
        assert pages.returncode == one.returncode == ctl.EXIT_OK, pages.stderr
        assert pages.stdout == one.stdout
    assert json.loads(pages_json := at_impostor(tmp_path, paged, "--json", "status").stdout) == {
        **HEAD, "tasks": ROWS, "job_errors": []}
    assert pages_json.count(b"\n") == 1
    table = at_impostor(tmp_path, paged, "status").stdout.decode()
    assert "3 listed" in table and [line.split()[1] for line in table.splitlines()[4:]] == \
        ["t.1", "t.2", "t.3"]


def test_a_page_that_may_not_be_printed_as_it_came_is_read_and_written_safely(tmp_path):
    evil = [{**ROWS[0], "name": EVIL}]
    proc = at_impostor(tmp_path, paged_answer(ROWS[1:], evil), "--json", "status")
    assert proc.returncode == ctl.EXIT_OK, proc.stderr
    assert json.loads(proc.stdout)["tasks"] == [*ROWS[1:], *evil]
    for raw in UNSAFE_BYTES:
        assert raw not in proc.stdout
    forged = b'{"id":1,"ok":true,"stream":[1],"x":[2]}\n'   # JSON, but its item is [1] alone
    proc = at_impostor(tmp_path, forged + paged_answer(), "--json", "status")
    assert proc.returncode == ctl.EXIT_OK, proc.stderr
    assert json.loads(proc.stdout)["tasks"] == [1]
    spaced = [b'{"id":1,"ok":true,"stream":[1] }\n', b'{"id":1,"ok":true,"stream":[ ]}\n',
              b'{"id":1,"ok":true,"stream":[ 2 ,3 ]}\n']   # valid, but not as coschedd writes
    proc = at_impostor(tmp_path, b"".join(spaced) + paged_answer([4]), "--json", "status")
    assert proc.returncode == ctl.EXIT_OK, proc.stderr
    assert json.loads(proc.stdout)["tasks"] == [1, 2, 3, 4]


@pytest.mark.parametrize("answer", [
    page_line({"not": "rows"}) + ok_line({**HEAD, "tasks": []}),
    page_line(ROWS) + ok_line({**HEAD, "tasks": "none"}),
    page_line(ROWS) + ok_line(["not", "an", "object"]),
    page_line(ROWS) + b"{not json\n",
])
def test_pages_of_the_wrong_shape_are_reported_not_a_traceback(tmp_path, answer):
    for argv in (["--json", "status"], ["status"]):
        proc = at_impostor(tmp_path, answer, *argv)
        assert proc.returncode == ctl.EXIT_UNREACHABLE, (argv, proc.stderr)
        assert b"Traceback" not in proc.stderr
        assert proc.stderr.startswith(b"coschedctl: ")


# -- arguments ------------------------------------------------------------------------

def test_start_force_is_sent_only_when_asked(daemon):
    assert at(daemon, "start", "mailer").returncode == ctl.EXIT_OK
    assert at(daemon, "start", "--force", "mailer").returncode == ctl.EXIT_OK
    assert daemon.backend.calls == [("start", "mailer"), ("start", "mailer", "force")]


def test_only_ascii_digits_within_the_id_range_make_an_id():
    assert ctl.task_arg("42") == 42 and ctl.task_arg(str(2**63 - 1)) == 2**63 - 1
    for name in ("\u00b2", "１２", str(2**63), "9" * 5000, "-1", "1.0"):
        assert ctl.task_arg(name) == name


def test_timeout_above_a_day_is_a_usage_error(daemon):
    proc = at(daemon, "--timeout", "1e9", "ping")
    assert proc.returncode == ctl.EXIT_USAGE
    assert "not a positive number of seconds up to 86400: '1e9'" in proc.stderr


def test_coschedctl_imports_neither_trio_nor_the_coroutine_core():
    code = ("import cosched.ctl, sys; cosched.ctl.build_parser(); "
            "cosched.ctl.default_socket_path(); "
            "assert 'trio' not in sys.modules and 'cosched.coro' not in sys.modules, "
            "sorted(m for m in sys.modules if 'trio' in m or 'coro' in m)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=WAIT)
    assert proc.returncode == 0, proc.stderr


def test_the_package_still_offers_coro_on_first_use():
    proc = subprocess.run([sys.executable, "-c", "import cosched, sys; "
                           "assert cosched.CoroutineError is cosched.coro.CoroutineError; "
                           "assert 'trio' in sys.modules"], cwd=REPO, capture_output=True,
                          text=True, timeout=WAIT)
    assert proc.returncode == 0, proc.stderr


def test_history_prints_one_line_per_event_and_tracebacks_under_them(daemon):
    proc = at(daemon, "history", "ticker", "--limit", "3", "--since", "1700000000")
    assert proc.returncode == ctl.EXIT_OK, proc.stderr
    assert daemon.backend.calls == [("history", "ticker", 1_700_000_000.0, 3)]
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["TIME", "TASK", "NAME", "JOB", "EVENT", "DETAIL"]
    assert lines[1].split()[2:] == ["7", "ticker", "ticker", "suspended", '"q?"', '{"a":', "1}"]
    assert lines[2].split()[5:] == ["failed", "ValueError:", "bad\\x1b[2J"]   # escaped
    assert lines[3:5] == ["    Traceback (most recent call last):", "    ValueError: bad"]
    assert lines[5].split()[2:6] == ["-", "-", "ticker", "run-skipped"] and "alive [7]" in lines[5]
    assert lines[-1].startswith("(older events were recorded too")
    assert at(daemon, "history", "42").returncode == ctl.EXIT_OK
    assert daemon.backend.calls[-1] == ("history", 42, None, 50)   # digits: a task id


def test_since_takes_ages_times_and_epoch_seconds():
    now = time.time()
    assert abs(ctl.since_arg("15m") - (now - 900)) < 5
    assert abs(ctl.since_arg("2d") - (now - 172800)) < 5
    assert ctl.since_arg("1700000000") == 1_700_000_000.0
    assert ctl.since_arg("2024-05-01T12:30:00+00:00") == 1_714_566_600.0
    for bad in ("soon", "-5m", "15x", "2024-13-01"):
        with pytest.raises(argparse.ArgumentTypeError, match="not a time"):
            ctl.since_arg(bad)


@pytest.mark.parametrize("args", [["history", "--limit", "0"], ["history", "--limit", "many"],
                                  ["history", "--since", "whenever"]])
def test_bad_history_options_are_usage_errors(daemon, args):
    proc = at(daemon, *args)
    assert proc.returncode == ctl.EXIT_USAGE, proc
    assert daemon.backend.calls == []


def test_jobs_shows_schedule_next_and_last_run_of_timed_jobs(daemon):
    rendered = ctl.render_jobs({"jobs": [
        {"name": "poll", "state": "loaded", "tasks": [], "path": "/j/poll.py",
         "schedule": "every 30s", "next_run": 1_700_000_030.0, "last_run": 1_700_000_000.0},
        {"name": "plain", "state": "loaded", "tasks": [3], "path": "/j/plain.py"}]})
    lines = rendered.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "TASKS", "SCHEDULE", "NEXT", "LAST", "PATH"]
    assert lines[1].split()[:5] == ["poll", "loaded", "-", "every", "30s"]
    assert lines[1].split()[-1] == "/j/poll.py" and lines[1].count(":") == 4   # two times
    assert lines[2].split() == ["plain", "loaded", "3", "-", "-", "-", "/j/plain.py"]


def test_jobs_shows_how_many_tasks_a_job_s_tasks_spawned_and_survives_odd_counts():
    rendered = ctl.render_jobs({"jobs": [
        {"name": "many", "state": "loaded", "tasks": [1], "num_tasks": 100001, "path": "/m"},
        {"name": "old", "state": "loaded", "tasks": [2], "path": "/o"},     # no count
        {"name": "odd", "state": "loaded", "tasks": [3], "num_tasks": "x", "path": "/x"},
        {"name": "none", "state": "loaded", "tasks": [], "num_tasks": 0, "path": "/n"}]})
    lines = rendered.splitlines()
    assert lines[1].split() == ["many", "loaded", "1", "(+100000", "spawned)", "/m"]
    assert lines[2].split() == ["old", "loaded", "2", "/o"]
    assert lines[3].split() == ["odd", "loaded", "3", "/x"]
    assert lines[4].split() == ["none", "loaded", "-", "/n"]


# -- status --sort, --reverse, --limit ----------------------------------------------

def _table_rows(stdout):
    lines = stdout.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("ID "))
    end = lines.index("", start) if "" in lines[start:] else len(lines)
    return [line.split() for line in lines[start + 1:end] if not line.startswith("(")]


def test_status_sorts_and_limits_the_tasks_here(daemon):
    tasks = many_tasks(*MANY["some"])
    proc = at(daemon, "status", "--job", "some", "--sort", "busy", "--limit", "3")
    assert proc.returncode == 0, proc.stderr
    busiest = sorted((t for t in tasks if t["busy"] is not None), key=lambda t: -t["busy"])[:3]
    assert [int(row[0]) for row in _table_rows(proc.stdout)] == [t["id"] for t in busiest]
    assert proc.stdout.rstrip("\n").endswith("(3 of 30 tasks listed: --limit 3)")
    assert "3 listed" in proc.stdout
    # the filters went to the daemon; sorting and limiting did not
    assert daemon.backend.calls[-1] == ("status", None, "some", None)
    assert daemon.backend.limit is None

    proc = at(daemon, "--json", "status", "--job", "some", "--sort", "name", "--reverse",
              "--limit", "2")
    names = sorted(t["name"] for t in tasks)
    assert [t["name"] for t in json.loads(proc.stdout)["tasks"]] == names[::-1][:2]

    proc = at(daemon, "--json", "status", "--job", "some", "--sort", "busy", "--reverse")
    shown = json.loads(proc.stdout)["tasks"]
    assert shown[0]["busy"] is None and len(shown) == 30   # missing first when reversed
    assert [t["busy"] for t in shown[1:]] == sorted(t["busy"] for t in tasks if t["busy"] is not None)

    proc = at(daemon, "--json", "status", "--job", "some", "--sort", "id")
    assert [t["id"] for t in json.loads(proc.stdout)["tasks"]] == list(range(30))


def test_status_limit_alone_is_done_by_the_daemon(daemon, monkeypatch):
    """--limit without --sort or --reverse: the daemon sends the first N by id and how
    many matched; a daemon from before "limit" sends all, cut here, the same output."""
    tasks = many_tasks(*MANY["some"])
    proc = at(daemon, "status", "--job", "some", "--limit", "3")
    assert proc.returncode == 0, proc.stderr
    assert daemon.backend.limit == 3
    assert [int(row[0]) for row in _table_rows(proc.stdout)] == [t["id"] for t in tasks[:3]]
    assert proc.stdout.rstrip("\n").endswith("(3 of 30 tasks listed: --limit 3)")
    got = json.loads(at(daemon, "--json", "status", "--job", "some", "--limit", "2").stdout)
    assert [t["id"] for t in got["tasks"]] == [t["id"] for t in tasks[:2]]
    assert got["num_matching"] == 30
    daemon_before(monkeypatch, daemon, "limit")
    again = at(daemon, "status", "--job", "some", "--limit", "3")
    assert again.returncode == 0, again.stderr
    assert _table_rows(again.stdout) == _table_rows(proc.stdout)
    assert again.stdout.rstrip("\n").endswith("(3 of 30 tasks listed: --limit 3)")


def test_a_count_of_matches_that_is_not_a_count_is_not_believed(tmp_path):
    result = {**HEAD, "tasks": ROWS, "job_errors": [], "num_matching": "lots"}
    proc = at_impostor(tmp_path, ok_line(result), "status", "--limit", "2")
    assert proc.returncode == ctl.EXIT_OK, proc.stderr
    assert proc.stdout.decode().rstrip("\n").endswith("(2 of 3 tasks listed: --limit 2)")


@pytest.mark.parametrize("args, message", [
    (("--limit", "0"), "not a number of tasks from 1 to 999999999: '0'"),
    (("--limit", "x"), "not a number of tasks from 1 to 999999999: 'x'"),
    (("--sort", "colour"), "invalid choice: 'colour'"),
])
def test_bad_sort_or_limit_is_a_usage_error(daemon, args, message):
    proc = at(daemon, "status", *args)
    assert proc.returncode == ctl.EXIT_USAGE and message in proc.stderr
    assert daemon.backend.calls == []


# -- big answers: the same with and without orjson ----------------------------------

@pytest.mark.parametrize("job", ["big", "big-unicode"])
def test_a_big_status_prints_the_same_with_orjson_or_the_standard_library(daemon, job):
    """12,000 tasks: over fastjson.ORJSON_FROM, so orjson reads the answer when installed;
    COSCHED_PURE_PYTHON=1 makes it the standard library. The --json text is what the
    standard library writes, byte for byte (an ASCII answer is printed as it came)."""
    expected = Backend("x").status(None, job=job)
    expected["daemon"]["socket"] = str(daemon.path)
    want = escape_json_text(expected)
    outputs = {}
    for pure in ("", "1"):
        env = {"COSCHED_PURE_PYTHON": pure}
        json_proc = coschedctl("--socket", daemon.path, "--json", "status", "--job", job, env=env)
        table_proc = coschedctl("--socket", daemon.path, "status", "--job", job, env=env)
        assert json_proc.returncode == table_proc.returncode == 0, json_proc.stderr
        assert json_proc.stdout == want + "\n"
        outputs[pure] = table_proc.stdout
    assert outputs[""] == outputs["1"]
    rows = _table_rows(outputs[""])
    assert len(rows) == 12_000 and rows[5][:2] == ["5", expected["tasks"][5]["name"]]
    if job == "big-unicode":
        assert "t\u00e2che\\u202e" in outputs[""]   # escaped in the table as everywhere


def escape_json_text(value):
    from cosched.terminal import escape_json
    return escape_json(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def test_json_prints_the_answer_as_it_came_only_when_nothing_needs_changing():
    ok = b'{"id":1,"ok":true,"result":'
    assert ctl.result_text(ok + b'{"a":[1,2.5,"x"]}}') == b'{"a":[1,2.5,"x"]}'
    assert ctl.result_text(ok + b'{"a":"\xc3\xa2"}}') is None          # not ASCII
    assert ctl.result_text(ok + b'{"a":"\x7f"}}') is None              # DEL
    assert ctl.result_text(ok + b'{"a":[1,}}') is None                 # not JSON
    assert ctl.result_text(ok + b'{"a":1},"more":2}') is None          # not the envelope
    assert ctl.result_text(b'{"ok":true,"id":1,"result":{}}') is None  # another layout
    with pytest.raises(ctl.Unreachable, match="unreadable answer"):
        ctl.decode(ok + b'{"a":[1,}}')


# -- fast rendering gives what the plain definitions give -----------------------------

def test_a_column_of_durations_is_each_value_formatted():
    values = [0.25, 0.25, 1, 1.0, True, False, 0, None, "x\n", [1], 90061.0, 0.0004, 59.96]
    expected = [ctl.fmt_duration(v) for v in values]
    assert ctl._durations(values) == expected
    assert ctl._durations([1, 1.0, 0.0, 0]) == ["1.0s", "1.0s", "0s", "0s"]
    assert expected[4:6] == ["True", "False"] and expected[8] == "x\\n"


def test_table_pads_escapes_and_strips_like_the_plain_layout():
    rows = [[1, "a", None], [22, "b\x1b[2J", "end  "], [3, "", ""]]
    assert ctl.table(["ID", "NAME", "LAST"], rows).split("\n") == [
        "ID  NAME      LAST", "1   a         -", "22  b\\x1b[2J  end", "3"]
    assert ctl.table(["A", "B"], []) == "A  B"
    with pytest.raises(ValueError):
        ctl.table(["A", "B"], [[1, 2], [3]])


# -- start-up: what a small command imports -------------------------------------------

# Modules a small command must not load (beyond what `python -c pass` has loaded):
# each costs milliseconds to import, the command's budget is twice an empty interpreter.
HEAVY = {"trio", "cosched.coro", "cosched._coro", "cosched.config", "typing", "socket",
         "shutil", "dataclasses", "orjson", "datetime", "copy", "subprocess", "selectors",
         "tomllib", "pwd", "grp", "zoneinfo", "cronsim", "simdjson"}
# Finding the socket in the config file reads TOML (tomllib brings typing and datetime).
HEAVY_WITH_CONFIG = HEAVY - {"tomllib", "typing", "datetime"}


def _loaded_by(args, env=None):
    code = ("import json, sys; before = set(sys.modules); from cosched import ctl; "
            "code = ctl.main(sys.argv[1:]); "
            "print(json.dumps(sorted(set(sys.modules) - before)), file=sys.stderr); "
            "sys.exit(code)")
    environ = {k: v for k, v in os.environ.items() if k not in ("COSCHED_SOCKET", "COSCHED_CONFIG")}
    environ.update(env or {})
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=WAIT)
    return proc, set(json.loads(proc.stderr.strip().splitlines()[-1]))


def test_small_commands_import_nothing_heavy(daemon, tmp_path):
    proc, loaded = _loaded_by(["--version"])
    assert proc.returncode == 0 and proc.stdout.startswith("coschedctl ")
    assert not loaded & HEAVY, sorted(loaded & HEAVY)
    proc, loaded = _loaded_by(["--socket", daemon.path, "ping"])
    assert proc.returncode == 0 and proc.stdout.startswith("pong from coschedd pid ")
    assert not loaded & HEAVY, sorted(loaded & HEAVY)
    config = tmp_path / "coschedd.toml"
    config.write_text(f'[control]\nsocket = "{daemon.path.name}"\n')
    proc, loaded = _loaded_by(["ping"], env={"COSCHED_CONFIG": str(config)})
    assert proc.returncode == 0 and "pong" in proc.stdout, proc.stderr
    assert "tomllib" in loaded and not loaded & HEAVY_WITH_CONFIG, sorted(loaded & HEAVY_WITH_CONFIG)
