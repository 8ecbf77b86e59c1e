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
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

__all__ = ["Events", "TASK_EVENTS", "JOB_EVENTS"]

log = structlog.get_logger("cosched.events")

TASK_EVENTS = ("started", "suspended", "resumed", "finished", "failed", "killed", "restarting")
JOB_EVENTS = ("job-loaded", "job-refused", "job-removed", "reload", "stopping")

Listener = Callable[[dict[str, Any]], None]


class Events:
    __slots__ = ("_listeners",)

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def __bool__(self) -> bool:
        return bool(self._listeners)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Add a listener; returns the function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def task(self, kind: str, t: Any, **fields: Any) -> None:
        """A task event: time, event, task (name), id, job, state, plus ``fields``."""
        if self._listeners:
            self._send({"time": time.time(), "event": kind, "task": t.name, "id": t.id,
                        "job": t.job.name, "state": t.state, **fields})

    def job(self, kind: str, job: str, **fields: Any) -> None:
        if self._listeners:
            self._send({"time": time.time(), "event": kind, "job": job, **fields})

    def _send(self, event: dict[str, Any]) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - a broken listener never breaks the emitter
                log.exception("event listener failed; removing it", listener=repr(listener))
                if listener in self._listeners:
                    self._listeners.remove(listener)
