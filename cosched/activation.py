"""systemd socket activation: the control socket handed over by the service manager.

With ``systemd/coschedd.socket`` enabled, systemd creates and listens on the
control socket itself (owner, ``SocketGroup=``, ``SocketMode=``) and passes it
to coschedd at start as file descriptor 3, the protocol of sd_listen_fds(3):

``LISTEN_PID``
    The pid the descriptors are meant for. Anything else than ours means they
    were meant for another process (an environment inherited by accident):
    they are ignored.
``LISTEN_FDS``
    How many descriptors, from 3 on. coschedd takes exactly one.
``LISTEN_FDNAMES``
    Optional ``:``-separated names (``FileDescriptorName=``); only logged.

The variables are removed from the environment once read, so the processes
that jobs start do not see them, and the descriptor is made close-on-exec.
Because systemd keeps the listening socket while the daemon restarts, clients
that connect meanwhile wait in its queue and are answered by the next daemon;
the daemon therefore never removes, replaces or re-permissions a passed socket.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

__all__ = ["ActivationError", "control_socket", "LISTEN_FDS_START"]

LISTEN_FDS_START = 3
_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class ActivationError(Exception):
    """The service manager passed something coschedd cannot serve on; says what."""


def control_socket(environ: MutableMapping[str, str] = os.environ
                   ) -> tuple[socket.socket, str] | None:
    """The passed listening socket and its name, or None when none was passed to us."""
    pid, count = environ.get("LISTEN_PID"), environ.get("LISTEN_FDS")
    name = (environ.get("LISTEN_FDNAMES") or "").split(":")[0]
    for key in _VARIABLES:
        environ.pop(key, None)
    if pid is None or count is None:
        return None
    if not (pid.isascii() and pid.isdigit()) or int(pid) != os.getpid():
        return None  # meant for another process
    if count != "1":
        raise ActivationError(f"LISTEN_FDS={count!r}: coschedd takes exactly one socket, the "
                              "control socket (one ListenStream= in its .socket unit)")
    fd = LISTEN_FDS_START
    try:
        sock = socket.socket(fileno=fd)
    except OSError as e:
        raise ActivationError(f"descriptor {fd} passed by the service manager is not a "
                              f"socket: {e.strerror}") from None
    problem = _problem(sock)
    if problem:
        sock.detach()  # not ours to close: leave the descriptor as it was
        raise ActivationError(f"descriptor {fd} passed by the service manager {problem}; "
                              "expected a listening unix stream socket (ListenStream=/path)")
    os.set_inheritable(fd, False)
    return sock, name or "control"


def _problem(sock: socket.socket) -> str | None:
    if sock.family != socket.AF_UNIX:
        return f"is not a unix socket (family {sock.family.name})"
    if sock.type != socket.SOCK_STREAM:
        return f"is not a stream socket ({sock.type.name})"
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        return "is not listening"
    return None


def socket_path(sock: socket.socket) -> str:
    """The file the passed socket is bound to ("" for an abstract or unbound one)."""
    name = sock.getsockname()
    return name if isinstance(name, str) and name.startswith("/") else ""
