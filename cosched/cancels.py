"""Cancelling one trio task without a cancel scope per task.

trio cancels through cancel scopes, and the usual way to be able to kill one task
is to run all of it inside a scope of its own. That scope costs about 0.6 KB for
as long as the task lives (the scope, its ``CancelStatus`` and the status's two
sets), a quarter of what a parked task cost beyond trio's own task; a daemon holding
a million tasks of which it kills a handful pays it a million times.

So the scope is made when the kill comes: ``cancel_task`` splices a new, cancelled
scope in at the root of the task's scope tree (between the nursery's status the
task was started under and the outermost scope the task is inside, or the task
itself), and the task leaves it with ``go_home`` once the ``Cancelled`` has reached
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
- Only the task itself leaves its scope (``go_home`` runs in the task, at its
  root), as a ``with`` block's exit would. Without a ``with`` block of the
  daemon's around the job, nothing else would notice a scope the job entered by
  hand and never left, which would keep the task cancelled or under the job's
  deadline for good: ``go_home`` closes such scopes and says so.
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

    Returns that scope; the task must leave it (``go_home``) when the ``Cancelled``
    reaches its root. A task whose scopes are not under its nursery's any more (it misnested
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


def go_home(trio_task: Any, scope: trio.CancelScope | None) -> bool:
    """trio_task, at its root, is back in the status of the nursery it was started in.

    It leaves ``scope`` (the one ``cancel_task`` spliced in, or None), and a scope the
    job entered by hand and never left (which no ``with`` block will close now) is
    closed here, as trio closes misnested scopes: what is still under it stays
    cancelled, and the task is free of it. Returns True if there was such a scope.
    """
    home = _home(trio_task)
    ours = scope._cancel_status if scope is not None else None
    if scope is not None:
        scope._cancel_status = None
    status = trio_task._cancel_status
    leaked = status is not home and status is not ours
    if status is not home:
        trio_task._activate_cancel_status(home)
        while status is not None and status is not home:   # up to home, closing each
            parent = status.parent
            status.close()
            status = parent
    if ours is not None:
        ours.close()   # (if the walk did not pass it: closing twice does nothing)
    return leaked
