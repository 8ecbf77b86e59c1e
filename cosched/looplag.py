"""How long the event loop runs between two looks at I/O: its stalls, as clients feel them.

A *batch* is what trio runs between two I/O waits: every task step and callback
that was ready. While one runs no socket is read and no timer fires, so a long
batch is a stall that every client and every task feels, whatever caused it (a
job's long step, a collector pause, the daemon's own work). ``LoopLag`` times
each batch with two reads of the monotonic clock per pass of the loop (no system
call: the vDSO answers) and keeps the longest, a count of those of ``LONG`` or
more, and the latest ``KEPT`` of those with the time they ended, for
``coschedctl status --json`` (``daemon.loop``) and the benchmarks.
"""

from __future__ import annotations

import time
from collections import deque

import trio

__all__ = ["LoopLag", "LONG", "KEPT"]

LONG = 0.020   # a batch this long is a stall worth keeping
KEPT = 100     # long batches remembered


class LoopLag(trio.abc.Instrument):
    def __init__(self) -> None:
        self.began: float | None = None   # when the batch now running began; None: waiting
        self.longest = 0.0
        self.long = 0
        self.recent: deque[tuple[float, float]] = deque(maxlen=KEPT)   # (ended, seconds)

    def after_io_wait(self, timeout: float) -> None:
        self.began = time.monotonic()

    def before_io_wait(self, timeout: float) -> None:
        began = self.began
        if began is None:
            return
        now = time.monotonic()
        batch = now - began
        if batch > self.longest:
            self.longest = batch
        if batch >= LONG:
            self.long += 1
            self.recent.append((now, batch))

    def report(self) -> dict:
        return {"longest_batch": round(self.longest, 4), "long_batches": self.long,
                "recent_long": [[round(at, 3), round(s, 4)] for at, s in self.recent]}
