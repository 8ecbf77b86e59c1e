"""Where the daemon's log lines go: a writer that never blocks the event loop and never fails.

A log write can block (a pipe nobody reads, a slow terminal) or fail (ENOSPC,
EPIPE). Either would freeze or crash the daemon if done on the event loop. So
``LogSink.write`` only appends the line to a bounded queue; a thread writes the
queue to the file descriptor. When the queue is full, or a write fails, lines
are dropped and counted (``dropped``), and the count is reported in
``coschedctl status``. The thread sleeps in an untimed wait while nothing is
queued, so an idle daemon makes no system calls.

In a process forked from the daemon (a job that forks) the thread does not
exist; there the sink writes directly.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque

__all__ = ["LogSink"]

MAX_QUEUED = 4 << 20   # bytes waiting to be written before new lines are dropped


class LogSink:
    """File-like (write/flush) for structlog's PrintLogger, over a file descriptor."""

    def __init__(self, fd: int, *, isatty: bool | None = None, max_queued: int = MAX_QUEUED):
        self.fd = fd
        self._isatty = os.isatty(fd) if isatty is None else isatty
        self.max_queued = max_queued
        self.dropped = 0                       # lines lost: queue full or write failed
        self._queue: deque[bytes] = deque()    # invariant: _queued == sum(map(len, _queue))
        self._queued = 0
        self._cond = threading.Condition(threading.RLock())
        self._idle = True      # the writer waits for lines (under _cond)
        self._busy = False     # the writer holds lines it took from the queue
        self._direct = False   # forked child: no writer thread
        self._thread = threading.Thread(target=self._run, name="cosched log writer", daemon=True)
        self._thread.start()
        os.register_at_fork(after_in_child=self._forked)

    def isatty(self) -> bool:
        return self._isatty

    def fileno(self) -> int:
        return self.fd

    def write(self, text: str) -> int:
        data = text.encode("utf-8", "backslashreplace")
        if self._direct:
            self._write_now([data])
            return len(text)
        with self._cond:
            if self._queued + len(data) > self.max_queued:
                self.dropped += 1
                return len(text)
            self._queue.append(data)
            self._queued += len(data)
            if self._idle:
                self._cond.notify()
        return len(text)

    def flush(self) -> None:
        """Does not wait: the writer thread flushes. See ``drain``."""

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for queued lines to be written; whether all were."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or self._direct:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._idle = True
                    self._cond.wait()
                self._idle = False
                batch = list(self._queue)
                self._queue.clear()
                self._queued = 0
                self._busy = True
            try:
                self._write_now(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _write_now(self, batch: list[bytes]) -> None:
        view = memoryview(b"".join(batch))
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError:
            # ENOSPC, EPIPE, EIO...: count the lines not (fully) written, keep going.
            self.dropped += max(1, bytes(view).count(b"\n"))

    def _forked(self) -> None:
        self._direct = True
        self._queue.clear()
        self._queued = 0
        self._cond = threading.Condition(threading.RLock())
