"""Lifecycle events: one place where every state change of tasks and jobs is announced.

The supervisor calls ``Events.emit`` at each transition (a task started,
suspended with values, resumed, finished, failed, killed, restarting; a job
loaded, refused or removed; a reload; the daemon stopping). Listeners (the
event stream of ``coschedctl events``, the state store, hooks) subscribe with
``subscribe``.

Design: emitting costs one truth test while nobody listens, so tasks pay
nothing for features nobody uses. A listener is a plain function called on
the event loop; it must not block (queue the event and return) and must not
raise (a failing listener is logged and dropped, never the emitter's problem).

The daemon's own listeners of task events (the event ring, the state store)
hear them as they are made, ``(time, kind, task, fields)`` (``watch_tasks``):
at every start of a million children, a dict made and read key by key by each
was a fifth of the cost of a spawn. The event's dict (``task_event``) is made
once, and only when a listener of dicts listens.

First starts (``started``: a task's first life began) reach the watchers in
batches, each watcher called once with the tasks and their times (a chain of
calls a start was 12% of a spawn): held back until another event is made, a
watcher's keeper is read (``flush``), or the loop's next turn (a callback of
``run_sync_soon``, asked for by the first start held back: it runs as a task
step, so a follower it wakes is run, where a trio instrument's
``before_io_wait`` ran after the loop had chosen to sleep). Nothing is heard
out of order: every other event flushes them first. Listeners of dicts hear
each as it happens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog
import trio

__all__ = ["Events", "TASK_EVENTS", "JOB_EVENTS", "task_event"]

log = structlog.get_logger("cosched.events")

TASK_EVENTS = ("started", "suspended", "resumed", "finished", "failed", "killed", "restarting")
JOB_EVENTS = ("job-loaded", "job-refused", "job-removed", "reload", "stopping")

Listener = Callable[[dict[str, Any]], None]
TaskWatcher = Callable[[float, str, Any, dict[str, Any]], None]   # (time, kind, task, fields)


def task_event(when: float, kind: str, t: Any, fields: dict[str, Any]) -> dict[str, Any]:
    """A task event as a dict: time, event, task (name), id, job, state, plus ``fields``."""
    return {"time": when, "event": kind, "task": t.name, "id": t.id, "job": t.job.name,
            "state": t.state, **fields}


class Events:
    __slots__ = ("_of_tasks", "_of_jobs", "_watchers", "_batched", "_firsts", "_first_times")

    def __init__(self) -> None:
        # Tuples, replaced on each change: emitting (every start) iterates one as it is,
        # and a listener that unsubscribes while called does not disturb the loop. Task
        # and job events have their own: a listener of job events alone (timed jobs)
        # is not called at each of a million starts.
        self._of_tasks: tuple[Listener, ...] = ()
        self._of_jobs: tuple[Listener, ...] = ()
        self._watchers: tuple[TaskWatcher, ...] = ()   # hear task events undressed
        self._batched: dict[TaskWatcher, Callable[[list[float], list[Any]], None]] = {}
        self._firsts: list[Any] = []          # first starts not heard yet, in order ...
        self._first_times: list[float] = []   # ... and their times (invariant: as long)

    def __bool__(self) -> bool:
        return bool(self._of_tasks or self._of_jobs or self._watchers)

    def subscribe(self, listener: Listener, *, tasks: bool = True,
                  jobs: bool = True) -> Callable[[], None]:
        """Add a listener of task events, job events or both; returns the function that
        removes it."""
        if tasks:
            self._of_tasks += (listener,)
        if jobs:
            self._of_jobs += (listener,)
        return lambda: self._remove(listener)

    def watch_tasks(self, watcher: TaskWatcher,
                    started: Callable[[list[float], list[Any]], None] | None = None
                    ) -> Callable[[], None]:
        """Add a listener of task events that takes ``(time, kind, task, fields)`` (the
        task object as it is when the event is made: read what is needed at once), and
        first starts in batches as ``started(times, tasks)`` (without it: one call each;
        either way the task is as it is at the flush, its state then was "running");
        returns the function that removes it."""
        self._watchers += (watcher,)
        if started is not None:
            self._batched[watcher] = started
        return lambda: self._remove(watcher)

    def listen(self, on_job: Listener, on_task: TaskWatcher,
               on_started: Callable[[list[float], list[Any]], None] | None = None
               ) -> Callable[[], None]:
        """``subscribe(on_job, tasks=False)`` and ``watch_tasks(on_task, on_started)``, as
        the daemon's own listeners do; the function returned removes both."""
        stops = (self.subscribe(on_job, tasks=False), self.watch_tasks(on_task, on_started))
        return lambda: [stop() for stop in stops]

    def _remove(self, listener: Callable[..., None]) -> None:
        self._of_tasks = tuple(x for x in self._of_tasks if x is not listener)
        self._of_jobs = tuple(x for x in self._of_jobs if x is not listener)
        self._watchers = tuple(x for x in self._watchers if x is not listener)
        self._batched.pop(listener, None)

    def started(self, t: Any) -> None:
        """``task("started", t, restarts=0)``: t's first life began. Watchers hear it in
        a batch (see the module docstring); listeners of dicts at once."""
        if self._of_tasks:
            self.task("started", t, restarts=0)
        elif self._watchers:
            if not self._firsts:
                self._flush_soon()
            self._firsts.append(t)
            self._first_times.append(time.time())

    def _flush_soon(self) -> None:
        try:
            trio.lowlevel.current_trio_token().run_sync_soon(self._flush_at_turn)
        except RuntimeError:   # not in trio (a test of this class): the next event flushes
            pass

    def _flush_at_turn(self) -> None:
        try:   # (run_sync_soon's callbacks must not raise: it would end the trio run)
            self.flush()
        except Exception:  # noqa: BLE001 - flush catches its watchers'; this is a bug of ours
            log.exception("hearing first starts failed")

    def flush(self) -> None:
        """Watchers hear the first starts held back, in order."""
        tasks = self._firsts
        if not tasks:
            return
        times = self._first_times
        self._firsts, self._first_times = [], []
        for watcher in self._watchers:
            try:
                many = self._batched.get(watcher)
                if many is not None:
                    many(times, tasks)
                    continue
                for when, t in zip(times, tasks, strict=True):
                    watcher(when, "started", t, {"restarts": 0})
            except Exception:  # noqa: BLE001 - as _send
                log.exception("event listener failed; removing it", listener=repr(watcher))
                self._remove(watcher)

    def task(self, kind: str, t: Any, **fields: Any) -> None:
        """A task event: time, event, task (name), id, job, state, plus ``fields``."""
        if self._firsts:   # first starts held back come before it
            self.flush()
        watchers, of_tasks = self._watchers, self._of_tasks
        if not (watchers or of_tasks):
            return
        now = time.time()
        for watcher in watchers:
            try:
                watcher(now, kind, t, fields)
            except Exception:  # noqa: BLE001 - as _send
                log.exception("event listener failed; removing it", listener=repr(watcher))
                self._remove(watcher)
        if of_tasks:
            self._send(of_tasks, task_event(now, kind, t, fields))

    def job(self, kind: str, job: str, **fields: Any) -> None:
        if self._firsts:
            self.flush()
        if self._of_jobs:
            self._send(self._of_jobs, {"time": time.time(), "event": kind, "job": job,
                                       **fields})

    def _send(self, listeners: tuple[Listener, ...], event: dict[str, Any]) -> None:
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - a broken listener never breaks the emitter
                log.exception("event listener failed; removing it", listener=repr(listener))
                self._remove(listener)
