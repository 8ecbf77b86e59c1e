"""What the control backend answers about tasks: the dicts behind status, show and resume.

Everything here only reads the registry. Values that came from jobs (yielded
values, results) are passed through as they are: the protocol encoder turns
them into JSON with a guard; text made from job objects (error messages) was
already bounded by ``cosched.saferepr`` when it was stored.
"""

from __future__ import annotations

import itertools
import linecache
import os
import time
import types
from collections.abc import Callable
from typing import Any

import trio

from ._coro import driven_body, line_of, points_of, stack_of, switches_of
from .protocol import ROW_FIELDS, jsonable
from .registry import Task

__all__ = ["info", "values", "rows", "show", "outcome", "stack", "where", "pack", "unpack"]

SHOWN_CHILDREN = 1000   # child ids `show` lists at most (lowest first); num_children counts all
_TRIO_DIR = os.path.dirname(trio.__file__)
_PKG_DIR = os.path.dirname(__file__)


def pack(vals: tuple):
    return None if not vals else vals[0] if len(vals) == 1 else vals


def unpack(v) -> tuple:
    return () if v is None else v if type(v) is tuple else (v,)


def where(frames: list[tuple[str, int, str]]) -> str | None:
    """'trio.sleep at ticker.py:12' from a stack: the event-loop call and the job line that made it.

    trio's socket methods are generated wrappers with no telling name; for them the
    job's own line says more ('await sock.recv(1) at echo.py:30').
    """
    for i, (file, _line, func) in enumerate(frames):
        if file.startswith(_TRIO_DIR):
            caller = next((f for f in reversed(frames[:i]) if not f[0].startswith(_PKG_DIR)), None)
            if caller is None:
                return f"trio.{func.lstrip('_')}"
            what = f"trio.{func.lstrip('_')}"
            if "<locals>" in func:
                what = linecache.getline(caller[0], caller[1]).strip() or what
            return f"{what} at {os.path.basename(caller[0])}:{caller[1]}"
    return None


def stack(t: Task) -> list[tuple[str, int, str]]:
    if t.trio_task is None:
        return []
    frames = stack_of(t.trio_task.coro)
    return [f for f in frames if not f[0].startswith(_PKG_DIR)] or frames


def waiting_on(t: Task) -> str | None:
    """Where a waiting task waits; walked once per step (a parked task does not step)."""
    cached = t.where
    if cached is None or cached[0] != t.steps:
        cached = t.where = (t.steps, _where_waits(t))
    return cached[1]


def _where_waits(t: Task) -> str | None:
    """``where(stack(t))``, walking only down to the first trio frame and reading the
    line of one: a status of a million parked tasks walks each of them once."""
    if t.trio_task is None:
        return None
    coro = t.trio_task.coro
    body = driven_body(coro)
    point = _trio_point(body) if body is not None else None
    if point is None:   # not the common shape: the generic walk
        point = _trio_point_of(points_of(coro))
    if point is None:
        return None
    code, caller, owner = point
    line = line_of(owner) if caller is not None else 0
    key = (id(code), id(caller), line)   # ids: a code object's own hash walks its contents
    known = _WHERE.get(key)
    if known is None:
        frames = [(code.co_filename, 0, code.co_qualname)]
        if caller is not None:
            frames.insert(0, (caller.co_filename, line, caller.co_qualname))
        if len(_WHERE) >= 4096:   # code objects of reloaded jobs would pile up
            _WHERE.clear()
        known = _WHERE[key] = (where(frames), code, caller)   # (the codes kept alive)
    return known[0]


_WHERE: dict[tuple, tuple] = {}   # (id of trio code, of job code, line) -> (where(), codes)


def _trio_point(obj) -> tuple | None:
    """(trio code, job code, job coroutine) of the first trio frame down ``obj``'s
    ``cr_await`` chain and the innermost frame outside cosched above it (the job's code
    and coroutine are None if there is none). None if no trio frame is found, or the
    chain leaves plain coroutines before one is."""
    caller = owner = None
    kinds, bound = _KINDS, 10_000   # a bound, should a chain loop
    while type(obj) is _COROUTINE and bound:
        code = obj.cr_code
        kind = kinds.get(id(code))   # _kind's look-up, inline: this loop runs per task
        kind = kind[1] if kind is not None else _kind(code)
        if kind is _TRIO:
            return code, caller, owner
        if kind is _JOB:
            caller, owner = code, obj
        obj, bound = obj.cr_await, bound - 1
    return None


def _trio_point_of(points) -> tuple | None:
    """``_trio_point`` of what the generic walk (``points_of``) yields."""
    caller = owner = None
    for code, current in points:
        kind = _kind(code)
        if kind is _TRIO:
            return code, caller, owner
        if kind is _JOB:
            caller, owner = code, current
    return None


_COROUTINE = types.CoroutineType
_TRIO, _OURS, _JOB = "trio", "cosched", "job"
_KINDS: dict[int, tuple] = {}   # id(code) -> (code, whose it is): one look at its file each


def _kind(code: Any) -> str:
    known = _KINDS.get(id(code))   # (a code object's own hash walks its contents)
    if known is not None:
        return known[1]
    name = code.co_filename
    kind = _TRIO if name.startswith(_TRIO_DIR) else _OURS if name.startswith(_PKG_DIR) else _JOB
    if len(_KINDS) >= 4096:   # code objects of reloaded jobs would pile up
        _KINDS.clear()
    _KINDS[id(code)] = (code, kind)   # (the code kept alive: its id stays its own)
    return kind


