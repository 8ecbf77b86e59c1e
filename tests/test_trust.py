"""End-to-end tests of the trust boundary: a real coschedd, driven by the real
coschedctl, as root and, through ``setpriv``, as other uids and gids.

What coschedd runs (StrictModes on job files, the config file, the runtime
folder), who may command it (read and control access, socket group and mode),
that no one can lock root out (quotas, reserve, idle timeout, connect floods),
``enabled = false``, terminal-safe output and request decoding. Other users are
numeric ids (4242, ...); the machine's accounts are never touched. Everything
lives under a fresh folder in /tmp that other users can traverse.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import test_daemon
from test_daemon import (BASE_CONFIG, COSCHEDCTL, COSCHEDD, CTL_TIMEOUT, LIVE, SLEEPER, WAIT,
                         _SCRUBBED_ENV, Daemon, merged, newest, raw_request, render_toml)

READER, CONTROLLER, STRANGER, MEMBER = 4242, 4243, 4244, 4245
GROUP = 4300
ENV = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}


def _can_act_as_others() -> bool:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    probe = subprocess.run(["setpriv", f"--reuid={READER}", f"--regid={READER}",
                            "--clear-groups", sys.executable, "-c", "import cosched.ctl"],
                           capture_output=True, timeout=CTL_TIMEOUT, env=ENV)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _can_act_as_others(),
                                reason="needs root, setpriv, and a Python other uids can run")


def as_user(uid: int, gid: int | None = None, groups: tuple[int, ...] = ()) -> list[str]:
    """The setpriv prefix that runs a command as uid/gid (and supplementary groups)."""
    extra = [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
    return ["setpriv", f"--reuid={uid}", f"--regid={uid if gid is None else gid}", *extra]


def ctl(d: Daemon, *args: str, who: list[str] = ()) -> subprocess.CompletedProcess:
    """coschedctl against d, as ``who`` (a setpriv prefix) or root; raw bytes out."""
    return subprocess.run([*who, COSCHEDCTL, "--socket", str(d.socket), *map(str, args)],
                          capture_output=True, timeout=CTL_TIMEOUT, env=ENV,
                          stdin=subprocess.DEVNULL)


def ctl_json(d: Daemon, *args: str, who: list[str] = ()) -> dict:
    proc = ctl(d, "--json", *args, who=who)
    assert proc.returncode == 0, (args, proc.stderr.decode(errors="replace"), d.log_tail())
    return json.loads(proc.stdout)


def place_job(folder: Path, name: str, source: str, *, uid: int = 0, mode: int = 0o644) -> Path:
    """Put a job file in place atomically with its final owner and mode."""
    tmp = folder / f".{name}.tmp"
    tmp.write_text(textwrap.dedent(source))
    os.chown(tmp, uid, -1)
    os.chmod(tmp, mode)
    path = folder / f"{name}.py"
    os.replace(tmp, path)
    return path


def marker_job(marker: Path) -> str:
    """A job whose top level leaves ``marker``: it must never exist for a refused file."""
    return f"""
        from pathlib import Path
        Path({str(marker)!r}).write_text("ran")
        import trio

        async def main(task):
            await trio.sleep(1000)
    """


@pytest.fixture
def base():
    """A fresh folder under /tmp that other uids can traverse."""
    path = Path(tempfile.mkdtemp(prefix="cosched-trust-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start(base):
    """Factory: start(jobs=..., config=..., before=fn(root)) -> a ready Daemon under base."""
    started: list[Daemon] = []

    def run(jobs=None, config=None, before=None, wait=True) -> Daemon:
        root = base / f"d{len(started)}"
        root.mkdir()
        if before is not None:
            before(root)
        d = Daemon(root, merged(BASE_CONFIG, config or {}), jobs or {}, None)
        started.append(d)
        if wait:
            d.wait_ready()
        return d

    yield run
    for d in started:
        d.stop()


def job_error(d: Daemon, name: str) -> str:
    """Wait until `jobs` lists ``name`` as refused; its error."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        jobs = {j["name"]: j for j in ctl_json(d, "jobs")["jobs"]}
        if name in jobs and jobs[name]["state"] == "error":
            return jobs[name]["error"]
        time.sleep(0.05)
    pytest.fail(f"job {name} not refused within {WAIT}s\n{d.log_tail()}")


