"""The ``task`` object a job's ``main(task)`` receives: what a job may know and do.

A job gets its name and id, a structlog logger bound to the task, its
configuration (the ``config`` table of ``[job.<name>]``), a ``state`` dict that
survives restarts of the task, and ``spawn`` to start further tasks that the
daemon supervises and lists like any other. Nothing else of the daemon leaks in.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import trio

__all__ = ["TaskContext", "TaskFailed"]


class TaskFailed(Exception):
    """Raised by :meth:`TaskContext.join` when the joined task failed or was killed."""


class TaskContext:
    """Handed to ``main(task)``; also the handle :meth:`spawn` returns for a child."""

    __slots__ = ("name", "id", "log", "config", "state", "_spawner", "_done", "_outcome")

    def __init__(self, name: str, id: int, log, config: dict, state: dict | None = None,
                 spawner: Callable[..., TaskContext] | None = None) -> None:
        self.name = name
        self.id = id
        self.log = log
        self.config = config
        self.state = {} if state is None else state   # kept across restarts of this task
        self._spawner = spawner
        self._done = trio.Event()   # set once the task has ended for good (no restart follows)
        self._outcome: tuple[str, Any] | None = None  # ("finished", value) | ("failed"/"killed", message)

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args, name: str | None = None) -> TaskContext:
        """Start ``fn(child_task, *args)`` as a new supervised task; returns the child's task object."""
        if self._spawner is None:
            raise RuntimeError("spawn is only available to tasks run by coschedd")
        if not callable(fn):
            raise TypeError(f"spawn: expected an async function, got {type(fn).__name__}")
        return self._spawner(self, fn, args, name)

    async def join(self) -> Any:
        """Wait until this task has ended; return its result, or raise TaskFailed."""
        await self._done.wait()
        kind, value = self._outcome
        if kind == "finished":
            return value
        raise TaskFailed(f"task {self.name} (#{self.id}) {kind}: {value}")

    def _finish(self, kind: str, value: Any) -> None:
        self._outcome = (kind, value)
        self._done.set()

    def __repr__(self) -> str:
        return f"<task {self.name} #{self.id}>"
