"""The task tree, walked lazily: tree order, ended children, forgotten parents, filters."""

from __future__ import annotations

import sys
from types import SimpleNamespace

from cosched.tasktree import children_in, walk


class T(SimpleNamespace):
    def shown_state(self) -> str:
        return self.state


def make(tid: int, parent: T | None = None, job: str = "a", state: str = "running") -> T:
    t = T(id=tid, name=f"t{tid}", job=SimpleNamespace(name=job), state=state, parent=parent,
          _children=None)
    if parent is not None and state not in ("finished", "failed", "killed"):
        parent._children = parent._children or {}
        parent._children[tid] = t
    return t


def rows(tasks: dict, ended: list, **kw) -> list[tuple[int, int | None, int]]:
    walked = walk(tasks, [tasks.get(i) for i in range(1, max(tasks) + 1)], children_in(ended),
                  **kw)
    return [(r["id"], r["parent"], r["depth"]) for r in walked if r is not None]


def test_children_alive_and_ended_come_by_id_under_their_parent():
    root = make(1)
    a = make(2, root)
    done = make(3, root, state="finished")    # ended: no longer in its parent's table
    b = make(4, root)
    grandchild = make(5, a)
    other = make(6, job="b")
    tasks = {t.id: t for t in (root, a, done, b, grandchild, other)}
    assert rows(tasks, [done]) == [(1, None, 0), (2, 1, 1), (5, 2, 2), (3, 1, 1), (4, 1, 1),
                                   (6, None, 0)]
    assert rows(tasks, [done], job="b") == [(6, None, 0)]
    assert rows(tasks, [done], top=a) == [(2, 1, 0), (5, 2, 1)]


def test_a_task_whose_parent_is_forgotten_is_a_root():
    gone = make(1)
    child = make(2, gone)
    tasks = {2: child}                        # the parent is no longer listed
    assert rows(tasks, []) == [(2, 1, 0)]


def test_a_chain_deeper_than_the_recursion_limit_and_a_wide_tree_are_walked():
    deep = sys.getrecursionlimit() * 2
    chain = [make(1)]
    for i in range(2, deep + 1):
        chain.append(make(i, chain[-1]))
    tasks = {t.id: t for t in chain}
    walked = rows(tasks, [])
    assert [r[2] for r in walked] == list(range(deep))
    wide = make(1)
    kids = [make(i, wide) for i in range(2, 5002)]
    tasks = {t.id: t for t in [wide, *kids]}
    out = walk(tasks, [tasks.get(i) for i in range(1, 5002)], children_in([]))
    first = [next(out) for _ in range(3)]     # lazily: nothing of the rest is made yet
    assert [r["id"] for r in first] == [1, 2, 3]
    rest = [r for r in out if r is not None]
    assert [r["id"] for r in rest] == list(range(4, 5002))