def run_coschedd(config_path: Path) -> subprocess.CompletedProcess:
    """coschedd that is expected to refuse to start."""
    return subprocess.run([COSCHEDD, "--config", str(config_path)], capture_output=True,
                          text=True, timeout=WAIT, env=ENV, stdin=subprocess.DEVNULL,
                          cwd=config_path.parent)


# -- what coschedd runs ------------------------------------------------------------

def test_job_file_of_another_user_is_refused_and_never_runs(start, base):
    marker = base / "ran.marker"
    d = start(jobs={"keeper": SLEEPER})
    path = place_job(d.jobs_dir, "theirs", marker_job(marker), uid=READER)
    error = job_error(d, "theirs")
    assert error.startswith(f"unsafe file {path} (owner uid {READER}, mode 0644): owned by "
                            f"uid {READER}, not by root")
    assert error.endswith("refusing to run it")
    status = ctl_json(d, "status")
    assert {e["job"]: e["error"] for e in status["job_errors"]} == {"theirs": error}
    assert [t["name"] for t in status["tasks"]] == ["keeper"]
    text = ctl(d, "status").stdout.decode()
    assert "job errors:" in text and f"owner uid {READER}" in text
    logged = [r for r in d.log_records() if r.get("event") == "job failed to load"]
    assert logged and logged[-1]["reason"] == error and logged[-1]["job"] == "theirs"
    assert not marker.exists()


def test_owners_in_place_edit_of_a_loaded_job_never_runs(start, base):
    marker = base / "edit.marker"
    d = start(jobs={"job": SLEEPER})
    first = d.wait_task("job", lambda t: t["state"] in LIVE, "running")
    path = d.jobs_dir / "job.py"
    os.chown(path, READER, -1)  # handed over to a user...
    assert f"owner uid {READER}" in job_error(d, "job")
    edit = f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
    proc = subprocess.run([*as_user(READER), "sh", "-c", f"cat >> '{path}'"], input=edit.encode(),
                          timeout=WAIT, capture_output=True)
    assert proc.returncode == 0, proc.stderr  # ... who now edits it in place
    deadline = time.monotonic() + WAIT
    while sum(r.get("event") == "job failed to load" for r in d.log_records()) < 2:
        assert time.monotonic() < deadline, d.log_tail()
        time.sleep(0.05)
    assert f"owner uid {READER}" in job_error(d, "job")
    assert not marker.exists()
    task = newest(ctl_json(d, "status"), "job")
    assert (task["id"], task["state"] in LIVE) == (first["id"], True)  # the trusted code runs on


def test_every_file_of_a_world_writable_jobs_folder_is_refused_sticky_or_not(start):
    def open_jobs(root):
        (root / "jobs").mkdir(mode=0o755)
        os.chmod(root / "jobs", 0o1777)

    d = start(jobs={"a": SLEEPER}, before=open_jobs)
    error = job_error(d, "a")
    assert error.startswith(f"unsafe folder {d.jobs_dir} (owner uid 0, mode 1777): writable by "
                            "its group and others; the sticky bit does not make it safe")
    assert ctl_json(d, "status")["tasks"] == []


def test_jobs_under_a_group_writable_folder_are_refused(start):
    d = start(config={"daemon": {"jobs_dir": "shared/jobs"}},
              before=lambda root: (root / "shared" / "jobs").mkdir(parents=True))
    shared = d.root / "shared"
    os.chmod(shared, 0o775)
    place_job(shared / "jobs", "a", SLEEPER)
    assert job_error(d, "a").startswith(f"unsafe folder {shared} (owner uid 0, mode 0775): "
                                        "writable by its group (chmod g-w")


