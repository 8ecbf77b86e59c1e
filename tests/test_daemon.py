"""End-to-end tests: the real coschedd in a subprocess, driven by the real coschedctl.

Every test starts its own daemon on a fresh jobs folder and config in tmp_path,
talks to it only through the coschedctl console script (or, for the protocol
edge cases, a raw unix socket), and stops it afterwards. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from textwrap import dedent
from typing import Any
from collections.abc import Callable

import psutil
import pytest

BIN = Path(sys.executable).parent
COSCHEDD = str(BIN / "coschedd") if (BIN / "coschedd").exists() else shutil.which("coschedd")
COSCHEDCTL = str(BIN / "coschedctl") if (BIN / "coschedctl").exists() else shutil.which("coschedctl")

WAIT = 10.0        # bound of every wait for the daemon to reach some state
CTL_TIMEOUT = 30   # bound of one coschedctl run
POLL = 0.05

# Variables of the test runner's own environment that would change the daemon's behaviour.
_SCRUBBED_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "COSCHED_CONFIG",
                 "COSCHED_SOCKET", "RUNTIME_DIRECTORY")

BASE_CONFIG: dict[str, dict[str, Any]] = {
    "daemon": {"jobs_dir": "jobs", "runtime_dir": "run", "state_dir": "state", "stop_timeout": 5},
    "log": {"format": "json", "level": "debug"},
    "jobs": {"restart_delay": 0.05},
}

SLEEPER = """
    import trio

    async def main(task):
        await trio.sleep(1000)
"""


def job_with_marker(marker: Path, body: str = "await trio.sleep(1000)") -> str:
    """A job whose cleanup (a finally block) writes ``marker``."""
    return f"""
        from pathlib import Path

        import trio

        from cosched import coro

        async def main(task):
            try:
                {body}
            finally:
                Path({str(marker)!r}).write_text("cleaned up")
    """


# -- config and job files ---------------------------------------------------------

def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml_value, value)) + "]"
    raise TypeError(value)


def render_toml(config: dict[str, dict[str, Any]]) -> str:
    """[section] tables, and [job.<name>] tables from config["job"]."""
    out = []
    for section, table in config.items():
        if section == "job":
            for name, job in table.items():
                out += [f"[job.{name}]", *(f"{k} = {_toml_value(v)}" for k, v in job.items()), ""]
        else:
            out += [f"[{section}]", *(f"{k} = {_toml_value(v)}" for k, v in table.items()), ""]
    return "\n".join(out)


def merged(base: dict, extra: dict) -> dict:
    out = {k: dict(v) for k, v in base.items()}
    for section, table in extra.items():
        if section == "job":
            jobs = out.setdefault("job", {})
            for name, job in table.items():
                jobs[name] = {**jobs.get(name, {}), **job}
        else:
            out.setdefault(section, {}).update(table)
    return out


def write_job(folder: Path, name: str, source: str, mode: int = 0o644) -> Path:
    """Put ``<name>.py`` in place atomically (a hidden temp file, then rename), with ``mode``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    tmp = folder / f".{name}.py.tmp"
    tmp.write_text(dedent(source))
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return path


def hold_new_job_open(folder: Path, name: str, source: str) -> int:
    """Create ``<name>.py`` and leave it open for writing: inotify reports only IN_CREATE,
    which the watcher ignores for plain files until the close, so only an explicit
    rescan (reload, SIGHUP) can load it. Returns the descriptor; close it when done."""
    fd = os.open(folder / f"{name}.py", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, dedent(source).encode())
    os.fsync(fd)
    return fd


# -- the daemon -------------------------------------------------------------------

