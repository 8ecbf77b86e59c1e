"""The task registry: every task the daemon knows, and the indexes over them.

A ``Task`` is one instance of a job and everything operators may ask about it.
The ``Registry`` finds tasks by id and by name, hands out unique
names in O(1) amortised time, and forgets ended tasks beyond a bound, so a
daemon that runs millions of short tasks holds only what it lists.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import trio

from .ondemand import field
from .protocol import NO_SUCH_TASK, ControlError

__all__ = ["Task", "Registry", "ALIVE", "ENDED_KEPT"]

ALIVE = frozenset({"starting", "running", "waiting", "suspended", "restarting"})
STATES = ("starting", "running", "suspended", "restarting", "finished", "failed", "killed")
ENDED_KEPT = 1000  # ended tasks kept for status; older ones are forgotten
AT_ONCE = 50_000   # ids of an index copied (and sorted) at once by a filter, at most


def _is_id(text: str) -> bool:
    """Whether text spells a task id. Only ASCII digits make one ("²".isdigit() is true,
    int("²") fails), and no more of them than an id can have: int() never converts
    thousands of digits."""
    return text.isascii() and text.isdigit() and len(text) <= 19


class _Rare:
    """The fields of a task that most tasks never set (restarts, ends, kills, waiters,
    children, a suspension to the daemon): a Task makes this on the first assignment
    of a value other than the default, so a parked task pays one slot for all of them
    (a million tasks' sixteen slots: 128 MB)."""

    __slots__ = ("restarts", "starts", "switches", "result", "error", "traceback", "scope",
                 "abandoned", "stopped", "ended", "children", "kill_requested", "done",
                 "yielded", "inbox", "wake")

    def __init__(self) -> None:
        self.restarts = self.switches = 0
        self.starts = self.result = self.error = self.traceback = self.scope = None
        self.abandoned = self.kill_requested = self.done = False
        self.stopped = self.ended = self.children = None
        self.yielded = self.inbox = self.wake = None


def _rare(name: str, default: Any, doc: str) -> property:
    return field("_rare", _Rare, name, default, doc)


class Task:
    """One job instance and everything operators may ask about it.

    Kept lean, since a daemon may hold a million of them: what most tasks never
    need (events to wait on, the restart history, the children table, how it
    ended) is made on first use, and the policy is shared by every task of a job.
    """

    __slots__ = (
        "id", "job", "policy", "ctx", "fn", "args", "parent",
        "_name",         # its name; None when it is the one its id implies, <parent's name>.<id>
                         # (the usual name of a spawned task), derived on each read: a
                         # million children, a million strings fewer
        "_state",        # starting|running|suspended|restarting|finished|failed|killed ("waiting"
                         # is derived); assigned through `state`, which keeps the index current
        "_index",        # the registry's by-state index, or None before the task is added
        "born",          # time.monotonic() at its creation (started_at is derived from it)
        "busy", "steps", "longest_step",
        "root", "trio_task",
        "where",         # (steps, text): waiting_on as computed at that step count
        "_rare",         # _Rare, or None while every field there has its default
    )

    restarts = _rare("restarts", 0, "lives begun after the first")
    starts = _rare("starts", None, "monotonic start times within the start-limit window "
                   "(None: no restarts)")
    switches = _rare("switches", 0, "coroutine switches in its trio task, taken from the "
                     "chain when it ends")
    result = _rare("result", None, "what main returned (finished)")
    error = _rare("error", None, "why it failed or was killed")
    traceback = _rare("traceback", None, "the traceback of its failure, as text")
    scope = _rare("scope", None, "the cancel scope a kill or a restart delay uses")
    abandoned = _rare("abandoned", False, "its cleanup overran stop_timeout: ended in the "
                      "registry, trio task left")
    _stopped = _rare("stopped", None, "made by whoever waits for the next suspension or end "
                     "(see stop_event)")
    _ended = _rare("ended", None, "made by whoever waits for the end (see wait_ended)")
    _children = _rare("children", None, "id -> Task of its alive spawned children (None: none "
                      "yet); pruned on end")
    kill_requested = _rare("kill_requested", False, "set by kill or stop; the task can no "
                           "longer be resumed")
    done = _rare("done", False, "ended for good (no restart follows); set once, by the "
                 "supervisor")
    yielded = _rare("yielded", None, "values of the latest suspension, while suspended")
    inbox = _rare("inbox", None, "values an operator resumed it with, until the task takes "
                  "them")
    wake = _rare("wake", None, "while suspended: set to hand `inbox` (or a kill) to the task")

    def __init__(self, id: int, name: str | None, job: Any, policy: Any, fn, args: tuple,
                 parent: Task | None) -> None:
        assert name is not None or parent is not None, "only a child's name is implied"
        self.id, self._name, self.job, self.policy = id, name, job, policy
        self.fn, self.args, self.parent = fn, args, parent
        self.ctx = None
        self._state = "starting"
        self._index: dict[str, dict[int, Task]] | None = None
        self.born = time.monotonic()
        self.busy = self.longest_step = 0.0
        self.steps = 0
        self.root = self.trio_task = self.where = self._rare = None

    @property
    def name(self) -> str:
        name = self._name
        return name if name is not None else f"{self.parent.name}.{self.id}"

    def own_name(self) -> str | None:
        """Its name, or None when that is its job's name and its id, ``<job>.<id>`` (a
        task its job's own task spawned without a name): told without making it."""
        name = self._name
        if name is None:
            parent = self.parent.name
            return None if parent == self.job.name else f"{parent}.{self.id}"
        return name

    @property
    def state(self) -> str:
        return self._state

    @state.setter
    def state(self, new: str) -> None:
        index = self._index
        if index is not None and new != self._state:
            old = index[self._state]
            del old[self.id]
            if not old:   # a dict never shrinks as it empties: a burst of 100,000 starts
                index[self._state] = {}   # left "starting" a 2.6 MB table of nothing
            index[new][self.id] = self
        self._state = new

    @property
    def started_at(self) -> float:
        """When it was created, by the wall clock (as it reads now: a monotonic time is
        kept, not a second float per task)."""
        return time.time() - (time.monotonic() - self.born)

    @property
    def alive(self) -> bool:
        return self._state in ALIVE

    @property
    def children(self) -> dict[int, Task]:
        children = self._children
        return children if children is not None else {}

    def shown_state(self) -> str:
        """running (runnable or stepping) vs waiting (blocked in the event loop) is read off
        trio (a trio without that field shows every running task as running)."""
        state = self._state
        if state == "running" and self.trio_task is not None and getattr(
                self.trio_task, "_next_send_fn", True) is None:
            return "waiting"
        return state

    def stop_event(self) -> trio.Event:
        """An event set when the task next suspends or ends."""
        if self._stopped is None:
            self._stopped = trio.Event()
        return self._stopped

    def signal_stop(self) -> None:
        if self._stopped is not None:
            self._stopped.set()
            self._stopped = None

    async def wait_ended(self) -> None:
        """Return once the task has ended for good."""
        if not self.done:
            if self._ended is None:
                self._ended = trio.Event()
            await self._ended.wait()

    def mark_done(self) -> None:
        self.done = True
        if self._ended is not None:
            self._ended.set()
        self.signal_stop()


class Registry:
    """Tasks by id and by live name; ended tasks kept up to ENDED_KEPT."""

    def __init__(self) -> None:
        self.tasks: dict[int, Task] = {}
        # Indexes, so that filters cost what they match: state -> id -> Task (every listed
        # task is in exactly the dict of its state). A job's tasks are found from its
        # top-level tasks, through their children (see _of_job): a million children
        # are not a million entries more.
        self.by_state: dict[str, dict[int, Task]] = {s: {} for s in STATES}
        # What asks about a job's own tasks (reload, timers, `jobs`) must not walk the
        # children they spawned, a million of them: job -> id -> alive top-level Task,
        # job -> how many of its tasks are alive, children included, and job -> how
        # many are listed (alive, or ended and not forgotten yet).
        self._roots: dict[str, dict[int, Task]] = {}
        self._alive: dict[str, int] = {}
        self._listed: dict[str, int] = {}
        self._parents: dict[str, dict[int, Task]] = {}   # job -> listed tasks that spawned
        self._live: dict[str, Task] = {}         # name -> the alive task of that name
        self._suffix: dict[str, int] = {}        # base name -> next suffix worth trying
        self._ended: deque[int] = deque()        # ids of ended tasks still listed, oldest first
        self._ended_names: dict[str, Task] = {}  # name -> newest listed ended task of that name
        self.next_id = 1

    def new_id(self) -> int:
        tid = self.next_id
        self.next_id += 1
        return tid

    def free_name(self, base: str) -> str:
        """``base``, or ``base.N`` with the smallest N not tried before for this base."""
        if not self._name_taken(base):
            return base
        n = self._suffix.get(base, 2)
        while self._name_taken(f"{base}.{n}"):
            n += 1
        self._suffix[base] = n + 1
        return f"{base}.{n}"

    def free_implied(self, name: str) -> str:
        """``free_name`` of the name a new task's id implies (see _implied), before the
        task is added: only a live task named so explicitly can hold it."""
        return name if name not in self._live else self.free_name(name)

    def _name_taken(self, name: str) -> bool:
        return name in self._live or self._implied(name) is not None

    def _implied(self, name: str) -> Task | None:
        """The alive task of that name if its name is the one its id implies: a child
        called ``<parent's name>.<its id>`` (the usual name of a spawned task) is found
        through its id, and not kept in ``_live`` (a million children, a million
        entries fewer)."""
        _, dot, tail = name.rpartition(".")
        if not dot or not _is_id(tail):
            return None
        t = self.tasks.get(int(tail))
        return t if t is not None and t.name == name and t.alive else None

    def add(self, t: Task) -> None:
        self.tasks[t.id] = t
        if t._name is not None:   # an implied name is found through the id (see _implied)
            self._live[t._name] = t
        t._index = self.by_state
        self.by_state[t.state][t.id] = t
        job = t.job.name
        self._listed[job] = self._listed.get(job, 0) + 1
        self._alive[job] = self._alive.get(job, 0) + 1
        parent = t.parent
        if parent is None:
            self._roots.setdefault(job, {})[t.id] = t
        else:
            children = parent._children
            if children is None:
                children = parent._children = {}
                self._parents.setdefault(job, {})[parent.id] = parent
            children[t.id] = t

    def retire(self, t: Task) -> None:
        """t has ended: keep it listed, forgetting the oldest ended tasks beyond ENDED_KEPT."""
        if self._live.get(t.name) is t:
            del self._live[t.name]
        self._ended_names[t.name] = t
        job = t.job.name
        if self._alive.get(job, 0) > 1:
            self._alive[job] -= 1
        else:
            self._alive.pop(job, None)
        if t.parent is None:
            roots = self._roots.get(job)
            if roots is not None and roots.pop(t.id, None) is not None and not roots:
                del self._roots[job]
        elif t.parent._children is not None:
            t.parent._children.pop(t.id, None)
        self._ended.append(t.id)
        while len(self._ended) > ENDED_KEPT:
            self._forget(self._ended.popleft())

    def _forget(self, tid: int) -> None:
        t = self.tasks.pop(tid, None)
        if t is None:
            return
        self.by_state[t.state].pop(tid, None)
        t._index = None
        if self._ended_names.get(t.name) is t:
            del self._ended_names[t.name]
        job = t.job.name
        if self._listed.get(job, 0) > 1:
            self._listed[job] -= 1
        else:
            self._listed.pop(job, None)
        parents = self._parents.get(job)
        if parents is not None and parents.pop(tid, None) is not None and not parents:
            del self._parents[job]

    def count_alive(self) -> int:
        return sum(len(self.by_state[s]) for s in ALIVE if s in self.by_state)

    def alive(self) -> list[Task]:
        return [t for s in ALIVE if s in self.by_state for t in self.by_state[s].values()]

    def count_listed_of(self, job: str) -> int:
        """How many tasks of a job are listed (alive, or ended and not yet forgotten)."""
        return self._listed.get(job, 0)

    def _of_job(self, job: str) -> list[int] | None:
        """The ids of a job's listed tasks, in order: its alive top-level tasks, the alive
        children of each of its tasks that spawned (a task spawns children of its own
        job; the ended ones keep theirs until they end too) and its ended tasks still
        listed, copied at C speed but for these few loops. None in the rare case that
        misses some: an alive child whose parent was forgotten already."""
        tasks = self.tasks
        ids = list(self._roots.get(job, ()))
        for parent in self._parents.get(job, {}).values():
            ids.extend(parent.children)   # (alive ones only: pruned as they end)
        ids.extend(tid for tid in self._ended
                   if (t := tasks.get(tid)) is not None and t.job.name == job)
        if len(ids) != self._listed.get(job, 0):
            return None
        ids.sort()
        return ids

    def ended_listed(self) -> list[Task]:
        """The ended tasks still listed, oldest first (at most ENDED_KEPT)."""
        tasks = self.tasks
        return [tasks[tid] for tid in self._ended if tid in tasks]

    def roots_of(self, job: str) -> list[Task]:
        """The alive top-level tasks of a job (children end with their parent)."""
        return [t for t in self._roots.get(job, {}).values() if t.alive]

    def count_alive_of(self, job: str) -> int:
        """How many tasks of a job are alive, spawned children included."""
        return self._alive.get(job, 0)

    def matching(self, job: str | None = None, state: str | None = None) -> Iterator[Task]:
        """The listed tasks of a job and/or in a shown state, in id order, lazily."""
        return (t for t in self.scan(job, state) if t is not None)

    def scan(self, job: str | None = None,
             state: str | None = None) -> Iterator[Task | None]:
        """``matching``, with a None for each task looked at and not taken.

        What is done at once is at C speed, or in proportion to what matches: the
        sorted ids of the state's index, or of the job's tasks (see _of_job), whichever
        has fewer; more than AT_ONCE tasks are not copied, every task is walked in id
        order instead (sorting a million ids held the loop for 50-70 ms). Each task is
        looked at when it is taken, and the Nones let a caller bound the work of each
        step by what it looked at, not by what it found (running and waiting tasks
        share an index: ``--state running`` among a million waiting tasks finds
        nothing, slowly), so a caller taking them a chunk at a time never holds the
        loop for long; a task that changed meanwhile is taken as it is then.
        """
        stored = {"waiting": "running"}.get(state, state)
        if job is None and stored is None:
            return self._all()
        of_state = self.by_state.get(stored, {}) if stored else None
        of_job = self._listed.get(job, 0) if job is not None else None
        if of_job is None or of_state is not None and len(of_state) <= of_job:
            if len(of_state) > AT_ONCE:   # most tasks match: walked, not copied
                return self._taken(self._all(), job, state, stored)
            return self._taken(sorted(of_state), job, state, stored)
        ids = self._of_job(job) if of_job <= AT_ONCE else None
        if ids is None:
            return self._taken(self._all(), job, state, stored)
        return self._taken(ids, job, state, stored)

    def _all(self) -> Iterator[Task | None]:
        """Every listed task, in id order. Ids are added in increasing order, so when
        they are dense (the usual case: ended tasks are forgotten beyond a bound) the
        ids themselves are walked and nothing is copied up front (a copy of a million
        tasks' dict holds the loop for tens of milliseconds); tasks added meanwhile are
        not taken, as with a copy."""
        if not self.tasks:
            return iter(())
        first, last = next(iter(self.tasks)), max(self.next_id - 1, next(reversed(self.tasks)))
        if last - first < 2 * len(self.tasks):
            tasks = self.tasks
            return map(tasks.get, range(first, last + 1))   # None where an id is gone
        return iter(list(self.tasks.values()))

    def _taken(self, ids: Iterable[int | Task | None], job: str | None, state: str | None,
               stored: str | None) -> Iterator[Task | None]:
        """The tasks of ``ids`` (ids, or tasks and Nones as _all gives them) that match."""
        tasks = self.tasks
        for tid in ids:
            t = tasks.get(tid) if type(tid) is int else tid
            if t is not None and (job is None or t.job.name == job) and (
                    state is None or t._state == stored and t.shown_state() == state):
                yield t
            else:
                yield None

    def find(self, ref: str | int) -> Task:
        """A task by id (an int, or a string of ASCII digits) or by name; the alive one
        of that name if there is one, else the newest."""
        if isinstance(ref, int) or (isinstance(ref, str) and _is_id(ref)):
            t = self.tasks.get(int(ref))
            if t is not None:
                return t
        if isinstance(ref, str):
            t = self._live.get(ref) or self._implied(ref)
            if t is not None:
                return t
            t = self._ended_names.get(ref)
            if t is not None:
                return t
        raise ControlError(NO_SUCH_TASK, f"no task {ref!r} (see coschedctl status)")
