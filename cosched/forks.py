"""Processes that jobs fork: kept from acting as the daemon, and reaped.

A job runs inside the daemon's process, so ``os.fork()`` in a job copies the
whole daemon: its event loop, its other tasks, the control socket. A child
that returned into that copy would serve the control socket, run duplicates of
every task, and remove the socket file when it exits. So a child forked from a
task's step becomes inert as a daemon: its signal handlers go back to the
defaults, and the moment it would return to the daemon's event loop it exits
(``StepGuard`` checks ``forked_child`` before every I/O wait and after every
step). What it does in the step that forked it (typically work and then
``os._exit``, or ``exec``) is its own business.

The parent learns each such child's pid through a pipe that the child writes
in its at-fork hook, and a trio task reaps it when it exits (via a pidfd, no
polling), logging its exit status. Forks made by worker threads (trio runs
``subprocess.Popen`` in one; an exec follows) are left alone: their owners
wait for them.
"""

from __future__ import annotations

import os
import signal
import struct
import threading
from typing import Any

import structlog
import trio

__all__ = ["ForkWatch"]

log = structlog.get_logger("cosched.forks")

_RECORD = struct.Struct("ii")   # pid, task id (0: a job file loading)
_DAEMON_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class ForkWatch:
    def __init__(self, guard: Any) -> None:
        self.guard = guard
        self._r, self._w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._forker: Any = None   # the task whose step is forking, between before and after
        self._main = threading.main_thread().ident
        os.register_at_fork(before=self._before, after_in_child=self._child)

    def _before(self) -> None:
        on_main = threading.get_ident() == self._main
        self._forker = self.guard.current if on_main else None

    def _child(self) -> None:
        forker, self._forker = self._forker, None
        if forker is None:
            return
        self.guard.forked_child = True
        for signum in _DAEMON_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)   # the wake-up socket is the parent's event loop's
        try:
            os.write(self._w, _RECORD.pack(os.getpid(), getattr(forker, "id", None) or 0))
        except OSError:
            pass
        os.close(self._r)
        os.close(self._w)

    async def reap(self) -> None:
        """Reap the children that jobs forked, as they exit; runs until cancelled."""
        async with trio.open_nursery() as nursery:
            while True:
                await trio.lowlevel.wait_readable(self._r)
                try:
                    data = os.read(self._r, _RECORD.size * 512)
                except BlockingIOError:
                    continue
                for off in range(0, len(data) - _RECORD.size + 1, _RECORD.size):
                    pid, task_id = _RECORD.unpack_from(data, off)
                    nursery.start_soon(self._reap_one, pid, task_id)

    async def _reap_one(self, pid: int, task_id: int) -> None:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            fd = None   # already gone (reaped by the job itself) or no pidfds
        if fd is not None:
            try:
                await trio.lowlevel.wait_readable(fd)
            finally:
                os.close(fd)
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return   # the job waited for it itself
        if got:
            log.info("process forked by a task exited", pid=pid, task_id=task_id or None,
                     exit_status=os.waitstatus_to_exitcode(status))