class Daemon:
    """One coschedd subprocess on a config and jobs folder in its own directory."""

    def __init__(self, root: Path, config: dict, jobs: dict[str, str], env: dict | None):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.jobs_dir = root / "jobs"
        self.jobs_dir.mkdir(exist_ok=True)
        self.socket = root / "run" / "coschedd.sock"
        self.config_path = root / "coschedd.toml"
        self.config_path.write_text(render_toml(config))
        self.log_path = root / "coschedd.log"
        for name, source in jobs.items():
            write_job(self.jobs_dir, name, source)
        environ = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        environ.update(env or {})
        self._log_file = open(self.log_path, "wb")
        self.proc = self._spawn(environ)

    def _spawn(self, environ: dict) -> subprocess.Popen:
        """Start the coschedd process (subclasses start it differently)."""
        return subprocess.Popen([COSCHEDD, "--config", str(self.config_path)],
                                stdin=subprocess.DEVNULL, stdout=self._log_file,
                                stderr=subprocess.STDOUT, env=environ, cwd=self.root)

    # ---- lifecycle

    def wait_ready(self) -> None:
        """Until `coschedctl ping` succeeds. While the socket is not there yet, a cheap
        connect attempt stands in for it, so that each coschedctl run counts."""
        deadline = time.monotonic() + WAIT
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"coschedd exited with {self.proc.returncode} before answering ping\n"
                            f"{self.log_tail()}")
            if self._accepts_connections():
                rc, out, err = self.ctl("ping")
                if rc == 0:
                    assert out == {"pong": True, "pid": self.proc.pid}
                    return
            if time.monotonic() > deadline:
                pytest.fail(f"coschedd did not answer ping within {WAIT}s\n{self.log_tail()}")
            time.sleep(POLL)

    def _accepts_connections(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            try:
                sock.connect(str(self.socket))
            except OSError:
                return False
            return True

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = WAIT) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"coschedd still running {timeout}s after being asked to stop\n"
                        f"{self.log_tail()}")

    def stop(self) -> None:
        """Teardown: SIGTERM, then SIGKILL if it does not go; never raises."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
        finally:
            self._log_file.close()

    # ---- talking to it

    def ctl(self, *args: str, json_output: bool = True) -> tuple[int, Any, str]:
        """Run coschedctl against this daemon: (returncode, parsed JSON or stdout, stderr)."""
        cmd = [COSCHEDCTL, "--socket", str(self.socket)]
        if json_output:
            cmd.append("--json")
        proc = subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True,
                              timeout=CTL_TIMEOUT, stdin=subprocess.DEVNULL)
        out: Any = proc.stdout
        if json_output and proc.returncode == 0:
            out = json.loads(proc.stdout)
        return proc.returncode, out, proc.stderr

    def ok(self, *args: str) -> Any:
        """coschedctl that must succeed; its JSON result."""
        rc, out, err = self.ctl(*args)
        assert rc == 0, f"coschedctl {' '.join(map(str, args))} -> {rc}: {err}\n{self.log_tail()}"
        return out

    def status(self) -> dict:
        return self.ok("status")

    def wait_status(self, predicate: Callable[[dict], Any], what: str,
                    timeout: float = WAIT) -> dict:
        """Re-run `status` until predicate(result) is true; the last result."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.status()
            if predicate(result):
                return result
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout}s waiting for: {what}\nlast status: "
                            f"{json.dumps(result, indent=1)}\n{self.log_tail()}")
            time.sleep(POLL)

    def wait_task(self, name: str, predicate: Callable[[dict], Any], what: str) -> dict:
        """Wait until the newest task called ``name`` satisfies predicate; that task's info."""
        result = self.wait_status(lambda s: (t := newest(s, name)) is not None and predicate(t),
                                  f"task {name}: {what}")
        return newest(result, name)

    # ---- its log

    def log_text(self) -> str:
        self._log_file.flush()
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "daemon log (tail):\n" + "\n".join(self.log_text().splitlines()[-lines:])

    def log_records(self) -> list[dict]:
        records = []
        for line in self.log_text().splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                records.append(obj)
        return records


def newest(status: dict, name: str) -> dict | None:
    named = [t for t in status["tasks"] if t["name"] == name]
    return max(named, key=lambda t: t["id"]) if named else None


def by_id(status: dict, tid: int) -> dict | None:
    return next((t for t in status["tasks"] if t["id"] == tid), None)


LIVE = {"running", "waiting"}


@pytest.fixture
def daemon(tmp_path):
    """Factory: daemon(jobs={name: source}, config={overrides}, env={...}) -> a ready Daemon.
    Every daemon started is stopped at teardown, whatever the test did."""
    started: list[Daemon] = []

    def start(jobs: dict[str, str] | None = None, config: dict | None = None,
              env: dict | None = None, wait: bool = True) -> Daemon:
        root = tmp_path / f"d{len(started)}"
        d = Daemon(root, merged(BASE_CONFIG, config or {}), jobs or {}, env)
        started.append(d)
        if wait:
            d.wait_ready()
        return d

    yield start
    for d in started:
        d.stop()


# -- jobs loading -----------------------------------------------------------------

def test_loads_jobs(daemon):
    d = daemon(jobs={"alpha": SLEEPER, "beta": SLEEPER})
    status = d.wait_status(lambda s: {t["name"] for t in s["tasks"]} == {"alpha", "beta"},
                           "tasks alpha and beta")
    assert {t["job"] for t in status["tasks"]} == {"alpha", "beta"}
    assert status["job_errors"] == []
    assert status["daemon"]["pid"] == d.proc.pid
    jobs = {j["name"]: j for j in d.ok("jobs")["jobs"]}
    assert set(jobs) == {"alpha", "beta"}
    for name, job in jobs.items():
        assert job["state"] == "loaded"
        assert job["error"] is None
        assert job["path"] == str(d.jobs_dir / f"{name}.py")
        assert job["tasks"] == [newest(status, name)["id"]]


# -- suspend and resume -----------------------------------------------------------

ASKER = """
    from cosched import coro

    async def main(task):
        x = await coro.yield_("q?")
        y = await coro.yield_(x)
        return type(x).__name__, type(y).__name__, y
"""


def test_suspend_and_resume_with_values(daemon):
    d = daemon(jobs={"asker": ASKER})
    task = d.wait_task("asker", lambda t: t["state"] == "suspended", "suspended")
    assert task["yielded"] == ["q?"]
    assert task["switches"] == 2  # daemon -> job, job -> daemon

    # Several values: the job receives them as one tuple, and yields it back whole.
    out = d.ok("resume", "asker", "1", '"two"', "abc")
    assert out["outcome"] == "yielded"
    assert out["values"] == [[1, "two", "abc"]]
    assert out["task"]["state"] == "suspended"
    assert out["task"]["yielded"] == [[1, "two", "abc"]]
    assert out["task"]["switches"] == 4
    assert out["error"] is None

    # One value: the job receives it as is; the tuple it returns is the result's values.
    out = d.ok("resume", "asker", "last")
    assert out["outcome"] == "finished"
    assert out["values"] == ["tuple", "str", "last"]
    assert out["task"]["state"] == "finished"
    assert newest(d.status(), "asker")["state"] == "finished"
    rc, text, err = d.ctl("show", "asker", json_output=False)  # kept after the task ended
    assert rc == 0, err
    assert "switches: 6" in text.splitlines()