def info(t: Task, now: float | None = None) -> dict:
    """One task's row. ``now`` (time.monotonic()) may be given once for many rows."""
    # (keys in ROW_FIELDS order; a literal is quicker than dict(zip(...)) by a fifth of a row)
    id_, name, job, state, waiting, busy, steps, switches, age, restarts, yielded, error = \
        values(t, now)
    return {"id": id_, "name": name, "job": job, "state": state, "waiting_on": waiting,
            "busy": busy, "steps": steps, "switches": switches, "age": age,
            "restarts": restarts, "yielded": yielded, "error": error}


def values(t: Task, now: float | None = None) -> tuple:
    """One task's row as its values, in ``protocol.ROW_FIELDS`` order."""
    state = _shown(t)
    return (t.id, t.name, t.job.name, state,
            waiting_on(t) if state == "waiting" else None,
            _busy(t), t.steps, _switches(t),
            _age(t, time.monotonic() if now is None else now),
            t.restarts, _yielded(t), t.error)


_shown = Task.shown_state   # (a plain function: rows call it for every task)


# int(x * 10**n + 0.5) / 10**n: round(x, n) for these non-negative times (but for ties),
# at a fraction of round()'s cost, which goes through decimal digits

def _busy(t: Task) -> float:
    return int(t.busy * 1e6 + 0.5) / 1e6


def _age(t: Task, now: float) -> float:
    return int((now - t.born) * 1e3 + 0.5) / 1e3


def _switches(t: Task) -> int:
    return switches_of(t.trio_task) if t.trio_task is not None else t.switches


def _yielded(t: Task) -> list | None:
    return _plain(t.yielded) if t.yielded is not None else None


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _plain(values: tuple) -> list:
    """Yielded values as a row shows them: JSON types only (so any encoder renders the
    row alike), the others as the protocol's encoder would render them."""
    if all(type(v) in _SCALARS for v in values):
        return list(values)
    return jsonable(list(values))


def rows(tasks: list[Task], columns: list[str] | None = None,
         now: float | None = None) -> list:
    """info() of many tasks, at one moment; with ``columns``, each row an array of those
    fields, in that order (as values() has them): made a column at a time, so only the
    fields asked for are derived (a table of 100,000 tasks asks for seven of twelve)."""
    now = time.monotonic() if now is None else now
    if columns is None:
        return [info(t, now) for t in tasks]
    states = list(map(_shown, tasks)) if {"state", "waiting_on"} & set(columns) else []
    made = [_COLUMNS[field](tasks, states, now) for field in columns]
    return [[v] for v in made[0]] if len(made) == 1 else list(zip(*made, strict=True))


# One column of values() each, from (tasks, their shown states, now).
_COLUMNS: dict[str, Callable[[list[Task], list, float], list]] = {
    "id": lambda ts, ss, now: [t.id for t in ts],
    "name": lambda ts, ss, now: [t.name for t in ts],
    "job": lambda ts, ss, now: [t.job.name for t in ts],
    "state": lambda ts, ss, now: ss,
    "waiting_on": lambda ts, ss, now: [waiting_on(t) if s == "waiting" else None
                                       for t, s in zip(ts, ss, strict=True)],
    "busy": lambda ts, ss, now: list(map(_busy, ts)),
    "steps": lambda ts, ss, now: [t.steps for t in ts],
    "switches": lambda ts, ss, now: list(map(_switches, ts)),
    "age": lambda ts, ss, now: [_age(t, now) for t in ts],
    "restarts": lambda ts, ss, now: list(map(Task.restarts.fget, ts)),
    "yielded": lambda ts, ss, now: list(map(_yielded, ts)),
    "error": lambda ts, ss, now: list(map(Task.error.fget, ts)),
}
assert tuple(_COLUMNS) == ROW_FIELDS


def show(t: Task) -> dict:
    out = info(t)
    out.update(
        stack=[{"file": f, "line": n, "function": fn} for f, n, fn in stack(t)],
        traceback=t.traceback, longest_step=t.longest_step, started_at=t.started_at,
        config=t.policy.config, parent=t.parent.id if t.parent else None,
        children=list(itertools.islice(t.children, SHOWN_CHILDREN)),   # (added by id)
        num_children=len(t.children), path=str(t.job.path),
        result=t.result if t.state == "finished" else None,
        task_state=t.ctx.state if t.ctx is not None else None)
    return out


def outcome(t: Task) -> dict:
    """The answer to a resume: how the task stands now, and the values it gave."""
    state = t.shown_state()
    what = {"suspended": "yielded", "finished": "finished", "failed": "failed",
            "killed": "killed"}.get(state, "running")
    values = list(t.yielded) if state == "suspended" and t.yielded is not None else (
        list(unpack(t.result)) if state == "finished" else None)
    return {"task": info(t), "outcome": what, "values": values, "error": t.error}


def job_row(name: str, entry: dict[str, Any], policy: Any, tasks: list[int],
            alive: int) -> dict:
    """A job as `jobs` lists it: ``tasks`` holds the ids of its alive top-level tasks,
    ``num_tasks`` counts all of its alive tasks, the children they spawned included
    (however many: they are counted, not listed)."""
    state = "error" if entry["job"] is None else "loaded" if policy.enabled else "disabled"
    return {"name": name, "path": str(entry["path"]), "state": state, "error": entry["error"],
            "tasks": tasks, "num_tasks": alive}
