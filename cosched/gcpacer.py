"""Garbage-collector pacing: big task populations without long collector pauses.

A parked task is a few dozen objects that the cyclic garbage collector tracks.
A full collection visits every one of them, so with 100,000 tasks a single one
stops the event loop for a second or more, and CPython starts one each time
the long-lived population has grown by a quarter: during a burst of spawns,
again and again.

Design: every ``BURST`` task starts, the young generations are collected and
``gc.freeze()`` moves everything alive into the permanent generation, which
collections skip; so a full collection visits at most the objects of the last
burst. Frozen objects stay refcounted: a task leaves no reference cycles when
it ends (the supervisor breaks them), so an ended frozen task is freed at
once. What freezing can keep is other cyclic garbage that was alive at a
freeze (a job's own cyclic structure, dropped later); so once the population
has turned over twice since the last freeze, ``gc.unfreeze()`` hands
everything back to the collector. While the daemon stops, the collector is
off: ending every task frees them by reference counting, and a full
collection then would only delay the exit.

``BURST`` is small, since a full collection visits what was started since the
last freeze: 1,000 tasks are a few tens of milliseconds of collector work,
and a freeze (collecting the young generations first) costs a few.

The collector's pauses are measured (``gc.callbacks``) and reported in
``coschedctl status --json`` as ``daemon.gc``.
"""

from __future__ import annotations

import gc
import time

__all__ = ["GcPacer", "BURST", "RENDER_BURST"]

BURST = 1_000   # task starts after which the population is frozen
RENDER_BURST = 10_000   # status rows after which the population is frozen (no collection)


class GcPacer:
    def __init__(self, count_alive) -> None:
        self.count_alive = count_alive
        self.started = 0          # task starts since the last freeze
        self.rendered = 0         # status rows rendered since the last freeze for them
        self.frozen_tasks = 0     # tasks alive when the population was last frozen
        self.ended = 0            # tasks ended since then
        self.stopping = False     # the daemon stops: keep everything frozen, collect nothing
        self._was_enabled = True  # whether the collector ran before stop() turned it off
        self.collections = [0, 0, 0]
        self.longest = [0.0, 0.0, 0.0]   # longest pause per generation, seconds
        self.freezes = 0
        self._began = 0.0
        gc.callbacks.append(self._measure)

    def close(self) -> None:
        if self._measure in gc.callbacks:
            gc.callbacks.remove(self._measure)
        if self.stopping and self._was_enabled:
            gc.enable()

    def stop(self) -> None:
        """The daemon stops: what ends now is freed by reference counting alone."""
        if not self.stopping:
            self.stopping = True
            self._was_enabled = gc.isenabled()
            gc.disable()

    def task_started(self) -> None:
        self.started += 1
        if self.started >= BURST:
            self.freeze()

    def task_ended(self) -> None:
        self.ended += 1
        if self.frozen_tasks and self.ended >= 2 * self.frozen_tasks and not self.stopping:
            gc.unfreeze()
            self.frozen_tasks = self.ended = 0

    def rendering(self, rows: int) -> None:
        """A long status rendered ``rows`` rows: the first time a task is shown it keeps
        what was found for it (where it waits, a frame object), a million at the first
        status of a million tasks; they are frozen like a burst of starts."""
        self.rendered += rows
        if self.rendered >= RENDER_BURST:
            self.rendered = 0
            self._freeze(collect=False)   # the young garbage here is rows: refcounting frees it

    def freeze(self) -> None:
        self.started = 0
        self._freeze()
        self.frozen_tasks, self.ended = self.count_alive(), 0

    def _freeze(self, collect: bool = True) -> None:
        if collect:   # young garbage goes now, not into the permanent generation
            gc.collect(1)
        gc.freeze()
        self.freezes += 1

    def report(self) -> dict:
        # Tasks, not gc.get_freeze_count(), which walks every frozen object (0.1 s at 100k tasks).
        return {"collections": list(self.collections),
                "longest_pause": [round(x, 4) for x in self.longest],
                "frozen_tasks": self.frozen_tasks, "freezes": self.freezes}

    def _measure(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        gen = info.get("generation", 2)
        pause = time.perf_counter() - self._began
        self.collections[gen] += 1
        if pause > self.longest[gen]:
            self.longest[gen] = pause