def test_status_keeps_the_tasks_of_one_job_or_in_one_state(daemon):
    d = daemon(jobs={"asker": ASKER, "quick": "async def main(task):\n    return 1\n"})
    asker = d.wait_task("asker", lambda t: t["state"] == "suspended", "suspended")
    quick = d.wait_task("quick", lambda t: t["state"] == "finished", "finished")
    assert [t["id"] for t in d.ok("status", "--job", "asker")["tasks"]] == [asker["id"]]
    assert [t["id"] for t in d.ok("status", "--state", "finished")["tasks"]] == [quick["id"]]
    assert d.ok("status", "--job", "asker", "--state", "finished")["tasks"] == []
    rc, out, err = d.ctl("status", "--job", "nosuch")
    assert rc == 1 and "no-such-job" in err, (out, err)
    assert newest(d.status(), "asker")["state"] == "suspended"  # nothing else changed


def test_resume_task_not_suspended_is_refused(daemon):
    d = daemon(jobs={"sleeper": SLEEPER})
    d.wait_task("sleeper", lambda t: t["state"] in LIVE, "running")
    rc, out, err = d.ctl("resume", "sleeper", "1")
    assert rc == 1, (out, err)
    assert "not-suspended" in err
    assert newest(d.status(), "sleeper")["state"] in LIVE


def test_resume_unknown_task_is_refused(daemon):
    d = daemon(jobs={"sleeper": SLEEPER})
    rc, out, err = d.ctl("resume", "nobody", "1")
    assert rc == 1, (out, err)
    assert "no-such-task" in err
    rc, out, err = d.ctl("resume", "999", "1")
    assert rc == 1, (out, err)
    assert "no-such-task" in err


# -- kill -------------------------------------------------------------------------

def test_kill_running_task_runs_its_cleanup(daemon, tmp_path):
    marker = tmp_path / "killed.marker"
    d = daemon(jobs={"victim": job_with_marker(marker)})
    task = d.wait_task("victim", lambda t: t["state"] in LIVE, "running")
    assert not marker.exists()
    out = d.ok("kill", "victim")
    assert out["task"]["id"] == task["id"]
    assert out["task"]["state"] == "killed"
    assert marker.read_text() == "cleaned up"
    after = by_id(d.status(), task["id"])
    assert after["state"] == "killed"
    assert after["restarts"] == 0   # a kill is not a failure: no restart


