"""Tests for cosched.systemd: the test plays systemd's side of sd_notify.

Each test binds a real AF_UNIX datagram socket, points a Notifier at it
through an explicit environ mapping, and reads back the exact datagrams.
"""

import configparser
import logging
import os
import socket
import time
import uuid
from pathlib import Path

import pytest
import trio

from cosched import systemd
from cosched.systemd import Notifier

UNIT_FILE = Path(__file__).resolve().parent.parent / "systemd" / "coschedd.service"
SYSUSERS_FILE = UNIT_FILE.with_name("cosched.sysusers")


@pytest.fixture
def listener(tmp_path):
    """A bound notify socket and the NOTIFY_SOCKET value that names it."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    yield sock, str(path)
    sock.close()


def assert_nothing_queued(sock):
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)


def drain(sock):
    """Return every datagram already queued on sock."""
    sock.setblocking(False)
    datagrams = []
    while True:
        try:
            datagrams.append(sock.recv(4096))
        except BlockingIOError:
            return datagrams


def test_ready_with_status_is_one_datagram(listener):
    sock, address = listener
    with Notifier(environ={"NOTIFY_SOCKET": address}) as notifier:
        assert notifier.enabled
        assert notifier.ready("3 tasks") is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=3 tasks"
    assert_nothing_queued(sock)


def test_ready_without_status_sends_only_ready(listener):
    sock, address = listener
    with Notifier(environ={"NOTIFY_SOCKET": address}) as notifier:
        assert notifier.ready() is True
    assert sock.recv(4096) == b"READY=1"


def test_status_sends_status_line(listener):
    sock, address = listener
    with Notifier(environ={"NOTIFY_SOCKET": address}) as notifier:
        assert notifier.status("running 2 of 5 jobs") is True
    assert sock.recv(4096) == b"STATUS=running 2 of 5 jobs"


def test_stopping_sends_stopping(listener):
    sock, address = listener
    with Notifier(environ={"NOTIFY_SOCKET": address}) as notifier:
        assert notifier.stopping() is True
    assert sock.recv(4096) == b"STOPPING=1"


def test_reloading_carries_monotonic_usec(listener):
    sock, address = listener
    with Notifier(environ={"NOTIFY_SOCKET": address}) as notifier:
        before = time.monotonic_ns() // 1000
        assert notifier.reloading() is True
        after = time.monotonic_ns() // 1000
    lines = sock.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1"
    assert len(lines) == 2 and lines[1].startswith("MONOTONIC_USEC=")
    usec = int(lines[1].removeprefix("MONOTONIC_USEC="))
    assert before <= usec <= after


def test_notify_sends_fields_in_order_in_one_datagram(listener):
    sock, address = listener
    with Notifier(environ={"NOTIFY_SOCKET": address}) as notifier:
        assert notifier.notify(READY=1, STATUS="up", MAINPID=1234) is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=up\nMAINPID=1234"
    assert_nothing_queued(sock)


def test_notify_without_fields_sends_nothing(listener):
    sock, address = listener
    with Notifier(environ={"NOTIFY_SOCKET": address}) as notifier:
        assert notifier.notify() is False
    assert_nothing_queued(sock)


def test_newline_in_value_cannot_inject_a_field(listener):
    sock, address = listener
    with Notifier(environ={"NOTIFY_SOCKET": address}) as notifier:
        assert notifier.status("job failed\nREADY=1") is True
    assert sock.recv(4096) == b"STATUS=job failed READY=1"


def test_abstract_namespace_socket():
    name = f"cosched-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        with Notifier(environ={"NOTIFY_SOCKET": "@" + name}) as notifier:
            assert notifier.ready("abstract") is True
        assert sock.recv(4096) == b"READY=1\nSTATUS=abstract"


def test_socket_is_opened_once_and_reused(listener, monkeypatch):
    sock, address = listener
    opened = []
    real_socket = socket.socket

    def counting_socket(*args, **kwargs):
        opened.append(args)
        return real_socket(*args, **kwargs)

    monkeypatch.setattr(systemd.socket, "socket", counting_socket)
    with Notifier(environ={"NOTIFY_SOCKET": address}) as notifier:
        for i in range(5):
            assert notifier.status(f"tick {i}") is True
    assert len(opened) == 1
    assert drain(sock) == [f"STATUS=tick {i}".encode() for i in range(5)]


@pytest.mark.timeout(10)
def test_full_receive_queue_fails_instead_of_blocking(listener):
    # Nobody reads the listener. A blocking socket would hang here once the
    # kernel queue is full. A non-blocking one makes notify return False.
    sock, address = listener
    with Notifier(environ={"NOTIFY_SOCKET": address}) as notifier:
        results = [notifier.status("x" * 1024) for _ in range(10_000)]
    assert results[0] is True
    assert False in results


def test_default_environ_is_os_environ(listener, monkeypatch):
    sock, address = listener
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    with Notifier() as notifier:
        assert notifier.stopping() is True
    assert sock.recv(4096) == b"STOPPING=1"


def test_unset_notify_socket_is_inert(listener, monkeypatch):
    sock, address = listener
    # The process environment points at the listener. The explicit mapping
    # has no NOTIFY_SOCKET, so it must win and nothing may be sent.
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    notifier = Notifier(environ={"WATCHDOG_USEC": "200000"})
    assert notifier.enabled is False
    assert notifier.notify(READY=1) is False
    assert notifier.ready("x") is False
    assert notifier.reloading() is False
    assert notifier.stopping() is False
    assert notifier.status("x") is False
    assert notifier.watchdog_interval() is None

    async def main():
        with trio.fail_after(1):
            await notifier.watchdog_loop()

    trio.run(main)
    assert_nothing_queued(sock)


def test_unsupported_notify_socket_is_inert():
    notifier = Notifier(environ={"NOTIFY_SOCKET": "relative/notify"})
    assert notifier.enabled is False
    assert notifier.ready() is False


def test_missing_socket_returns_false_and_logs(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="cosched.systemd")
    address = str(tmp_path / "nobody-listens-here")
    with Notifier(environ={"NOTIFY_SOCKET": address}) as notifier:
        assert notifier.enabled is True
        assert notifier.ready("x") is False
        assert notifier.reloading() is False
        assert notifier.stopping() is False
        assert notifier.status("x") is False
        assert notifier.notify(WATCHDOG=1) is False
    failures = [r for r in caplog.records if r.name == "cosched.systemd"]
    assert failures and all(r.levelno == logging.DEBUG for r in failures)


def test_closed_notifier_is_inert(listener):
    sock, address = listener
    notifier = Notifier(environ={"NOTIFY_SOCKET": address})
    assert notifier.status("open") is True
    notifier.close()
    assert notifier.enabled is False
    assert notifier.status("closed") is False
    assert drain(sock) == [b"STATUS=open"]


def test_watchdog_interval_is_half_of_watchdog_usec(listener):
    _, address = listener
    environ = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"}
    with Notifier(environ=environ) as notifier:
        assert notifier.watchdog_interval() == pytest.approx(0.1)


def test_watchdog_pid_of_this_process_keeps_watchdog(listener):
    _, address = listener
    environ = {
        "NOTIFY_SOCKET": address,
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": str(os.getpid()),
    }
    with Notifier(environ=environ) as notifier:
        assert notifier.watchdog_interval() == pytest.approx(15.0)


def test_watchdog_pid_of_other_process_disables_watchdog(listener):
    sock, address = listener
    environ = {
        "NOTIFY_SOCKET": address,
        "WATCHDOG_USEC": "200000",
        "WATCHDOG_PID": str(os.getppid()),
    }
    with Notifier(environ=environ) as notifier:
        assert notifier.watchdog_interval() is None

        async def main():
            with trio.fail_after(1):
                await notifier.watchdog_loop()

        trio.run(main)
    assert_nothing_queued(sock)


@pytest.mark.parametrize("value", [None, "", "0", "-5", "soon"])
def test_watchdog_usec_missing_or_invalid_means_no_watchdog(listener, value):
    _, address = listener
    environ = {"NOTIFY_SOCKET": address}
    if value is not None:
        environ["WATCHDOG_USEC"] = value
    with Notifier(environ=environ) as notifier:
        assert notifier.watchdog_interval() is None


def test_watchdog_loop_pings_on_a_timer(listener):
    sock, address = listener
    environ = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"}
    with Notifier(environ=environ) as notifier:

        async def main():
            with trio.move_on_after(0.35):
                await notifier.watchdog_loop()

        trio.run(main)
    pings = drain(sock)
    # An interval of 0.1 s over 0.35 s gives about 4 pings. The bounds are
    # wide so a loaded machine does not fail the test, but a busy loop would
    # send far more, and a loop that never repeats far fewer.
    assert set(pings) <= {b"WATCHDOG=1"}
    assert 2 <= len(pings) <= 5


def read_unit():
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read(UNIT_FILE, encoding="utf-8")
    return parser


def test_unit_file_declares_notify_watchdog_and_reload():
    service = read_unit()["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["WatchdogSec"] == "30"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["ExecStart"].startswith("/usr/bin/env coschedd ")
    assert "--config /etc/cosched/coschedd.toml" in service["ExecStart"]
    assert service["KillSignal"] == "SIGTERM"
    assert service["TimeoutStopSec"] == "20"
    assert service["Restart"] == "on-failure"
    assert service["User"] == service["Group"] == "cosched"
    assert service["RuntimeDirectory"] == "cosched"
    assert service["RuntimeDirectoryMode"] == "0750"
    assert service["StateDirectory"] == "cosched"


def test_unit_file_hardening():
    service = read_unit()["Service"]
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "read-only",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "RestrictSUIDSGID": "yes",
        "RestrictRealtime": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "SystemCallFilter": "@system-service",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "UMask": "0027",
        # Empty means "no capabilities at all", not "unset".
        "CapabilityBoundingSet": "",
    }
    assert {key: service.get(key) for key in expected} == expected


def test_sysusers_creates_the_unit_user():
    entries = [
        line.split()
        for line in SYSUSERS_FILE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert [entry[:2] for entry in entries] == [["u", "cosched"]]
