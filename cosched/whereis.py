"""Where a task is, in its job's code: what ``coschedctl show`` prints as ``at``, ``stack``
and ``waiting on``.

A *waiting* task's trio task is blocked inside trio, called from the job: its
await chain runs from the supervisor, through the job's frames, into trio. A
*suspended* task's trio task waits in the supervisor for a resume; the job's
frames are in the coroutine it yielded or transferred from (the *parked*
coroutine, which the supervisor continues on resume), not in the trio task.

Either way the place that matters is the innermost frame outside cosched and
trio (the job's line, or a library it called), and the stack that matters runs
from the outermost such frame down to it; frames of cosched and trio are left
out, as they are the same for every task.
"""

from __future__ import annotations

import os
from typing import Any

import trio

from ._coro import stack_of

__all__ = ["locate"]

_INFRA = (os.path.dirname(os.path.abspath(trio.__file__)) + os.sep,
          os.path.dirname(os.path.abspath(__file__)) + os.sep)

Frame = tuple[str, int, str]


def _own(frames: list[Frame]) -> list[Frame]:
    return [f for f in frames if not os.path.abspath(f[0]).startswith(_INFRA)]


def _frame(f: Frame) -> dict:
    return {"file": f[0], "line": f[1], "function": f[2]}


def _short(f: Frame) -> str:
    return f"{os.path.basename(f[0])}:{f[1]}"


def locate(t: Any, parked: Any, transferred: bool) -> dict | None:
    """``at`` (the innermost frame of the job), ``stack`` (the job's frames, outermost
    first) and, for a suspended task, ``waiting_on``; None when there is nothing to
    add to what ``cosched.reports`` says (the task runs, or has ended)."""
    state = t.shown_state()
    if state == "suspended" and parked is not None:
        frames = _own(stack_of(parked))
        how = "transferred to main" if transferred else "yielded"
        where = f" at {_short(frames[-1])}" if frames else ""
        return {"at": _frame(frames[-1]) if frames else None,
                "stack": [_frame(f) for f in frames],
                "waiting_on": f"coschedctl resume ({how}{where})"}
    if state == "waiting" and t.trio_task is not None:
        frames = _own(stack_of(t.trio_task.coro))
        return {"at": _frame(frames[-1]) if frames else None,
                "stack": [_frame(f) for f in frames]}
    return None
