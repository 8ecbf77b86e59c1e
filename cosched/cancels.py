"""Cancelling one trio task without a cancel scope per task.

trio cancels through cancel scopes, and the usual way to be able to kill one task
is to run all of it inside a scope of its own. That scope costs about 0.7 KB for
as long as the task lives (the scope, its ``CancelStatus`` and the status's two
sets), most of what a parked task costs beyond trio's own task; a daemon holding
a million tasks of which it kills a handful pays it a million times.

So the scope is made when the kill comes: ``cancel_task`` splices a new, cancelled
scope in at the root of the task's scope tree (between the nursery's status the
task was started under and the outermost scope the task is inside, or the task
itself), and the task leaves it with ``leave`` once the ``Cancelled`` has reached
its root. From then on the task is cancelled exactly as if it had run inside that
scope all along: ``Cancelled`` at every checkpoint until it leaves, shielded scopes
respected, the trio tasks it started in its own nurseries cancelled with it.

Design principles
-----------------
- The splice is what trio's own ``TaskStatus.started()`` does when it moves a
  task's scopes from one nursery to another: re-parent ``CancelStatus`` objects
  (``CancelStatus.parent``) and move tasks between them
  (``Task._activate_cancel_status``). Those internals are checked once, at import;
  where they are missing (``SPLICE`` is False, or ``COSCHED_SCOPE_PER_TASK`` is set)
  the caller falls back to a real scope around each task's life.
- Only the task itself leaves its scope (``leave`` runs in the task, after every
  inner scope has exited), as a ``with`` block's exit would.
"""

from __future__ import annotations

import os
from typing import Any

import trio

try:
    from trio._core._run import CancelStatus
except ImportError:  # pragma: no cover - a trio that reorganised its internals
    CancelStatus = None


def _probe() -> bool:
    """True when this trio has the internals a splice needs (see the module docstring)."""
    if CancelStatus is None or os.environ.get("COSCHED_SCOPE_PER_TASK"):
        return False
    task_type = trio.lowlevel.Task
    return (isinstance(getattr(CancelStatus, "parent", None), property)
            and CancelStatus.parent.fset is not None
            and callable(getattr(CancelStatus, "close", None))
            and callable(getattr(task_type, "_activate_cancel_status", None))
            and "_cancel_status" in getattr(task_type, "__slots__", ("_cancel_status",))
            and "_cancel_status" in getattr(trio.CancelScope, "__slots__", ("_cancel_status",)))


SPLICE: bool = _probe()


def _home(trio_task: Any) -> Any:
    """The status trio_task was started under: its nursery's."""
    return trio_task.parent_nursery._cancel_status


def cancel_task(trio_task: Any) -> trio.CancelScope:
    """Cancel trio_task as if all of it ran inside a scope of its own, now cancelled.

    Returns that scope; the task must ``leave`` it when the ``Cancelled`` reaches its
    root. A task whose scopes are not under its nursery's any more (it misnested
    them) is not reached: the caller's timeout deals with it, as with any task that
    does not end when cancelled.
    """
    home = _home(trio_task)
    scope = trio.CancelScope()
    status = CancelStatus(scope=scope, parent=home)
    scope._cancel_status = status
    scope._has_been_entered = True   # never a `with` block of its own
    outer = trio_task._cancel_status
    if outer is home:
        trio_task._activate_cancel_status(status)
    else:
        while outer is not None and outer.parent is not home:
            outer = outer.parent
        if outer is not None:
            outer.parent = status
    scope.cancel()
    return scope


def leave(trio_task: Any, scope: trio.CancelScope) -> None:
    """trio_task leaves the scope ``cancel_task`` spliced in (it must be the current
    task, with no scope of its own still open): its status is its nursery's again."""
    status = scope._cancel_status
    if status is None:
        return
    if trio_task._cancel_status is status:
        trio_task._activate_cancel_status(status.parent)
    scope._cancel_status = None
    status.close()