def test_symlink_to_another_users_file_is_refused(start, base):
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    target = place_job(elsewhere, "target", SLEEPER, uid=READER)
    d = start(jobs={"keeper": SLEEPER})
    (d.jobs_dir / "linked.py").symlink_to(target)
    error = job_error(d, "linked")
    assert error.startswith(f"unsafe file {d.jobs_dir / 'linked.py'} (owner uid {READER}")
    os.chown(target, 0, -1)  # root takes it over: the same link now loads
    d.ok("reload")
    d.wait_task("linked", lambda t: t["state"] in LIVE, "running once the target is root's")


def test_unsafe_config_file_stops_startup(base):
    jobs = base / "jobs"
    jobs.mkdir()
    config = base / "coschedd.toml"
    config.write_text(render_toml(BASE_CONFIG))
    for uid, mode, problem in [(READER, 0o644, f"owned by uid {READER}"),
                               (0, 0o666, "writable by its group and others")]:
        os.chown(config, uid, -1)
        os.chmod(config, mode)
        proc = run_coschedd(config)
        assert proc.returncode == 2, proc
        assert proc.stderr.startswith(
            f"coschedd: configuration error: {config}: refusing the config file: unsafe file "
            f"{config} (owner uid {uid}, mode {mode:04o}): {problem}"), proc.stderr
        assert not (base / "run").exists()


@pytest.mark.parametrize("owner, mode, problem", [(READER, 0o750, f"owned by uid {READER}"),
                                                  (0, 0o777, "writable by its group and others")])
def test_unsafe_runtime_folder_stops_startup(base, owner, mode, problem):
    (base / "jobs").mkdir()
    run = base / "run"
    run.mkdir()
    os.chown(run, owner, -1)
    os.chmod(run, mode)
    config = base / "coschedd.toml"
    config.write_text(render_toml(BASE_CONFIG))
    proc = run_coschedd(config)
    assert proc.returncode == 2, proc
    assert (f"coschedd: refusing to start: runtime folder: unsafe folder {run} (owner uid "
            f"{owner}, mode {mode:04o}): {problem}") in proc.stderr
    assert not (run / "coschedd.sock").exists()


def test_strict_modes_off_loads_unsafe_files_with_warnings(start):
    d = start(config={"daemon": {"strict_modes": False}})
    place_job(d.jobs_dir, "open", SLEEPER, mode=0o666)
    d.wait_task("open", lambda t: t["state"] in LIVE, "running despite its mode")
    records = d.log_records()
    assert any(r.get("event", "").startswith("strict_modes is off: unsafe job files")
               and r["level"] == "warning" for r in records)
    loaded = [r for r in records if r.get("event") == "strict_modes is off: loading an unsafe "
              "job file"]
    assert loaded and loaded[0]["job"] == "open" and "writable by its group and others" in \
        loaded[0]["reason"]


