"""The task registry: every task the daemon knows, and the indexes over them.

A ``Task`` is one instance of a job and everything operators may ask about it.
The ``Registry`` finds tasks by id, by name and by trio task, hands out unique
names in O(1) amortised time, and forgets ended tasks beyond a bound, so a
daemon that runs millions of short tasks holds only what it lists.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import trio

from .protocol import NO_SUCH_TASK, ControlError

__all__ = ["Task", "Registry", "ALIVE", "ENDED_KEPT"]

ALIVE = frozenset({"starting", "running", "waiting", "suspended", "restarting"})
ENDED_KEPT = 1000  # ended tasks kept for status; older ones are forgotten


class Task:
    """One job instance and everything operators may ask about it."""

    __slots__ = (
        "id", "name", "job", "policy", "ctx", "fn", "args", "parent",
        "children",      # id -> Task of its alive spawned children; an ended child is removed
        "state",         # starting|running|suspended|restarting|finished|failed|killed ("waiting" is derived)
        "started_at", "born", "restarts", "starts",
        "busy", "steps", "longest_step", "step_began",
        "switches",      # coroutine switches in its trio task, taken from the chain when it ends
        "yielded",       # values of the latest suspension, while suspended
        "result", "error", "traceback",
        "root", "trio_task", "scope",
        "kill_requested",  # set once by kill or stop; the task can no longer be resumed
        "abandoned",     # its cleanup overran stop_timeout: ended in the registry, trio task left
        "inbox",         # values an operator resumed it with, until the task takes them
        "wake",          # set to hand `inbox` (or a kill) to a suspended task
        "stopped",       # set whenever the task suspends or ends; replaced after each
        "ended",         # set once, when the task has ended for good
    )

    def __init__(self, id: int, name: str, job: Any, policy: Any, fn, args: tuple,
                 parent: Task | None) -> None:
        self.id, self.name, self.job, self.policy = id, name, job, policy
        self.fn, self.args, self.parent = fn, args, parent
        self.children: dict[int, Task] = {}
        self.ctx = None
        self.state = "starting"
        self.started_at = time.time()
        self.born = time.monotonic()
        self.restarts = 0
        self.starts: deque[float] = deque()
        self.busy = 0.0
        self.steps = 0
        self.longest_step = 0.0
        self.step_began = 0.0
        self.switches = 0
        self.yielded: tuple | None = None
        self.result = None
        self.error: str | None = None
        self.traceback: str | None = None
        self.root = None
        self.trio_task = None
        self.scope: trio.CancelScope | None = None
        self.kill_requested = False
        self.abandoned = False
        self.inbox: tuple | None = None
        self.wake = trio.Event()
        self.stopped = trio.Event()
        self.ended = trio.Event()

    @property
    def alive(self) -> bool:
        return self.state in ALIVE

    def shown_state(self) -> str:
        """running (runnable or stepping) vs waiting (blocked in the event loop) is read off trio."""
        if self.state == "running" and self.trio_task is not None:
            runnable = getattr(self.trio_task, "_next_send_fn", None) is not None
            return "running" if runnable else "waiting"
        return self.state

    def signal_stop(self) -> None:
        self.stopped.set()
        self.stopped = trio.Event()


class Registry:
    """Tasks by id, by live name and by trio task; ended tasks kept up to ENDED_KEPT."""

    def __init__(self) -> None:
        self.tasks: dict[int, Task] = {}
        self.by_trio: dict[Any, Task] = {}       # trio task -> Task, while it runs
        self._live: dict[str, Task] = {}         # name -> the alive task of that name
        self._suffix: dict[str, int] = {}        # base name -> next suffix worth trying
        self._ended: deque[int] = deque()        # ids of ended tasks still listed, oldest first
        self.next_id = 1

    def new_id(self) -> int:
        tid = self.next_id
        self.next_id += 1
        return tid

    def free_name(self, base: str) -> str:
        """``base``, or ``base.N`` with the smallest N not tried before for this base."""
        if base not in self._live:
            return base
        n = self._suffix.get(base, 2)
        while f"{base}.{n}" in self._live:
            n += 1
        self._suffix[base] = n + 1
        return f"{base}.{n}"

    def add(self, t: Task) -> None:
        self.tasks[t.id] = t
        self._live[t.name] = t
        if t.parent is not None:
            t.parent.children[t.id] = t

    def retire(self, t: Task) -> None:
        """t has ended: keep it listed, forgetting the oldest ended tasks beyond ENDED_KEPT."""
        if self._live.get(t.name) is t:
            del self._live[t.name]
        if t.parent is not None:
            t.parent.children.pop(t.id, None)
        self._ended.append(t.id)
        while len(self._ended) > ENDED_KEPT:
            self.tasks.pop(self._ended.popleft(), None)

    def alive(self) -> list[Task]:
        return [t for t in self.tasks.values() if t.alive]

    def roots_of(self, job: str) -> list[Task]:
        """The alive top-level tasks of a job (children end with their parent)."""
        return [t for t in self.tasks.values()
                if t.job.name == job and t.alive and t.parent is None]

    def find(self, ref: str | int) -> Task:
        """A task by id (an int, or a string of ASCII digits) or by name; the alive one
        of that name if there is one, else the newest."""
        # Only ASCII digits make an id ("²".isdigit() is true, int("²") fails), and no more
        # of them than an id can have: int() never converts thousands of digits.
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isascii() and ref.isdigit()
                                    and len(ref) <= 19):
            t = self.tasks.get(int(ref))
            if t is not None:
                return t
        if isinstance(ref, str):
            t = self._live.get(ref)
            if t is not None:
                return t
            named = [t for t in self.tasks.values() if t.name == ref]
            if named:
                return named[-1]
        raise ControlError(NO_SUCH_TASK, f"no task {ref!r} (see coschedctl status)")
