"""The ``task`` object a job's ``main(task)`` receives: what a job may know and do.

A job gets its name and id, a structlog logger bound to the task, its
configuration (the ``config`` table of ``[job.<name>]``), a ``state`` dict that
the daemon keeps in its state database (``checkpoint`` commits it; ``restored``
tells that it came from an earlier task of the job; see ``cosched.recorder``
for when it is saved), ``spawn`` to start further tasks that the
daemon supervises and lists like any other, ``run_process``, which runs a
command and, if the task is killed meanwhile, ends every process the command
started, not only the first, and the homes of work that would block the event
loop: ``run_sync`` (a blocking call, in a worker thread) and
``run_in_process`` (CPU-bound work, in a worker process). ``trigger`` tells a
task started by a hook why it runs (see ``cosched.hooks``); it is None otherwise.
Nothing else of the daemon leaks in.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import Any

import cloudpickle
import psutil
import trio
import trio_parallel

from . import _worker
from .ondemand import field
from .statejson import StateError, encode_state

__all__ = ["TaskContext", "TaskFailed", "StateError", "Shared", "end_processes"]


class TaskFailed(Exception):
    """Raised by :meth:`TaskContext.join` when the joined task failed or was killed."""


class Shared:
    """What the daemon hands every task alike; one object serves all of them."""

    __slots__ = ("spawner", "threads", "checkpointer")

    def __init__(self, spawner: Callable[..., TaskContext] | None = None,
                 threads: trio.CapacityLimiter | None = None,
                 checkpointer: Callable[[TaskContext], Awaitable[None]] | None = None) -> None:
        self.spawner = spawner     # starts a child: (parent, fn, args, name) -> its TaskContext
        self.threads = threads     # the daemon's worker-thread limiter
        self.checkpointer = checkpointer   # commits a task's state; None: no database


class _More:
    """What few tasks have (see cosched.ondemand)."""

    __slots__ = ("trigger", "restored", "key", "done", "outcome")

    def __init__(self) -> None:
        self.trigger = self.key = self.done = self.outcome = None
        self.restored = False


def _more(name: str, default: Any, doc: str) -> property:
    return field("_more", _More, name, default, doc)


class TaskContext:
    """Handed to ``main(task)``; also the handle :meth:`spawn` returns for a child."""

    __slots__ = ("_name", "id", "_log", "config", "_state", "_shared", "_more")

    id: int                   # the task's id, unique for the daemon's lifetime
    config: dict[str, Any]    # the [job.<name>] config table (a fresh copy per start of a
                              # top-level task; spawned children share their parent's)

    trigger = _more("trigger", None, "What started it, for a task a hook started "
                    "(cosched.hooks); None otherwise.")
    restored = _more("restored", False, "Its state came from an earlier task of the job "
                     "(saved on disk).")
    _key = _more("key", None, "the state's key in the database; None: not kept there")
    _done = _more("done", None, "made by join(); set once the task has ended")
    _outcome = _more("outcome", None, '("finished", value) | ("failed"/"killed", message)')

    def __init__(self, name: str | TaskContext, id: int, log: Any, config: dict[str, Any],
                 state: dict[str, Any] | None = None,
                 spawner: Callable[..., TaskContext] | None = None,
                 threads: trio.CapacityLimiter | None = None,
                 trigger: dict[str, Any] | None = None, *, restored: bool = False,
                 key: str | None = None,
                 checkpointer: Callable[[TaskContext], Awaitable[None]] | None = None,
                 shared: Shared | None = None) -> None:
        self._name = name   # the name, or the parent's TaskContext when the name is the one
        self.id = id        # the id implies, <parent's name>.<id> (derived: see name)
        self._log = log   # a logger, or a function (name, id) -> logger called on first use
        self.config = config
        self._state = state   # kept across restarts of this task; None: empty, made on first use
        self._shared = shared if shared is not None else Shared(spawner, threads, checkpointer)
        self._more: _More | None = None
        if trigger is not None or restored or key is not None:
            self.trigger, self.restored, self._key = trigger, restored, key

    @classmethod
    def child_of(cls, parent: TaskContext, id: int, log: Any, config: dict[str, Any],
                 shared: Shared) -> TaskContext:
        """``cls(parent, id, log, config, shared=shared)``: a child spawned without a name,
        trigger or saved state, made without parsing keywords (a burst makes a million)."""
        ctx = cls.__new__(cls)
        ctx._name, ctx.id, ctx._log, ctx.config = parent, id, log, config
        ctx._state = ctx._more = None
        ctx._shared = shared
        return ctx

    @property
    def name(self) -> str:
        """The task's name, unique among alive tasks."""
        name = self._name
        return name if isinstance(name, str) else f"{name.name}.{self.id}"

    @property
    def state(self) -> dict[str, Any]:
        """The task's state: kept across restarts, saved in the state database."""
        state = self._state
        if state is None:
            state = self._state = {}
        return state

    @state.setter
    def state(self, value: dict[str, Any]) -> None:
        self._state = value

    @property
    def log(self) -> Any:
        """A structlog logger bound to this task's name and id."""
        log = self._log
        if not hasattr(log, "info"):
            log = self._log = log(self.name, self.id)
        return log

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any,
              name: str | None = None) -> TaskContext:
        """Start ``fn(child_task, *args)`` as a new supervised task; returns the child's task object."""
        spawner = self._shared.spawner
        if spawner is None:
            raise RuntimeError("spawn is only available to tasks run by coschedd")
        if not callable(fn):
            raise TypeError(f"spawn: expected an async function, got {type(fn).__name__}")
        return spawner(self, fn, args, name)

    async def checkpoint(self) -> None:
        """Save ``task.state`` now: returns once it is committed to the state database and
        fsync'd, so it survives a crash of the daemon or the machine from then on.

        Raises ``StateError`` naming the key when the state holds anything but JSON
        values (dict with string keys, list, str, int, float, bool, None), or when the
        database cannot write it; the state saved before stays. Outside coschedd (no
        database) the state is only checked."""
        checkpointer = self._shared.checkpointer
        if checkpointer is None:
            encode_state(self.state)
            await trio.lowlevel.checkpoint()
            return
        await checkpointer(self)

    async def join(self) -> Any:
        """Wait until this task has ended; return its result, or raise TaskFailed."""
        if self._outcome is None:
            if self._done is None:
                self._done = trio.Event()
            await self._done.wait()
        assert self._outcome is not None   # set by _finish before the event
        kind, value = self._outcome
        if kind == "finished":
            return value
        raise TaskFailed(f"task {self.name} (#{self.id}) {kind}: {value}")

    async def run_process(self, command: str | Sequence[str], *, grace: float = 5.0,
                          **options: Any) -> subprocess.CompletedProcess[bytes]:
        """``trio.run_process(command, **options)``, ending the whole process tree on cancel.

        If the call is cancelled (the task is killed, the daemon stops), the process
        and every process it started get SIGTERM, and whatever is left after
        ``grace`` seconds gets SIGKILL. trio alone would signal the first process only.
        """
        tree: list[psutil.Process] = []

        async def deliver_cancel(proc: trio.Process) -> None:
            tree.extend(_tree(proc.pid))  # taken while the first process still holds them
            _signal_all(tree, signal.SIGTERM)
            await trio.sleep(grace)       # cancelled by trio once the first process exits
            _signal_all(tree[:1], signal.SIGKILL)

        try:
            return await trio.run_process(command, deliver_cancel=deliver_cancel, **options)
        finally:
            if tree:  # the first process is gone; its descendants may not be
                with trio.CancelScope(shield=True):
                    await end_processes(tree[1:], grace)

    async def run_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a worker thread, for a call that blocks (file I/O, a
        blocking client library). The event loop and every other task run meanwhile.

        The daemon's threads are limited (``daemon.worker_threads``); a call waits for
        a free one. If the task is killed while the call runs, the call is abandoned:
        the task ends at once, the thread runs on until ``fn`` returns (Python cannot
        stop a thread), its result is dropped and the abandonment is logged.
        """
        try:
            return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True,
                                                 limiter=self._shared.threads)
        except trio.Cancelled:
            self.log.warning("abandoned a worker thread; it runs on until its call returns",
                             function=_name_of(fn))
            raise

    async def run_in_process(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a worker process, for CPU-bound work: it runs in parallel
        with the daemon and cannot stall it. ``fn`` and its arguments travel by
        cloudpickle (a function defined in the job file works); so do the result
        and any exception, which is re-raised here. If the task is killed, the
        worker process is killed."""
        payload = cloudpickle.dumps((fn, args))
        ok, data = await trio_parallel.run_sync(_worker.call, payload, kill_on_cancel=True)
        value = cloudpickle.loads(data)
        if ok:
            return value
        raise value

    def _finish(self, kind: str, value: Any) -> None:
        self._outcome = (kind, value)
        if self._done is not None:
            self._done.set()

    def __repr__(self) -> str:
        return f"<task {self.name} #{self.id}>"