@pytest.fixture
def as_daemon_user(base, monkeypatch):
    """Daemons started from here run as uid READER (through setpriv), in a runtime
    folder of their own; returns the ``before`` hook that makes that folder."""
    wrapper = base / "coschedd-as-user"
    wrapper.write_text(f'#!/bin/sh\nexec {" ".join(as_user(READER))} {COSCHEDD} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setattr(test_daemon, "COSCHEDD", str(wrapper))

    def own_runtime_folder(root):
        for folder in ("run", "state"):   # the daemon's user writes both
            (root / folder).mkdir(mode=0o750)
            os.chown(root / folder, READER, READER)
    return own_runtime_folder


def test_a_daemon_trusts_its_own_user_and_root_only(start, as_daemon_user):
    d = start(jobs={"roots": SLEEPER}, before=as_daemon_user)
    assert psutil.Process(d.proc.pid).uids().real == READER
    place_job(d.jobs_dir, "mine", SLEEPER, uid=READER)
    place_job(d.jobs_dir, "theirs", SLEEPER, uid=CONTROLLER)
    assert job_error(d, "theirs").startswith(
        f"unsafe file {d.jobs_dir / 'theirs.py'} (owner uid {CONTROLLER}, mode 0644): owned by "
        f"uid {CONTROLLER}, not by root or uid {READER}")
    d.wait_status(lambda s: {t["name"] for t in s["tasks"]} == {"roots", "mine"}, "both loaded")


def test_a_group_the_daemons_user_is_not_in_stops_startup(start, as_daemon_user):
    d = start(config={"control": {"control_group": GROUP}}, before=as_daemon_user, wait=False)
    assert d.wait_exit() == 2
    assert (f"coschedd: cannot set up the runtime folder: [Errno 1] cannot give {d.root / 'run'} "
            f"to group {GROUP}: Operation not permitted (the daemon's user must be a member of "
            "it)") in d.log_text()


# -- who may command it -------------------------------------------------------------

def _forbidden(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc
    message = proc.stderr.decode()
    assert message.startswith("coschedctl: forbidden: "), message
    return message


def test_read_and_control_users_reach_a_world_connectable_socket(start):
    d = start(jobs={"sleeper": SLEEPER},
              config={"control": {"read_users": [READER], "control_users": [CONTROLLER]},
                      "job": {"sleeper": {"config": {"token": "s3cret"}}}})
    d.wait_task("sleeper", lambda t: t["state"] in LIVE, "running")
    assert os.stat(d.socket).st_mode & 0o777 == 0o666  # the uid check is the daemon's
    assert os.stat(d.socket.parent).st_mode & 0o001
    reader, controller, stranger = as_user(READER), as_user(CONTROLLER), as_user(STRANGER)

    assert ctl_json(d, "ping", who=reader)["pong"] is True
    assert newest(ctl_json(d, "status", who=reader), "sleeper")["state"] in LIVE
    assert [j["name"] for j in ctl_json(d, "jobs", who=reader)["jobs"]] == ["sleeper"]
    shown = ctl_json(d, "show", "sleeper", who=reader)
    assert shown["name"] == "sleeper" and "config" not in shown
    assert "s3cret" not in ctl(d, "show", "sleeper", who=reader).stdout.decode()
    for args in (["kill", "sleeper"], ["start", "sleeper"], ["reload"], ["resume", "sleeper"]):
        message = _forbidden(ctl(d, *args, who=reader))
        assert f"'{args[0]}' needs control access; uid {READER} has read access only" in message
        assert "control.control_users or control.control_group" in message
    assert newest(ctl_json(d, "status"), "sleeper")["state"] in LIVE  # nothing was killed

    assert ctl_json(d, "show", "sleeper", who=controller)["config"] == {"token": "s3cret"}
    assert ctl_json(d, "kill", "sleeper", who=controller)["task"]["state"] == "killed"
    assert ctl_json(d, "start", "sleeper", who=controller)["task"]["name"] == "sleeper"

    message = _forbidden(ctl(d, "ping", who=stranger))
    assert f"uid {STRANGER} may not use this control socket" in message
    assert "control.read_users or control.read_group" in message


def test_a_group_gets_the_socket_and_a_folder_it_can_traverse(start):
    d = start(config={"control": {"read_group": GROUP}})
    sock, run = os.stat(d.socket), os.stat(d.socket.parent)
    assert (sock.st_gid, sock.st_mode & 0o777) == (GROUP, 0o660)
    assert run.st_gid == GROUP and run.st_mode & 0o010 and not run.st_mode & 0o007
    by_primary = as_user(MEMBER, GROUP)
    by_supplementary = as_user(MEMBER, MEMBER, groups=(GROUP,))
    for who in (by_primary, by_supplementary):
        assert ctl_json(d, "ping", who=who)["pong"] is True
        assert "needs control access" in _forbidden(ctl(d, "reload", who=who))
    outsider = ctl(d, "ping", who=as_user(STRANGER))  # the kernel keeps it out
    assert outsider.returncode == 3, outsider
    assert b"Permission denied" in outsider.stderr


def test_control_group_member_may_do_everything(start):
    d = start(jobs={"sleeper": SLEEPER}, config={"control": {"control_group": GROUP}})
    d.wait_task("sleeper", lambda t: t["state"] in LIVE, "running")
    who = as_user(MEMBER, MEMBER, groups=(GROUP,))
    assert ctl_json(d, "kill", "sleeper", who=who)["task"]["state"] == "killed"


def test_old_allowed_users_key_means_control_users(start):
    d = start(jobs={"sleeper": SLEEPER}, config={"control": {"allowed_users": [CONTROLLER]}})
    d.wait_task("sleeper", lambda t: t["state"] in LIVE, "running")
    assert ctl_json(d, "kill", "sleeper", who=as_user(CONTROLLER))["task"]["state"] == "killed"
    notes = [r.get("note") for r in d.log_records() if r.get("event") == "configuration"]
    assert notes == ["control.allowed_users is an old name; it is read as control.control_users"]


# -- no lock-out --------------------------------------------------------------------

HOLDER = r"""
import json, socket, sys
path, count = sys.argv[1], int(sys.argv[2])
held, answers = [], []
for i in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    try:
        s.sendall(b'{"id": %d, "cmd": "ping"}\n' % i)
    except OSError:
        pass  # refused peers may be hung up on before they write
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    answers.append(json.loads(data))
    held.append(s)
print(json.dumps(answers), flush=True)
sys.stdin.read()  # hold every connection until told to go
"""


def hold_connections(d: Daemon, uid: int, count: int) -> tuple[subprocess.Popen, list[dict]]:
    proc = subprocess.Popen([*as_user(uid), sys.executable, "-c", HOLDER, str(d.socket),
                             str(count)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=ENV)
    line = proc.stdout.readline()
    assert line, "the holder died"
    return proc, json.loads(line)


def test_per_user_quota_and_the_reserve_keep_root_in(start):
    d = start(config={"control": {"read_users": [READER, CONTROLLER], "max_connections": 8,
                                  "max_connections_per_user": 3}})
    holders = []
    try:
        first, answers = hold_connections(d, READER, 4)
        holders.append(first)
        assert [a["ok"] for a in answers] == [True, True, True, False]
        assert answers[3]["error"] == {"code": "busy", "message":
                                       f"uid {READER} already has 3 connections open, its limit"}
        second, answers = hold_connections(d, CONTROLLER, 2)
        holders.append(second)
        assert [a["ok"] for a in answers] == [True, False]
        assert answers[1]["error"]["message"] == ("too many connections (limit 8, of which 4 "
                                                  "are kept for root and the daemon's user)")
        for _ in range(3):
            assert ctl_json(d, "ping")["pong"] is True  # root still gets in
    finally:
        for proc in holders:
            proc.stdin.close()
            proc.wait(WAIT)


def test_idle_connection_is_closed(start):
    d = start(config={"control": {"idle_timeout": 0.5}})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(WAIT)
        sock.connect(str(d.socket))
        sock.sendall(b'{"id": 1, "cmd": "ping"}\n')  # activity first ...
        data = b""
        while chunk := sock.recv(4096):  # ... then silence, until the daemon hangs up
            data += chunk
    first, second = map(json.loads, data.splitlines())
    assert first["ok"] is True
    assert second["error"] == {"code": "timeout",
                               "message": "no request for 0.5s; closing the connection"}


FLOODER = r"""
import socket, sys, threading
path, held = sys.argv[1], []

def flood():
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
        except OSError:  # EAGAIN: the listen queue is full, as intended
            s.close()
            continue
        if len(held) < 500:
            held.append(s)  # never read: an idle connection for as long as the daemon allows
        else:
            s.close()

for _ in range(8):
    threading.Thread(target=flood, daemon=True).start()
print("flooding", flush=True)
sys.stdin.read()
"""


def test_a_connect_flood_from_one_user_cannot_keep_root_out(start):
    d = start(config={"control": {"read_users": [READER]}})
    flood = subprocess.Popen([*as_user(READER), sys.executable, "-c", FLOODER, str(d.socket)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=ENV)
    try:
        assert flood.stdout.readline() == b"flooding\n"
        results = [ctl(d, "ping").returncode for _ in range(6)]
        assert flood.poll() is None  # the flood went on during every ping
    finally:
        flood.kill()
        flood.wait(WAIT)
    assert results == [0] * 6
    assert ctl_json(d, "ping")["pong"] is True


CONNECT = "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])"


def test_root_has_a_private_socket_that_no_one_else_can_reach(start):
    """Like systemd's private bus socket: mode 0600 beside the shared one, tried first by
    coschedctl, so a flood on the shared socket never stands between root and the daemon."""
    import stat

    d = start(config={"control": {"read_users": [READER]}})
    private = Path(f"{d.socket}.private")
    st = private.lstat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert st.st_uid == os.geteuid()
    probe = subprocess.run([*as_user(READER), sys.executable, "-c", CONNECT, str(private)],
                           capture_output=True, text=True, timeout=CTL_TIMEOUT, env=ENV)
    assert "PermissionError" in probe.stderr, probe.stderr
    assert ctl_json(d, "ping", who=as_user(READER))["pong"] is True   # the shared socket
    moved = d.socket.with_name("moved-away.sock")
    os.rename(d.socket, moved)   # now only the private socket is where coschedctl looks
    try:
        assert ctl_json(d, "ping")["pong"] is True
        assert ctl(d, "ping", who=as_user(READER)).returncode == 3   # unreachable
    finally:
        os.rename(moved, d.socket)
    d.stop()
    assert not private.exists() and not d.socket.exists()


def test_a_file_in_the_private_sockets_place_is_kept_and_the_shared_socket_serves(start):
    def squat(root: Path) -> None:
        (root / "run").mkdir(mode=0o755)
        (root / "run" / "coschedd.sock.private").write_text("not a socket")

    d = start(before=squat)
    private = Path(f"{d.socket}.private")
    assert ctl_json(d, "ping")["pong"] is True
    assert private.read_text() == "not a socket"
    assert any(r.get("event", "").startswith("no private control socket")
               and "not a socket" in r.get("error", "") for r in d.log_records())


# -- enabled = false ----------------------------------------------------------------

def test_disabled_job_is_started_only_with_force(start):
    d = start(jobs={"off": SLEEPER}, config={"job": {"off": {"enabled": False}}})
    assert {j["name"]: j["state"] for j in ctl_json(d, "jobs")["jobs"]} == {"off": "disabled"}
    proc = ctl(d, "start", "off")
    assert proc.returncode == 1
    assert proc.stderr.decode().strip() == (
        "coschedctl: job-disabled: job 'off' is disabled (enabled = false in its [job] table); "
        "start it with --force to run it anyway")
    assert ctl_json(d, "status")["tasks"] == []
    started = ctl_json(d, "start", "--force", "off")["task"]
    d.wait_task("off", lambda t: t["id"] == started["id"] and t["state"] in LIVE, "forced")


# -- safe terminal output -------------------------------------------------------------

EVIL = """
    import trio

    from cosched import coro

    async def child(task):
        await trio.sleep(1000)

    async def main(task):
        task.log.info("greeting", text="\\x1b]0;pwned\\x07")
        task.spawn(child, name="kid\\x1b[31mRED\\nFAKE ROW")
        await coro.yield_("\\x1b]0;pwned\\x07", "\\x9b2J", "a\\u202eb")
"""
FAILING = """
    async def main(task):
        raise ValueError("bad\\x1b[2Jthing\\nFAKE LINE")
"""
ODD_NAME = "odd\x1b[2J\nname"
NOT_UTF8 = os.fsdecode(b"latin\xe9")


def test_human_output_escapes_what_jobs_chose_and_json_stays_exact(start):
    d = start(jobs={"evil": EVIL, "failing": FAILING, ODD_NAME: SLEEPER, NOT_UTF8: SLEEPER},
              config={"job": {"failing": {"restart": "no"}}})
    d.wait_status(lambda s: len(s["tasks"]) == 5
                  and newest(s, "failing")["state"] == "failed"
                  and newest(s, "evil")["state"] == "suspended", "all five tasks")
    outputs = {args: ctl(d, *args) for args in
               [("status",), ("jobs",), ("show", "evil"), ("show", "failing"), ("reload",)]}
    for args, proc in outputs.items():
        assert proc.returncode == 0, (args, proc.stderr)
        out = proc.stdout
        for raw in (b"\x1b", b"\x07", b"\xc2\x9b", b"\xe2\x80\xae", b"\xe9"):
            assert raw not in out, (args, raw, out)
        forged = [line for line in out.splitlines()
                  if line.startswith((b"FAKE", b"name ", b"name.py"))]
        assert not forged, (args, out)
    status = outputs[("status",)].stdout.decode()
    assert "kid\\x1b[31mRED\\nFAKE ROW" in status
    assert "odd\\x1b[2J\\nname" in outputs[("jobs",)].stdout.decode()
    assert "latin\\xe9" in outputs[("jobs",)].stdout.decode()
    assert '"\\u001b]0;pwned\\u0007", "\\u009b2J", "a\\u202eb"' in \
        outputs[("show", "evil")].stdout.decode()
    failing = outputs[("show", "failing")].stdout.decode()
    assert "ValueError: bad\\x1b[2Jthing\\nFAKE LINE" in failing

    exact = json.loads(ctl(d, "--json", "status").stdout)
    assert {t["name"] for t in exact["tasks"]} >= {"kid\x1b[31mRED\nFAKE ROW", ODD_NAME, NOT_UTF8}
    assert newest(exact, "evil")["yielded"] == ["\x1b]0;pwned\x07", "\x9b2J", "a\u202eb"]
    raw = ctl(d, "--json", "jobs").stdout
    assert b"\x1b" not in raw and b"\xc2\x9b" not in raw
    assert {j["name"] for j in json.loads(raw)["jobs"]} == {"evil", "failing", ODD_NAME, NOT_UTF8}


def test_console_log_escapes_task_names_and_values(start):
    d = start(jobs={"evil": EVIL}, config={"log": {"format": "console"}})
    deadline = time.monotonic() + WAIT
    while b"greeting" not in d.log_path.read_bytes():
        assert time.monotonic() < deadline, d.log_tail()
        time.sleep(0.05)
    log = d.log_path.read_bytes()
    assert b"\x1b" not in log and b"\x07" not in log and b"\xc2\x9b" not in log
    assert b"\\x1b]0;pwned\\x07" in log


# -- request decoding ---------------------------------------------------------------

def test_odd_task_references_and_huge_numbers_are_clear_errors(start):
    d = start(jobs={"sleeper": SLEEPER})
    task = d.wait_task("sleeper", lambda t: t["state"] in LIVE, "running")
    cases = [({"cmd": "show", "args": {"task": "\u00b2"}}, "no-such-task"),
             ({"cmd": "show", "args": {"task": "9" * 400}}, "no-such-task"),
             ({"cmd": "show", "args": {"task": 2**63}}, "bad-request"),
             ({"cmd": "show", "args": {"task": -1}}, "bad-request"),
             ({"cmd": "resume", "args": {"task": "sleeper", "timeout": 10**400}}, "bad-request"),
             ({"cmd": "resume", "args": {"task": "sleeper", "timeout": 1e308}}, "bad-request"),
             ({"cmd": "start", "args": {"job": "sleeper", "force": 1}}, "bad-request")]
    for i, (request, code) in enumerate(cases):
        response = raw_request(d.socket, {"id": i, **request})
        assert response["error"]["code"] == code, (request, response)
    assert ctl_json(d, "show", str(task["id"]))["id"] == task["id"]  # digits are still ids
    assert not [r for r in d.log_records() if r.get("event") == "control command failed"]
