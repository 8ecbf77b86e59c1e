"""coschedctl -H [USER@]HOST: run the same command on another host, over SSH.

Like ``systemctl -H``, the command runs on the remote host as
``ssh [USER@]HOST coschedctl --json ARGS...``: the remote coschedctl talks to
its own daemon (its default socket, or ``--socket``, which is passed on), and
its JSON result comes back to be rendered here, escaped for this terminal like
any answer. No socket is forwarded and nothing is installed: the remote host
needs sshd and coschedctl on the PATH of a non-interactive SSH session.

Exit codes are those of local use: the remote coschedctl's 0, 1 (refused) and 2
(usage) pass through, and 3 means the daemon could not be reached, which now
also covers the host: no connection, a refused key, a host key that does not
match (ssh exits 255), or no coschedctl on the host (the shell's 126/127).

The ssh command comes from ``$COSCHED_SSH`` (default ``ssh``; split like a shell
would, e.g. ``ssh -F ~/.ssh/cosched.conf``), the remote command from
``$COSCHED_REMOTE_COSCHEDCTL`` (default ``coschedctl``). ssh runs with
``BatchMode=yes``: it never asks for a password or a host key confirmation,
which would hang a script; an unknown host key is an error (exit 3).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from . import fastjson
from .terminal import escape

__all__ = ["RemoteError", "check_host", "remote_argv", "strip_host", "run_remote"]

EXIT_UNREACHABLE = 3
SSH_ERROR = 255          # ssh's own failures: connection, authentication, host key
NOT_FOUND, NOT_EXECUTABLE = 127, 126   # the remote shell could not run coschedctl
SSH_MARGIN = 10.0        # seconds ssh gets beyond --timeout to connect and end
# USER@ and HOST (a name, IPv4 or IPv6), neither starting with "-" (an ssh option)
_HOST = re.compile(r"(?:[A-Za-z0-9._+][A-Za-z0-9._+-]*@)?[A-Za-z0-9._:%][A-Za-z0-9._:%-]*")


class RemoteError(Exception):
    """The host, or coschedctl on it, could not be reached; the message says how."""


def check_host(text: str) -> str:
    """``[USER@]HOST`` as ssh takes it; never something ssh would read as an option."""
    if not _HOST.fullmatch(text):
        raise ValueError(f"not a host name or [USER@]HOST: {text!r}")
    return text


def strip_host(argv: Sequence[str]) -> list[str]:
    """The arguments without ``-H HOST``/``--host HOST`` (and their joined forms) and
    without ``--json``: what the remote coschedctl is given, before ``--json``."""
    out: list[str] = []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg in ("-H", "--host"):
            skip = True
        elif arg.startswith("--host=") or (arg.startswith("-H") and not arg.startswith("--")):
            pass
        elif arg == "--":
            out += argv[i:]
            break
        elif arg != "--json":
            out.append(arg)
    return out


def remote_argv(host: str, args: Sequence[str], timeout: float,
                environ: Mapping[str, str] = os.environ) -> list[str]:
    """The local ssh command line that runs coschedctl ``args`` on ``host``."""
    ssh = shlex.split(environ.get("COSCHED_SSH") or "ssh")
    remote = shlex.split(environ.get("COSCHED_REMOTE_COSCHEDCTL") or "coschedctl")
    command = shlex.join([*remote, "--json", *args])  # ssh hands one string to a shell
    return [*ssh, "-T", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, int(timeout))}",
            "--", host, command]


def run_remote(host: str, args: Sequence[str], timeout: float,
               environ: Mapping[str, str] = os.environ) -> tuple[int, Any, str]:
    """(exit code, decoded JSON result or None, the remote's stderr) of coschedctl on
    ``host``. Raises RemoteError when the host or coschedctl cannot be reached."""
    argv = remote_argv(host, args, timeout, environ)
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout + SSH_MARGIN)
    except FileNotFoundError:
        raise RemoteError(f"cannot run {argv[0]!r} (set $COSCHED_SSH to the ssh command)"
                          ) from None
    except subprocess.TimeoutExpired:
        raise RemoteError(f"no answer from {host} within {timeout + SSH_MARGIN:g}s") from None
    err = proc.stderr.decode("utf-8", "replace")
    if proc.returncode == SSH_ERROR:
        raise RemoteError(f"ssh to {host} failed: {_last_line(err) or 'exit status 255'}")
    if proc.returncode in (NOT_FOUND, NOT_EXECUTABLE):
        raise RemoteError(f"cannot run coschedctl on {host} ({_last_line(err) or 'not found'}); "
                          "install cosched there, or set $COSCHED_REMOTE_COSCHEDCTL")
    if proc.returncode not in (0, 1, 2, 3):
        raise RemoteError(f"coschedctl on {host} ended with exit status {proc.returncode}: "
                          f"{_last_line(err)}")
    result = None
    if proc.returncode == 0:
        try:
            result = fastjson.loads(proc.stdout)   # orjson for a big answer, if installed
        except ValueError:
            raise RemoteError(f"unreadable answer from coschedctl on {host}: not JSON") from None
    return proc.returncode, result, err


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return escape(lines[-1].strip()) if lines else ""
