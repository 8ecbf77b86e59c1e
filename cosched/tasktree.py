"""The task tree: which task spawned which, for ``coschedctl tree``.

The answer is flat, in tree order (each task right after its parent, children
by id), with each task's ``depth`` and ``parent``: a chain of spawns thousands
deep must neither exhaust Python's recursion limit here nor nest JSON beyond
what clients parse. A task whose parent the registry has forgotten counts as a
root.
"""

from __future__ import annotations

from typing import Any

__all__ = ["tree"]


def tree(tasks: list[Any], top: Any = None, job: str | None = None) -> list[dict]:
    """Rows {id, name, job, state, parent, depth} in tree order: every tree, or the one
    under ``top``, or the trees whose root belongs to ``job``."""
    listed = {t.id for t in tasks}
    kids: dict[int | None, list[Any]] = {}
    for t in tasks:
        parent = t.parent.id if t.parent is not None and t.parent.id in listed else None
        kids.setdefault(parent, []).append(t)
    roots = [top] if top is not None else [t for t in kids.get(None, [])
                                           if job is None or t.job.name == job]
    rows = []
    stack = [(t, 0) for t in reversed(roots)]
    while stack:
        t, depth = stack.pop()
        rows.append({"id": t.id, "name": t.name, "job": t.job.name, "state": t.shown_state(),
                     "parent": t.parent.id if t.parent is not None else None, "depth": depth})
        stack += [(c, depth + 1) for c in reversed(kids.get(t.id, []))]
    return rows
