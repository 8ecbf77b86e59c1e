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
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

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
    __slots__ = ("_of_tasks", "_of_jobs", "_watchers")

    def __init__(self) -> None:
        # Tuples, replaced on each change: emitting (every start) iterates one as it is,
        # and a listener that unsubscribes while called does not disturb the loop. Task
        # and job events have their own: a listener of job events alone (timed jobs)
        # is not called at each of a million starts.
        self._of_tasks: tuple[Listener, ...] = ()
        self._of_jobs: tuple[Listener, ...] = ()
        self._watchers: tuple[TaskWatcher, ...] = ()   # hear task events undressed

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

    def watch_tasks(self, watcher: TaskWatcher) -> Callable[[], None]:
        """Add a listener of task events that takes ``(time, kind, task, fields)`` (the
        task object as it is when the event is made: read what is needed at once);
        returns the function that removes it."""
        self._watchers += (watcher,)
        return lambda: self._remove(watcher)

    def listen(self, on_job: Listener, on_task: TaskWatcher) -> Callable[[], None]:
        """``subscribe(on_job, tasks=False)`` and ``watch_tasks(on_task)``, as the daemon's
        own listeners do; the function returned removes both."""
        stops = (self.subscribe(on_job, tasks=False), self.watch_tasks(on_task))
        return lambda: [stop() for stop in stops]

    def _remove(self, listener: Callable[..., None]) -> None:
        self._of_tasks = tuple(x for x in self._of_tasks if x is not listener)
        self._of_jobs = tuple(x for x in self._of_jobs if x is not listener)
        self._watchers = tuple(x for x in self._watchers if x is not listener)

    def task(self, kind: str, t: Any, **fields: Any) -> None:
        """A task event: time, event, task (name), id, job, state, plus ``fields``."""
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
