"""coschedctl -H against a real sshd on localhost, started by the test.

The sshd runs from a throwaway folder: its own host key, config, authorized
keys and pid file, on a free loopback port; the client uses its own ssh config
(``COSCHED_SSH="ssh -F ..."``), keys and known_hosts. Nothing of the machine's
own ssh setup or accounts is read or changed. (sshd needs its privilege
separation folder /run/sshd, which is created if missing, as its service
would.) Skipped where openssh-server is not installed; ``make test`` installs it.
"""

from __future__ import annotations

import json

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cosched import remote
from test_daemon import ASKER, COSCHEDCTL, SLEEPER, WAIT, daemon  # noqa: F401

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
pytestmark = pytest.mark.skipif(not (os.access(SSHD, os.X_OK) and shutil.which("ssh-keygen")),
                                reason="openssh-server is not installed")
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True, timeout=30)


class Sshd:
    """An sshd on 127.0.0.1:port that lets in the key ``client_key``, and a client
    config with hosts: ``box`` (good key), ``wrongkey`` (a key sshd does not
    know), ``closed`` (a port nobody listens on)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(mode=0o700)
        self.folder = folder
        self.port = free_port()
        for name in ("host_key", "client_key", "wrong_key"):
            keygen(folder / name)
        (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
        (folder / "sshd_config").write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {folder}/host_key",
            f"AuthorizedKeysFile {folder}/authorized_keys", f"PidFile {folder}/sshd.pid",
            "PubkeyAuthentication yes", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
            "UsePAM no", "StrictModes no",   # the keys live under /tmp
            f"SetEnv PATH={BIN}:/usr/local/bin:/usr/bin:/bin", "LogLevel VERBOSE", ""]))
        host_pub = (folder / "host_key.pub").read_text().split()
        (folder / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} "
                                            f"{host_pub[1]}\n")
        closed = free_port()
        (folder / "ssh_config").write_text("\n".join([
            *self._host("box", self.port, "client_key"),
            *self._host("wrongkey", self.port, "wrong_key"),
            *self._host("closed", closed, "client_key"), ""]))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.log = open(folder / "sshd.log", "wb")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(folder / "sshd_config")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + WAIT
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                assert self.proc.poll() is None, (folder / "sshd.log").read_text()
                assert time.monotonic() < deadline, "sshd did not start listening"
                time.sleep(0.05)
        self.env = {**os.environ, "COSCHED_SSH": f"ssh -F {folder / 'ssh_config'}"}

    def _host(self, name: str, port: int, key: str) -> list[str]:
        return [f"Host {name}", "  HostName 127.0.0.1", f"  Port {port}",
                f"  IdentityFile {self.folder / key}", "  IdentitiesOnly yes",
                f"  UserKnownHostsFile {self.folder / 'known_hosts'}",
                "  GlobalKnownHostsFile /dev/null", "  StrictHostKeyChecking yes",
                "  LogLevel ERROR"]

    def ctl(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([COSCHEDCTL, *map(str, args)], capture_output=True, text=True,
                              timeout=60, env={**self.env, **(env or {})},
                              stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(WAIT)
        self.log.close()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("ssh") / "sshd")
    yield server
    server.stop()


def test_commands_run_on_the_remote_host_and_render_here(sshd, daemon):
    d = daemon(jobs={"sleeper": SLEEPER, "asker": ASKER})
    d.wait_task("asker", lambda t: t["state"] == "suspended", "suspended")
    local = subprocess.run([COSCHEDCTL, "--socket", str(d.socket), "jobs"], capture_output=True,
                           text=True, timeout=60)
    over_ssh = sshd.ctl("-H", "root@box", "--socket", d.socket, "jobs")
    assert over_ssh.returncode == 0, over_ssh.stderr
    assert over_ssh.stdout == local.stdout and "asker" in local.stdout
    ping = sshd.ctl("--host=box", "ping", "--socket", d.socket, "--json")
    assert ping.returncode == 0, ping.stderr
    assert json.loads(ping.stdout)["pid"] == d.proc.pid
    # Values with spaces, quotes and shell syntax arrive as they were typed.
    resumed = sshd.ctl("-H", "box", "--socket", d.socket, "--json", "resume", "asker",
                       "two words", '"quoted"', "$(touch /tmp/never)", "a'b")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["values"] == [
        ["two words", "quoted", "$(touch /tmp/never)", "a'b"]]
    assert not Path("/tmp/never").exists()


def test_exit_codes_are_those_of_local_use(sshd, daemon):
    d = daemon(jobs={"sleeper": SLEEPER})
    refused = sshd.ctl("-H", "box", "--socket", d.socket, "kill", "nosuch")
    assert refused.returncode == 1
    assert "coschedctl: no-such-task: no task 'nosuch'" in refused.stderr
    down = sshd.ctl("-H", "box", "--socket", d.root / "nowhere.sock", "status")
    assert down.returncode == 3
    assert "cannot reach coschedd at" in down.stderr
    usage = sshd.ctl("-H", "box", "resume")
    assert usage.returncode == 2


@pytest.mark.parametrize("host, message", [
    ("closed", "ssh to closed failed: ssh: connect to host 127.0.0.1 port"),
    ("wrongkey", "ssh to wrongkey failed: root@127.0.0.1: Permission denied (publickey)"),
])
def test_an_unreachable_host_or_a_refused_key_is_exit_3(sshd, host, message):
    proc = sshd.ctl("-H", host, "ping")
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith(f"coschedctl: cannot reach {host}: {message}"), proc.stderr


def test_a_host_without_coschedctl_is_exit_3(sshd):
    proc = sshd.ctl("-H", "box", "ping", env={"COSCHED_REMOTE_COSCHEDCTL": "coschedctl-absent"})
    assert proc.returncode == 3
    assert "cannot run coschedctl on box" in proc.stderr
    assert "coschedctl-absent: command not found" in proc.stderr


def test_an_unknown_host_key_is_refused_not_asked(sshd, tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text((sshd.folder / "ssh_config").read_text().replace(
        str(sshd.folder / "known_hosts"), str(tmp_path / "empty_known_hosts")))
    proc = sshd.ctl("-H", "box", "ping", env={"COSCHED_SSH": f"ssh -F {config}"})
    assert proc.returncode == 3
    assert "Host key verification failed" in proc.stderr


@pytest.mark.parametrize("host", ["-oProxyCommand=touch /tmp/x", "a b", "host\n", "u@-x"])
def test_hosts_that_ssh_could_read_as_options_are_usage_errors(host):
    proc = subprocess.run([COSCHEDCTL, "-H", host, "ping"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "not a host name or [USER@]HOST" in proc.stderr


def test_strip_host_and_the_remote_command_line():
    assert remote.strip_host(["-H", "h", "--json", "status", "--host=x", "-Hy", "t"]) == [
        "status", "t"]
    assert remote.strip_host(["resume", "t", "--", "-H", "--json"]) == [
        "resume", "t", "--", "-H", "--json"]
    argv = remote.remote_argv("u@h", ["resume", "t", "a b"], 30,
                              {"COSCHED_SSH": "ssh -F 'my config'"})
    assert argv == ["ssh", "-F", "my config", "-T", "-o", "BatchMode=yes", "-o",
                    "ConnectTimeout=30", "--", "u@h", "coschedctl --json resume t 'a b'"]
