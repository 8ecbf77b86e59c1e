"""Socket activation: a real coschedd handed its control socket the way systemd does it.

The test plays the service manager: it binds and listens on the socket, puts it
on descriptor 3 of the daemon and sets LISTEN_PID (the daemon's own pid: a
shell (bash) sets it to $$ and execs the daemon) and LISTEN_FDS. One test uses
systemd's own systemd-socket-activate where it is installed. The unit files
are checked with systemd-analyze verify.
"""

from __future__ import annotations

import json

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from cosched import activation
from test_daemon import (BASE_CONFIG, COSCHEDCTL, COSCHEDD, SLEEPER, WAIT, Daemon, merged,
                         render_toml, write_job)

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "systemd"

ENV_PRINTER = """
    import os
    from pathlib import Path

    import trio

    async def main(task):
        result = await task.run_process(["env"], capture_stdout=True)
        Path(task.config["out"]).write_bytes(result.stdout)
        await trio.sleep(1000)
"""


class Activated(Daemon):
    """A Daemon whose control socket the test created, passed as descriptor 3."""

    def __init__(self, root: Path, listener: socket.socket, jobs: dict, config: dict | None = None,
                 env: dict | None = None):
        self.listener = listener
        self._extra_env = {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "control", **(env or {})}
        path = listener.getsockname() if getattr(listener, "family", None) == socket.AF_UNIX \
            else ""
        if path and "LISTEN_PID" not in self._extra_env:  # the daemon's control.socket
            config = merged({"control": {"socket": path}}, config or {})
        super().__init__(root, merged(BASE_CONFIG, config or {}), jobs, None)
        if path and "LISTEN_PID" not in self._extra_env:
            self.socket = Path(path)

    def _spawn(self, environ: dict) -> subprocess.Popen:
        fd = self.listener.fileno()
        environ.update(self._extra_env)
        script = f'LISTEN_PID=${{LISTEN_PID-$$}} exec "$0" "$@" 3<&{fd} {fd}<&-'
        return subprocess.Popen(["bash", "-c", script, COSCHEDD, "--config", str(self.config_path)],
                                stdin=subprocess.DEVNULL, stdout=self._log_file,
                                stderr=subprocess.STDOUT, env=environ, cwd=self.root,
                                pass_fds=(fd,))


def listening_socket(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o660)
    sock.listen(16)
    return sock


@pytest.fixture
def passed(tmp_path):
    """Factory: passed(root_name, listener, jobs, ...) -> a started Activated daemon."""
    started = []

    def start(listener, jobs=None, config=None, env=None, wait=True, name="d"):
        d = Activated(tmp_path / f"{name}{len(started)}", listener, jobs or {}, config, env)
        started.append(d)
        if wait:
            d.wait_ready()
        return d
    yield start
    for d in started:
        d.stop()


def test_the_daemon_serves_the_passed_socket_and_leaves_it_in_place(passed, tmp_path):
    path = tmp_path / "d0" / "run" / "coschedd.sock"
    listener = listening_socket(path)
    inode = os.stat(path).st_ino
    d = passed(listener, {"sleeper": SLEEPER})
    assert d.socket == path
    assert not any("is not at control.socket" in str(r.get("event")) for r in d.log_records())
    assert any(r.get("event") == "using the control socket passed by the service manager"
               and r.get("name") == "control" for r in d.log_records())
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0
    assert os.stat(path).st_ino == inode   # the file is the service manager's: kept
    assert os.stat(path).st_mode & 0o777 == 0o660