def test_kill_ends_the_processes_a_job_started(daemon, tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    source = f"""
        async def main(task):
            await task.run_process(
                ["sh", "-c", "sleep 300 & echo $! > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; wait"])
    """
    d = daemon(jobs={"procs": source})
    d.wait_task("procs", lambda t: t["state"] == "waiting", "waiting")
    deadline = time.monotonic() + WAIT
    while not pidfile.exists():  # the shell writes it right after starting
        assert time.monotonic() < deadline, d.log_tail()
        time.sleep(0.05)
    grandchild = psutil.Process(int(pidfile.read_text()))
    assert grandchild.name() == "sleep"
    out = d.ok("kill", "procs")
    assert out["task"]["state"] == "killed"
    # trio alone signals only the shell; the sleep it started must not outlive the task.
    assert not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE


def test_kill_suspended_task_runs_its_cleanup(daemon, tmp_path):
    marker = tmp_path / "suspended.marker"
    d = daemon(jobs={"parked": job_with_marker(marker, 'await coro.yield_("parked")')})
    task = d.wait_task("parked", lambda t: t["state"] == "suspended", "suspended")
    assert task["yielded"] == ["parked"]
    out = d.ok("kill", str(task["id"]))
    assert out["task"]["state"] == "killed"
    assert marker.read_text() == "cleaned up"
    assert by_id(d.status(), task["id"])["state"] == "killed"


def test_kill_finished_task_is_refused(daemon):
    d = daemon(jobs={"quick": "async def main(task):\n    return 42\n"})
    task = d.wait_task("quick", lambda t: t["state"] == "finished", "finished")
    rc, out, err = d.ctl("kill", str(task["id"]))
    assert rc == 1, (out, err)
    assert "not-alive" in err
    assert by_id(d.status(), task["id"])["state"] == "finished"
    assert d.ok("show", str(task["id"]))["result"] == 42


# -- failure and restart ----------------------------------------------------------

def test_failing_job_is_restarted_until_it_stays_up(daemon, tmp_path):
    runs = tmp_path / "flaky.runs"
    source = f"""
        from pathlib import Path

        import trio

        RUNS = Path({str(runs)!r})

        async def main(task):
            n = int(RUNS.read_text()) + 1 if RUNS.exists() else 1
            RUNS.write_text(str(n))
            if n <= 2:
                raise RuntimeError(f"boom {{n}}")
            await trio.sleep(1000)
    """
    d = daemon(jobs={"flaky": source}, config={"job": {"flaky": {"restart": "on-failure"}}})
    task = d.wait_task("flaky", lambda t: t["state"] in LIVE and t["restarts"] == 2,
                       "up again after 2 restarts")
    assert runs.read_text() == "3"
    assert [t["id"] for t in d.status()["tasks"]] == [task["id"]]  # restarted in place
    shown = d.ok("show", "flaky")
    # The current life is healthy: the error and traceback are those of this run (none).
    assert shown["restarts"] == 2
    assert shown["error"] is None
    assert shown["traceback"] is None
    # The earlier failures were reported, each followed by a restart.
    records = d.log_records()
    failed = [r.get("error") for r in records if r.get("event") == "task failed"]
    assert failed == ["RuntimeError: boom 1", "RuntimeError: boom 2"]
    restarting = [r.get("after") for r in records if r.get("event") == "restarting task"]
    assert restarting == ["RuntimeError: boom 1", "RuntimeError: boom 2"]


def test_failed_job_without_restart_keeps_its_traceback(daemon):
    source = """
        async def main(task):
            raise ValueError("the answer is not 41")
    """
    d = daemon(jobs={"doomed": source}, config={"job": {"doomed": {"restart": "no"}}})
    task = d.wait_task("doomed", lambda t: t["state"] == "failed", "failed")
    assert task["error"] == "ValueError: the answer is not 41"
    assert task["restarts"] == 0
    shown = d.ok("show", "doomed")
    assert shown["state"] == "failed"
    assert "Traceback" in shown["traceback"]
    assert "ValueError: the answer is not 41" in shown["traceback"]
    assert "doomed.py" in shown["traceback"]
    rc, text, err = d.ctl("show", "doomed", json_output=False)
    assert rc == 0, err
    assert "ValueError: the answer is not 41" in text


def test_start_limit_stops_restarting(daemon, tmp_path):
    runs = tmp_path / "eager.runs"
    source = f"""
        from pathlib import Path

        RUNS = Path({str(runs)!r})

        async def main(task):
            RUNS.write_text(str(int(RUNS.read_text()) + 1 if RUNS.exists() else 1))
            return "done"
    """
    d = daemon(jobs={"eager": source},
               config={"job": {"eager": {"restart": "always", "start_limit_burst": 3}}})
    task = d.wait_task("eager", lambda t: t["state"] in ("finished", "failed")
                       and "start limit" in (t["error"] or ""), "given up at its start limit")
    assert task["restarts"] == 2
    assert runs.read_text() == "3"
    jobs = {j["name"]: j for j in d.ok("jobs")["jobs"]}
    assert (jobs["eager"]["tasks"], jobs["eager"]["num_tasks"]) == ([], 0)
    assert [t["id"] for t in d.status()["tasks"]] == [task["id"]]


def test_start_limit_error_of_a_finished_task_is_readable(daemon):
    d = daemon(jobs={"eager": "async def main(task):\n    return 1\n"},
               config={"job": {"eager": {"restart": "always", "start_limit_burst": 2}}})
    task = d.wait_task("eager", lambda t: "start limit" in (t["error"] or ""),
                       "given up at its start limit")
    assert task["state"] == "finished"
    assert task["error"].startswith("start limit hit"), task["error"]
    assert "None" not in task["error"]


# -- the jobs folder while running ------------------------------------------------

def test_new_job_file_is_picked_up_while_running(daemon):
    d = daemon(jobs={"first": SLEEPER})
    d.wait_task("first", lambda t: t["state"] in LIVE, "running")
    write_job(d.jobs_dir, "second", SLEEPER)
    status = d.wait_status(lambda s: (t := newest(s, "second")) and t["state"] in LIVE,
                           "the dropped-in job running")
    assert newest(status, "first")["state"] in LIVE
    assert status["daemon"]["pid"] == d.proc.pid
    assert {j["name"] for j in d.ok("jobs")["jobs"]} == {"first", "second"}


def greeter(word: str, marker: Path) -> str:
    return job_with_marker(marker, f"await coro.yield_({word!r})")


def test_changed_job_file_restarts_its_task_with_the_new_code(daemon, tmp_path):
    marker = tmp_path / "v1.marker"
    d = daemon(jobs={"greeter": greeter("v1", marker)})
    old = d.wait_task("greeter", lambda t: t["state"] == "suspended", "suspended")
    assert old["yielded"] == ["v1"]
    write_job(d.jobs_dir, "greeter", greeter("v2", tmp_path / "v2.marker"))
    new = d.wait_task("greeter", lambda t: t["yielded"] == ["v2"], "yielding the new value")
    assert new["id"] != old["id"]
    assert new["state"] == "suspended"
    assert by_id(d.status(), old["id"])["state"] == "killed"
    assert marker.read_text() == "cleaned up"   # the old version's cleanup ran
    jobs = d.ok("jobs")["jobs"]
    assert [(j["name"], j["state"], j["tasks"]) for j in jobs] == [("greeter", "loaded", [new["id"]])]


def test_removed_job_file_kills_its_task(daemon, tmp_path):
    marker = tmp_path / "removed.marker"
    d = daemon(jobs={"doomed": job_with_marker(marker), "keeper": SLEEPER})
    task = d.wait_task("doomed", lambda t: t["state"] in LIVE, "running")
    (d.jobs_dir / "doomed.py").unlink()
    d.wait_status(lambda s: by_id(s, task["id"])["state"] == "killed", "the task killed")
    assert marker.read_text() == "cleaned up"
    assert [j["name"] for j in d.ok("jobs")["jobs"]] == ["keeper"]
    assert newest(d.status(), "keeper")["state"] in LIVE


def test_broken_jobs_are_reported_and_healthy_ones_keep_running(daemon):
    d = daemon(jobs={"healthy": SLEEPER})
    write_job(d.jobs_dir, "syntax", "async def main(task)\n    pass\n")
    write_job(d.jobs_dir, "nomain", "VALUE = 1\n")
    write_job(d.jobs_dir, "notasync", "def main(task):\n    return 1\n")
    write_job(d.jobs_dir, "writable", SLEEPER, mode=0o664)
    expected = {"syntax": "syntax error", "nomain": "defines no main",
                "notasync": "not an async function", "writable": "writable"}
    status = d.wait_status(lambda s: {e["job"] for e in s["job_errors"]} == set(expected),
                           "the four broken jobs reported")
    errors = {e["job"]: e for e in status["job_errors"]}
    for name, reason in expected.items():
        assert reason in errors[name]["error"], errors[name]
        assert errors[name]["path"] == str(d.jobs_dir / f"{name}.py")
    assert [t["name"] for t in status["tasks"]] == ["healthy"]
    assert status["tasks"][0]["state"] in LIVE
    jobs = {j["name"]: j["state"] for j in d.ok("jobs")["jobs"]}
    assert jobs == {"healthy": "loaded", **{name: "error" for name in expected}}
    rc, text, err = d.ctl("status", json_output=False)
    assert rc == 0, err
    assert "job errors:" in text and "defines no main" in text


# -- reload -----------------------------------------------------------------------

def test_reload_command_picks_up_a_new_file(daemon):
    d = daemon(jobs={"first": SLEEPER})
    d.wait_task("first", lambda t: t["state"] in LIVE, "running")
    fd = hold_new_job_open(d.jobs_dir, "late", SLEEPER)
    try:
        report = d.ok("reload")
        assert report["loaded"] == ["late"]
        assert report["removed"] == []
        assert report["errors"] == []
        d.wait_task("late", lambda t: t["state"] in LIVE, "running after reload")
    finally:
        os.close(fd)
    assert newest(d.status(), "first")["state"] in LIVE


def test_sighup_picks_up_a_new_file(daemon):
    d = daemon(jobs={"first": SLEEPER})
    first = d.wait_task("first", lambda t: t["state"] in LIVE, "running")
    fd = hold_new_job_open(d.jobs_dir, "late", SLEEPER)
    try:
        d.signal(signal.SIGHUP)
        d.wait_task("late", lambda t: t["state"] in LIVE, "running after SIGHUP")
    finally:
        os.close(fd)
    assert d.proc.poll() is None
    status = d.status()
    assert status["daemon"]["pid"] == d.proc.pid
    assert newest(status, "first")["id"] == first["id"]  # untouched by the reload
    assert newest(status, "first")["state"] in LIVE
    reloaded = [r for r in d.log_records() if r.get("event") == "reloaded"]
    assert reloaded and reloaded[-1]["loaded"] == ["late"]


# -- graceful stop ----------------------------------------------------------------

def test_sigterm_stops_gracefully(daemon, tmp_path):
    running, parked = tmp_path / "running.marker", tmp_path / "parked.marker"
    d = daemon(jobs={"running": job_with_marker(running),
                     "parked": job_with_marker(parked, 'await coro.yield_("wait")')})
    d.wait_status(lambda s: {(t["name"], t["state"]) for t in s["tasks"]}
                  <= {("running", "waiting"), ("running", "running"), ("parked", "suspended")}
                  and len(s["tasks"]) == 2, "both tasks up")
    assert d.socket.exists()
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0, d.log_tail()
    assert running.read_text() == "cleaned up"
    assert parked.read_text() == "cleaned up"
    assert not d.socket.exists()
    events = [r.get("event") for r in d.log_records()]
    assert "stopping" in events and "coschedd stopped" in events


# -- spawn ------------------------------------------------------------------------

def test_spawned_children_are_listed_and_die_with_their_parent(daemon, tmp_path):
    source = f"""
        from pathlib import Path

        import trio

        async def child(task, arg):
            try:
                await trio.sleep(1000)
            finally:
                Path({str(tmp_path)!r}, f"child-{{arg}}.marker").write_text("cleaned up")

        async def main(task):
            kids = [task.spawn(child, arg, name="kid") for arg in ("a", "b")]
            for kid in kids:
                await kid.join()
    """
    d = daemon(jobs={"parent": source})
    status = d.wait_status(lambda s: len(s["tasks"]) == 3
                           and all(t["state"] in LIVE for t in s["tasks"]), "parent and 2 children")
    parent = newest(status, "parent")
    shown = d.ok("show", "parent")
    assert shown["parent"] is None
    kid_ids = shown["children"]
    assert len(kid_ids) == 2
    kids = [by_id(status, k) for k in kid_ids]
    assert all(k["job"] == "parent" for k in kids)
    assert all(k["name"].startswith("kid") for k in kids)
    assert len({k["name"] for k in kids}) == 2
    assert d.ok("show", str(kid_ids[0]))["parent"] == parent["id"]

    assert d.ok("kill", "parent")["task"]["state"] == "killed"
    d.wait_status(lambda s: all(by_id(s, k)["state"] == "killed" for k in kid_ids),
                  "the children killed")
    assert (tmp_path / "child-a.marker").read_text() == "cleaned up"
    assert (tmp_path / "child-b.marker").read_text() == "cleaned up"


def test_unnamed_children_are_named_by_their_ids_and_found_and_killed_by_those_names(daemon):
    source = """
        import trio

        async def grandchild(task):
            await trio.sleep(1000)

        async def child(task):
            g = task.spawn(grandchild)
            task.state.update(me=task.name, grandchild=g.name)
            await trio.sleep(1000)

        async def main(task):
            task.state["child"] = task.spawn(child).name
            await trio.sleep(1000)
    """
    d = daemon(jobs={"fam": source})
    status = d.wait_status(lambda s: sum(t["state"] == "waiting" for t in s["tasks"]) == 3,
                           "a parent, its child and grandchild waiting")
    parent = newest(status, "fam")
    child, grandchild = (t for t in sorted(status["tasks"], key=lambda t: t["id"])[1:])
    assert child["name"] == f"fam.{child['id']}"
    assert grandchild["name"] == f"fam.{child['id']}.{grandchild['id']}"
    assert d.ok("show", "fam")["task_state"] == {"child": child["name"]}
    shown = d.ok("show", child["name"])
    assert shown["id"] == child["id"] and shown["parent"] == parent["id"]
    assert shown["task_state"] == {"me": child["name"], "grandchild": grandchild["name"]}
    assert d.ok("kill", grandchild["name"])["task"]["state"] == "killed"
    assert by_id(d.status(), child["id"])["state"] == "waiting"


# -- the control socket, spoken to directly ---------------------------------------

def raw_exchange(path: Path, data: bytes, timeout: float = WAIT) -> list[dict]:
    """Send ``data`` on a fresh connection, then read every response line until the
    daemon closes the connection or ``timeout``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        buf = b""
        while chunk := sock.recv(65536):
            buf += chunk
    return [json.loads(line) for line in buf.splitlines() if line.strip()]


def raw_request(path: Path, request: dict, timeout: float = WAIT) -> dict:
    """One request on its own connection, waiting for its one answer line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = sock.recv(65536)
            assert chunk, "the daemon closed the connection without answering"
            buf += chunk
    return json.loads(buf.split(b"\n", 1)[0])


PARKED = """
    from cosched import coro

    async def main(task):
        await coro.yield_("parked", 7)
"""


def control_daemon(daemon) -> tuple[Daemon, list[tuple]]:
    """A daemon with a small request limit, one waiting and one suspended task; their snapshot."""
    d = daemon(jobs={"sleeper": SLEEPER, "parked": PARKED},
               config={"control": {"max_request_bytes": 1024}})
    status = d.wait_status(lambda s: {(t["name"], t["state"]) for t in s["tasks"]}
                           == {("sleeper", "waiting"), ("parked", "suspended")}, "tasks settled")
    return d, snapshot(status)


def snapshot(status: dict) -> list[tuple]:
    return sorted((t["id"], t["name"], t["state"], json.dumps(t["yielded"]), t["restarts"],
                   t["error"]) for t in status["tasks"])


def assert_daemon_unharmed(d: Daemon, before: list[tuple]) -> None:
    assert d.proc.poll() is None, d.log_tail()
    assert snapshot(d.status()) == before


def test_socket_malformed_json_is_a_bad_request(daemon):
    d, before = control_daemon(daemon)
    answers = raw_exchange(d.socket, b'{"id": 1, "cmd": "ping"\n{"id": 2, "cmd": "ping"}\n')
    # One error answer; the connection is closed after a malformed line.
    assert len(answers) == 1, answers
    assert answers[0]["ok"] is False
    assert answers[0]["id"] is None
    assert answers[0]["error"]["code"] == "bad-request"
    answers = raw_exchange(d.socket, b"\xff\xfe not utf-8\n")
    assert [a["error"]["code"] for a in answers] == ["bad-request"]
    assert_daemon_unharmed(d, before)


def test_socket_too_large_request_is_refused(daemon):
    d, before = control_daemon(daemon)
    line = json.dumps({"id": 9, "cmd": "status", "args": {"task": "x" * 2000}}).encode() + b"\n"
    answers = raw_exchange(d.socket, line)
    assert len(answers) == 1, answers
    assert answers[0]["ok"] is False
    assert answers[0]["error"]["code"] == "too-large"
    # Without a newline at all, too.
    answers = raw_exchange(d.socket, b"x" * 4000)
    assert [a["error"]["code"] for a in answers] == ["too-large"]
    # A request just under the limit is fine.
    small = json.dumps({"id": 10, "cmd": "ping", "args": {}}).encode()
    assert raw_request(d.socket, json.loads(small))["ok"] is True
    assert_daemon_unharmed(d, before)


def test_socket_unknown_command(daemon):
    d, before = control_daemon(daemon)
    answer = raw_request(d.socket, {"id": 3, "cmd": "frobnicate", "args": {}})
    assert answer["ok"] is False
    assert answer["id"] == 3
    assert answer["error"]["code"] == "unknown-command"
    assert "ping" in answer["error"]["message"]
    assert_daemon_unharmed(d, before)


def test_socket_wrong_argument_type_is_a_bad_request(daemon):
    d, before = control_daemon(daemon)
    answer = raw_request(d.socket, {"id": 1, "cmd": "kill", "args": {"task": [1]}})
    assert answer["ok"] is False
    assert answer["id"] == 1
    assert answer["error"]["code"] == "bad-request"
    assert "task" in answer["error"]["message"]
    answer = raw_request(d.socket, {"id": "r", "cmd": "resume",
                                    "args": {"task": "parked", "values": "notalist"}})
    assert (answer["id"], answer["error"]["code"]) == ("r", "bad-request")
    answer = raw_request(d.socket, {"id": 2, "cmd": "kill", "args": {"task": "sleeper", "x": 1}})
    assert (answer["id"], answer["error"]["code"]) == (2, "bad-request")
    assert_daemon_unharmed(d, before)


def test_socket_peer_that_disconnects_mid_request(daemon):
    d, before = control_daemon(daemon)
    for _ in range(3):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(WAIT)
            sock.connect(str(d.socket))
            sock.sendall(b'{"id": 5, "cmd": "kill", "args": {"task": "slee')
    # A peer that connects and leaves without a byte, too.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(d.socket))
    assert_daemon_unharmed(d, before)


def test_socket_many_clients_at_once_get_their_own_answers(daemon):
    d, before = control_daemon(daemon)
    clients = 50
    barrier = threading.Barrier(clients, timeout=WAIT)
    answers: dict[int, Any] = {}

    def client(i: int) -> None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(WAIT)
                sock.connect(str(d.socket))
                barrier.wait()
                cmd = "ping" if i % 2 else "status"
                sock.sendall(json.dumps({"id": f"client-{i}", "cmd": cmd}).encode() + b"\n")
                buf = b""
                while b"\n" not in buf:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
            answers[i] = json.loads(buf.split(b"\n", 1)[0]) if buf else None
        except Exception as exc:  # reported by the assertions below
            answers[i] = exc

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT + 5)
    assert not any(t.is_alive() for t in threads)
    assert sorted(answers) == list(range(clients))
    for i, answer in answers.items():
        assert isinstance(answer, dict), (i, answer)
        assert answer["ok"] is True, (i, answer)
        assert answer["id"] == f"client-{i}"
        if i % 2:
            assert answer["result"] == {"pong": True, "pid": d.proc.pid}
        else:
            assert snapshot(answer["result"]) == before
    assert_daemon_unharmed(d, before)


