"""The task tree: which task spawned which, for ``coschedctl tree``.

The answer is flat, in tree order (each task right after its parent, children
by id), with each task's ``depth`` and ``parent``: a chain of spawns thousands
deep must neither exhaust Python's recursion limit here nor nest JSON beyond
what clients parse. A task whose parent the registry has forgotten counts as a
root.

The rows are made lazily, as a long answer is sent a piece at a time (see
``protocol.Chunked``): a task's children are those the registry keeps for it
(alive ones, in its children table) and the ended ones still listed (at most
``registry.ENDED_KEPT``, grouped once per request), and the walk keeps one
iterator per level, so no step holds the loop for a whole tree of a million
tasks. Tasks that start or end while the answer is sent are shown as found.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from heapq import merge
from typing import Any

__all__ = ["walk", "children_in"]


def children_in(ended: Iterable[Any]) -> Callable[[Any], list[Any]]:
    """``children(t)``: t's listed children by id, from its own table of alive children
    and ``ended`` (the listed ended tasks, grouped here by parent once)."""
    ended_of: dict[int, list[Any]] = {}
    for e in ended:
        if e.parent is not None:
            ended_of.setdefault(e.parent.id, []).append(e)

    def children(t: Any) -> list[Any]:
        alive = list(t._children.values()) if t._children else []   # a copy: it may change
        gone = ended_of.get(t.id)
        if not gone:
            return alive
        gone.sort(key=_id)
        return list(merge(alive, gone, key=_id)) if alive else gone
    return children


def _id(t: Any) -> int:
    return t.id


def walk(tasks: dict[int, Any], order: Iterable[Any | None],
         children: Callable[[Any], list[Any]], top: Any = None,
         job: str | None = None) -> Iterator[dict | None]:
    """Rows {id, name, job, state, parent, depth} in tree order: every tree (roots taken
    from ``order``, the listed tasks by id, None for a gap), or the one under ``top``,
    or the trees whose root belongs to ``job``. A None for each task looked at that
    starts no tree shown, so a caller can bound each step by what it looked at."""
    for t in [top] if top is not None else order:
        if t is None or top is None and not (
                (t.parent is None or t.parent.id not in tasks) and
                (job is None or t.job.name == job)):
            yield None
            continue
        stack = [(iter((t,)), 0)]   # one iterator per level: a wide tree is not copied
        while stack:
            level, depth = stack[-1]
            node = next(level, None)
            if node is None:
                stack.pop()
                continue
            yield {"id": node.id, "name": node.name, "job": node.job.name,
                   "state": node.shown_state(),
                   "parent": node.parent.id if node.parent is not None else None,
                   "depth": depth}
            kids = children(node)
            if kids:
                stack.append((iter(kids), depth + 1))