def test_clients_queue_in_the_socket_while_the_daemon_restarts(passed, tmp_path):
    path = tmp_path / "d0" / "run" / "coschedd.sock"
    listener = listening_socket(path)
    first = passed(listener, {"sleeper": SLEEPER})
    first.signal(signal.SIGTERM)
    assert first.wait_exit() == 0
    # No daemon now; a client connects and asks anyway, as during a restart.
    waiting = subprocess.Popen([COSCHEDCTL, "--socket", str(path), "--json", "ping"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = passed(listener, {"sleeper": SLEEPER}, wait=False)
    out, err = waiting.communicate(timeout=WAIT * 2)
    assert waiting.returncode == 0, err
    assert json.loads(out)["pid"] == second.proc.pid
    second.wait_ready()


def test_the_activation_variables_do_not_reach_the_processes_of_jobs(passed, tmp_path):
    out = tmp_path / "env.txt"
    listener = listening_socket(tmp_path / "d0" / "run" / "coschedd.sock")
    d = passed(listener, {"envjob": ENV_PRINTER},
               config={"job": {"envjob": {"config": {"out": str(out)}}}})
    d.wait_status(lambda s: out.exists() and out.stat().st_size > 0, "the job ran env")
    names = {line.split("=", 1)[0] for line in out.read_text().splitlines()}
    assert not names & {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"}


def test_descriptors_meant_for_another_process_are_ignored(passed, tmp_path):
    """LISTEN_PID of another process: the daemon binds its own socket as usual."""
    decoy = listening_socket(tmp_path / "decoy" / "decoy.sock")
    d = passed(decoy, {"sleeper": SLEEPER}, env={"LISTEN_PID": "1"})
    assert d.socket.exists() and d.socket != Path(decoy.getsockname())
    assert not any("passed by the service manager" in str(r.get("event"))
                   for r in d.log_records())


@pytest.mark.parametrize("what, env, message", [
    ("two", {"LISTEN_FDS": "2"}, "LISTEN_FDS='2': coschedd takes exactly one socket"),
    ("file", {}, "descriptor 3 passed by the service manager is not a socket"),
    ("dgram", {}, "is not a stream socket (SOCK_DGRAM)"),
    ("unlistened", {}, "is not listening"),
    ("inet", {}, "is not a unix socket (family AF_INET)"),
])
def test_what_cannot_be_served_is_a_clear_start_up_error(passed, tmp_path, what, env, message):
    if what == "file":
        thing = open(tmp_path / "plain", "w")
    elif what == "dgram":
        thing = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    elif what == "inet":
        thing = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        thing.bind(("127.0.0.1", 0))
        thing.listen()
    else:
        thing = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with thing:
        d = passed(thing, {"sleeper": SLEEPER}, env=env, wait=False)
        assert d.wait_exit() == 2
        log = d.log_text()
    assert message in log and log.startswith("coschedd: socket activation: "), log


def test_control_socket_parser_reads_and_clears_the_variables(tmp_path):
    environ = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "OTHER": "x"}
    assert activation.control_socket(environ) is None
    assert environ == {"OTHER": "x"}
    assert activation.control_socket({}) is None


@pytest.mark.skipif(not shutil.which("systemd-socket-activate"),
                    reason="systemd-socket-activate is not installed")
def test_started_on_the_first_connection_by_systemd_socket_activate(tmp_path):
    """systemd's own tool binds the socket, waits for a client, then execs coschedd with it."""
    root = tmp_path / "sa"
    (root / "run").mkdir(parents=True, mode=0o750)
    write_job(root / "jobs", "sleeper", SLEEPER)
    config = root / "coschedd.toml"
    config.write_text(render_toml(BASE_CONFIG))
    path = root / "run" / "coschedd.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "COSCHED_"))}
    with open(root / "log", "wb") as log:
        proc = subprocess.Popen(["systemd-socket-activate", "-l", str(path), COSCHEDD,
                                 "--config", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=root)
    try:
        deadline = time.monotonic() + WAIT
        while not path.exists():   # systemd-socket-activate binds it, then waits for a client
            assert proc.poll() is None and time.monotonic() < deadline, (root / "log").read_text()
            time.sleep(0.05)
        ping = subprocess.run([COSCHEDCTL, "--socket", str(path), "--json", "ping"],
                              capture_output=True, text=True, timeout=WAIT * 3)
        assert ping.returncode == 0, (ping, (root / "log").read_text())
        assert json.loads(ping.stdout)["pid"] == proc.pid   # systemd-socket-activate exec'd coschedd
    finally:
        proc.terminate()
        proc.wait(WAIT)
    assert path.exists()


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is missing")
def test_unit_files_pass_systemd_analyze_verify(tmp_path):
    for name in ("coschedd.service", "coschedd.socket"):
        shutil.copy(SYSTEMD / name, tmp_path / name)
    env = {**os.environ, "MANPATH": str(REPO / "man")}   # Documentation=man:coschedd(8)
    proc = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "coschedd.socket"),
                           str(tmp_path / "coschedd.service")],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


def test_socket_unit_and_tmpfiles_entry_agree_with_the_service():
    import configparser
    socket_unit = configparser.ConfigParser(strict=False, interpolation=None)
    socket_unit.optionxform = str
    socket_unit.read(SYSTEMD / "coschedd.socket")
    sock = socket_unit["Socket"]
    assert sock["ListenStream"] == "/run/cosched/coschedd.sock"
    assert (sock["SocketUser"], sock["SocketGroup"], sock["SocketMode"]) == (
        "cosched", "cosched", "0660")
    service = (SYSTEMD / "coschedd.service").read_text()
    assert "RuntimeDirectory=cosched\n" in service and "RuntimeDirectoryPreserve=yes\n" in service
    entries = [line.split() for line in (SYSTEMD / "cosched.tmpfiles").read_text().splitlines()
               if line and not line.startswith("#")]
    assert entries == [["d", "/run/cosched", "0750", "cosched", "cosched", "-"]]