def _name_of(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def _tree(pid: int) -> list[psutil.Process]:
    """The process pid and its descendants, parents first; empty if it is gone."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _signal_all(procs: list[psutil.Process], sig: int) -> None:
    for p in procs:
        with suppress(psutil.NoSuchProcess):  # psutil checks it is still the same process
            p.send_signal(sig)


async def end_processes(procs: list[psutil.Process], grace: float) -> None:
    """SIGTERM procs, wait up to grace seconds for them to exit, SIGKILL the rest, and
    return once those have died too (at most KILL_WAIT seconds more: SIGKILL takes
    effect when the kernel next schedules the process, not when kill() returns).

    Exits are waited for with pidfds in the event loop, not by polling; without
    pidfd support (Linux < 5.3) the survivors simply get the whole grace period.
    """
    _signal_all(procs, signal.SIGTERM)
    await _wait_all(procs, grace)
    survivors = [p for p in procs if _running(p)]
    _signal_all(survivors, signal.SIGKILL)
    await _wait_all(survivors, KILL_WAIT)


KILL_WAIT = 2.0   # seconds end_processes waits for SIGKILLed processes to be gone


async def _wait_all(procs: list[psutil.Process], timeout: float) -> None:
    with trio.move_on_after(timeout):
        async with trio.open_nursery() as nursery:
            for p in procs:
                nursery.start_soon(_wait_exit, p, timeout)


async def _wait_exit(p: psutil.Process, grace: float) -> None:
    try:
        fd = os.pidfd_open(p.pid)
    except (AttributeError, OSError):  # gone already, or no pidfd here
        if _running(p):
            await trio.sleep(grace)
        return
    try:
        if _running(p):  # the pidfd is of this process, not of a newer one with its pid
            await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


def _running(p: psutil.Process) -> bool:
    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