# -- coschedctl exit codes --------------------------------------------------------

def run_ctl(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    return subprocess.run([COSCHEDCTL, *args], capture_output=True, text=True,
                          timeout=CTL_TIMEOUT, env=env, stdin=subprocess.DEVNULL)


def test_ctl_exits_3_when_the_daemon_is_not_running(tmp_path):
    missing = tmp_path / "nothing-here.sock"
    for args in (["ping"], ["--json", "kill", "x"]):
        proc = run_ctl("--socket", str(missing), *args)
        assert proc.returncode == 3, proc
        assert str(missing) in proc.stderr
        if "--json" in args:  # the error as JSON where a script reads the answer
            error = json.loads(proc.stdout)
            assert error["ok"] is False and error["error"]["code"] == "unreachable"
            assert str(missing) in error["error"]["message"]
        else:
            assert proc.stdout == ""


def test_ctl_exits_3_when_the_socket_is_stale(tmp_path):
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(stale))   # bound, never listening: nobody answers
    proc = run_ctl("--socket", str(stale), "ping")
    assert proc.returncode == 3, proc
    assert str(stale) in proc.stderr


def test_ctl_exits_2_on_usage_errors(tmp_path):
    sock = str(tmp_path / "unused.sock")
    for args in (["frobnicate"], [], ["resume"], ["--timeout", "-1", "ping"]):
        proc = run_ctl("--socket", sock, *args)
        assert proc.returncode == 2, (args, proc)
        assert "usage" in proc.stderr.lower() or "coschedctl" in proc.stderr, (args, proc)


