"""The stall desk: the control socket's front desk while a step stalls the event loop.

While a job's step runs away the event loop cannot accept connections, so an
operator's ``coschedctl kill`` would wait for the very step it means to end.
The step guard's watchdog thread therefore looks after the listening sockets
(the shared one and root's private one) during a stall (and only then: it is not in the loop's way otherwise). For
each connection it reads the first request line and:

- answers ``ping`` itself (the daemon is alive; only its loop is busy);
- for a ``kill`` of the task whose step is stalling, from a peer allowed to
  control, has the guard interrupt that step (``TaskInterrupted``);
- then hands the connection, with whatever it read, to the control server,
  which answers the rest once the loop runs again (the kill's answer reports
  the task killed).

The desk never touches the registry beyond comparing the stalled task's id
and name, and never answers anything else: every other request waits for the
loop, where the data it reads is consistent.
"""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Callable
from typing import Any

import structlog

from . import protocol

__all__ = ["StallDesk"]

log = structlog.get_logger("cosched.stalldesk")

READ_TIMEOUT = 1.0   # a peer gets this long to send its first line while the loop stalls


class StallDesk:
    def __init__(self, listener_fds: list[int], *, may_control: Callable[[socket.socket], bool],
                 hand_over: Callable[[socket.socket, bytes], None], pid: int,
                 max_line: int) -> None:
        self._listeners = [socket.socket(fileno=os.dup(fd)) for fd in listener_fds]
        self._may_control = may_control
        self._hand_over = hand_over   # thread-safe: schedules the adoption on the loop
        self._pid = pid
        self._max_line = max_line

    def close(self) -> None:
        for listener in self._listeners:
            listener.close()

    def serve_once(self, timeout: float, stalled: Any, interrupt: Callable[[Any], None]) -> None:
        """Wait up to ``timeout`` for a connection and deal with it (watchdog thread)."""
        ready, _, _ = select.select(self._listeners, [], [], timeout)
        if not ready:
            return
        try:
            conn, _ = ready[0].accept()
        except OSError:  # EAGAIN: someone else took it; or out of descriptors
            return
        try:
            data = self._first_line(conn)
            data = self._answer(conn, data, stalled, interrupt)
        except OSError:
            conn.close()
            return
        self._hand_over(conn, data)

    def _first_line(self, conn: socket.socket) -> bytes:
        conn.settimeout(READ_TIMEOUT)
        data = b""
        while b"\n" not in data and len(data) <= self._max_line:
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
        return data

    def _answer(self, conn: socket.socket, data: bytes, stalled: Any,
                interrupt: Callable[[Any], None]) -> bytes:
        """Act on the first line if it is ours to act on; returns what is left for the server."""
        line, newline, rest = data.partition(b"\n")
        if not newline:
            return data
        try:
            request = protocol.decode_request(line)
        except protocol.ControlError:
            return data   # the server gives the proper error answer
        if request.cmd == "ping":
            conn.settimeout(READ_TIMEOUT)
            conn.sendall(protocol.encode(protocol.ok(request.id, {"pong": True, "pid": self._pid})))
            return rest
        if request.cmd == "kill" and _names(request.args["task"], stalled) \
                and self._may_control(conn):
            log.info("kill of a task whose step stalls the event loop", task=stalled.name,
                     id=stalled.id)
            interrupt(stalled)
        return data


def _names(ref: Any, t: Any) -> bool:
    """Whether a kill's task reference names the task t."""
    if getattr(t, "id", None) is None:
        return False
    if isinstance(ref, int) and not isinstance(ref, bool):
        return ref == t.id
    return isinstance(ref, str) and (ref == t.name or ref == str(t.id))