# -- configuration errors ---------------------------------------------------------

def test_config_with_unknown_key_exits_2(tmp_path):
    config = merged(BASE_CONFIG, {"daemon": {"bogus_key": 1}})
    path = tmp_path / "bad.toml"
    path.write_text(render_toml(config))
    (tmp_path / "jobs").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    proc = subprocess.run([COSCHEDD, "--config", str(path)], capture_output=True, text=True,
                          timeout=WAIT, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc
    assert "daemon.bogus_key" in proc.stderr
    assert not (tmp_path / "run" / "coschedd.sock").exists()


def test_config_with_unknown_job_key_exits_2(tmp_path):
    config = merged(BASE_CONFIG, {"job": {"x": {"restrat": "no"}}})
    path = tmp_path / "bad.toml"
    path.write_text(render_toml(config))
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    proc = subprocess.run([COSCHEDD, "--config", str(path)], capture_output=True, text=True,
                          timeout=WAIT, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc
    assert "job.x.restrat" in proc.stderr


# -- systemd notify ---------------------------------------------------------------

class NotifyListener:
    """The service manager's side of sd_notify: a datagram socket, messages as dicts."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.seen: list[dict[str, str]] = []

    def close(self) -> None:
        self.sock.close()

    def wait_for(self, key: str, value: str = "1", timeout: float = WAIT) -> dict[str, str]:
        """The next message (after those already taken) that sets key=value."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no {key}={value} notification within {timeout}s; "
                            f"got {self.seen}")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            msg = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.seen.append(msg)
            if msg.get(key) == value:
                return msg


def test_systemd_notifications(daemon, tmp_path):
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        d = daemon(jobs={"sleeper": SLEEPER},
                   env={"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "400000"})
        ready = listener.wait_for("READY")
        assert "STATUS" in ready
        listener.wait_for("WATCHDOG")
        listener.wait_for("WATCHDOG")  # it keeps pinging

        d.signal(signal.SIGHUP)
        reloading = listener.wait_for("RELOADING")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        again = listener.wait_for("READY")
        assert again["STATUS"] == "1 tasks, 1 jobs", again   # counted from the registry
        assert d.proc.poll() is None
        assert d.ok("ping")["pong"] is True

        d.signal(signal.SIGTERM)
        listener.wait_for("STOPPING")
        assert d.wait_exit() == 0, d.log_tail()
        kinds = [k for m in listener.seen for k in m if k in ("READY", "RELOADING", "STOPPING")]
        assert kinds == ["READY", "RELOADING", "READY", "STOPPING"]
    finally:
        listener.close()


WIDE = """
    import trio

    async def child(task, i):
        await trio.sleep(1000)

    async def main(task):
        for i in range(1200):
            task.spawn(child, i)
        await trio.sleep(1000)
"""


def test_a_status_asked_for_in_pages_streams_them_then_the_result(daemon):
    d = daemon(jobs={"wide": WIDE})
    d.wait_status(lambda s: s["daemon"]["num_tasks"] == 1201, "1,200 children")
    lines = raw_exchange(d.socket, json.dumps(
        {"id": "p", "cmd": "status", "args": {"pages": True, "columns": ["id", "name"]}}
    ).encode() + b"\n")
    pages, final = lines[:-1], lines[-1]
    assert len(pages) == 3 and all(p["id"] == "p" and "result" not in p for p in pages)
    rows = [row for p in pages for row in p["stream"]]
    assert [len(p["stream"]) for p in pages] == [500, 500, 201]   # STATUS_CHUNK a page
    assert rows[0] == [1, "wide"] and [r[0] for r in rows] == sorted(r[0] for r in rows)
    assert final["ok"] and final["result"]["tasks"] == [] and \
        final["result"]["daemon"]["num_tasks"] == 1201 and "job_errors" in final["result"]
    one = raw_request(d.socket, {"id": 1, "cmd": "status", "args": {"columns": ["id", "name"]}})
    assert one["result"]["tasks"] == rows   # the same rows as one line
    small = raw_exchange(d.socket, json.dumps(
        {"id": 2, "cmd": "status", "args": {"pages": True, "task": "wide"}}).encode() + b"\n")
    assert len(small) == 1 and small[0]["result"]["tasks"][0]["name"] == "wide"   # one line
    got = d.ok("status")   # coschedctl --json: asks for pages, prints one JSON document
    assert [t["id"] for t in got["tasks"]] == [r[0] for r in rows]
    rc, out, _ = d.ctl("status", json_output=False)
    assert rc == 0 and "1201 listed" in out and len(out.splitlines()) == 4 + 1201


def test_a_status_limited_renders_the_first_rows_and_counts_the_others(daemon):
    d = daemon(jobs={"wide": WIDE})
    d.wait_status(lambda s: s["daemon"]["num_tasks"] == 1201, "1,200 children")
    got = raw_request(d.socket, {"id": 1, "cmd": "status", "args": {"limit": 3}})["result"]
    assert [t["id"] for t in got["tasks"]] == [1, 2, 3] and got["num_matching"] == 1201
    assert list(got) == ["daemon", "tasks", "job_errors", "num_matching"]
    none = raw_request(d.socket, {"id": 2, "cmd": "status",
                                  "args": {"limit": 3, "state": "suspended"}})["result"]
    assert (none["tasks"], none["num_matching"]) == ([], 0)
    few = raw_request(d.socket, {"id": 3, "cmd": "status",
                                 "args": {"limit": 5000, "task": "wide"}})["result"]
    assert [t["name"] for t in few["tasks"]] == ["wide"] and few["num_matching"] == 1
    rc, out, _ = d.ctl("status", "--limit", "4", json_output=False)
    assert rc == 0 and out.rstrip("\n").endswith("(4 of 1201 tasks listed: --limit 4)")


def test_a_tree_longer_than_one_piece_comes_whole_with_its_ended_children(daemon):
    source = """
        import trio

        async def child(task, i):
            if i % 100 == 0:
                return i            # some end at once: listed under their parent, ended
            await trio.sleep(1000)

        async def main(task):
            for i in range(1200):
                task.spawn(child, i)
            await trio.sleep(1000)
    """
    d = daemon(jobs={"wide": source})
    d.wait_status(lambda s: s["daemon"]["num_tasks"] == 1189 and
                  sum(t["state"] == "finished" for t in s["tasks"]) == 12, "1,200 children")
    rows = d.ok("tree", "--job", "wide")["tasks"]   # (answered in pieces: see STATUS_CHUNK)
    root = rows[0]
    assert (root["name"], root["depth"], root["parent"]) == ("wide", 0, None)
    assert [r["id"] for r in rows[1:]] == sorted(r["id"] for r in rows[1:])
    assert len(rows) == 1201 and all(r["parent"] == root["id"] and r["depth"] == 1
                                     for r in rows[1:])
    assert sum(r["state"] == "finished" for r in rows) == 12
    rc, out, _ = d.ctl("tree", "wide", json_output=False)
    assert rc == 0 and len(out.splitlines()) == 1201
    shown = d.ok("show", "wide")   # alive children: listed up to a bound, all counted
    alive = [r["id"] for r in rows[1:] if r["state"] != "finished"]
    assert (shown["children"], shown["num_children"]) == (alive[:1000], 1188)
