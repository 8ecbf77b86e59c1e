"""The task registry: unique names in O(1) amortised, pruning of ended tasks and children."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import trio

from cosched.protocol import ControlError
from cosched.registry import ENDED_KEPT, Registry, Task

JOB = SimpleNamespace(name="job")


def make(reg: Registry, base: str = "worker", parent: Task | None = None) -> Task:
    t = Task(reg.new_id(), reg.free_name(base), JOB, None, None, (), parent)
    reg.add(t)
    return t


def end(reg: Registry, t: Task) -> None:
    t.state = "finished"
    reg.retire(t)


def test_names_are_unique_among_alive_tasks():
    async def run():
        reg = Registry()
        a, b, c = make(reg), make(reg), make(reg)
        assert [a.name, b.name, c.name] == ["worker", "worker.2", "worker.3"]
        end(reg, a)
        assert make(reg).name == "worker"        # the base name is free again
        assert make(reg).name == "worker.4"
        assert reg.find("worker.2") is b
        assert reg.find(str(c.id)) is c
        assert reg.find(c.id) is c
        with pytest.raises(ControlError):
            reg.find("²")                        # a digit, but not an ASCII one
        with pytest.raises(ControlError):
            reg.find("9" * 5000)                 # would exceed int()'s digit limit
    trio.run(run)


def test_a_child_named_by_its_id_is_found_without_a_name_entry_and_its_name_stays_taken():
    async def run():
        reg = Registry()
        parent = make(reg, "job")
        tid = reg.new_id()
        assert reg.free_name(f"job.{tid}") == "job.2"
        child = Task(tid, None, JOB, None, None, (), parent)   # None: the name its id implies
        reg.add(child)
        assert child.name == "job.2" and "job.2" not in reg._live and child._name is None
        assert reg.find("job.2") is child
        assert make(reg, "job").name == "job.3"        # a second root skips the child's name
        assert make(reg, "job.2").name == "job.2.2"    # so does an explicit name
        end(reg, child)
        assert reg.find("job.2") is child              # ended: the newest of that name
        assert make(reg, "job.2").name == "job.2"      # and the name is free again
        assert reg.find("job.2").id != child.id
    trio.run(run)


def test_the_name_a_new_id_implies_is_free_unless_a_live_task_took_it_explicitly():
    async def run():
        reg = Registry()
        parent = make(reg, "job")
        taken = make(reg, "job.3")                     # explicitly, before id 3 exists
        tid = reg.new_id()
        assert tid == 3 and reg.free_implied("job.3") == "job.3.2"
        assert reg.free_implied("job.4") == "job.4"
        end(reg, taken)
        assert reg.free_implied("job.3") == "job.3"    # an ended task holds no name
        assert parent.name == "job"
    trio.run(run)


def test_a_job_s_roots_and_alive_count_are_kept_without_walking_its_children():
    async def run():
        reg = Registry()
        root = make(reg, "job")
        kids = [make(reg, "kid", root) for _ in range(3)]
        other = Task(reg.new_id(), reg.free_name("x"), SimpleNamespace(name="other"), None,
                     None, (), None)
        reg.add(other)
        assert reg.roots_of("job") == [root] and reg.count_alive_of("job") == 4
        class Untouchable(dict):   # every task: roots_of must not walk them
            def values(self):
                raise AssertionError("walked every task")
            items = keys = __iter__ = values
        reg.tasks = Untouchable(reg.tasks)
        assert reg.roots_of("job") == [root]
        end(reg, kids[0])
        assert reg.count_alive_of("job") == 3 and reg.roots_of("job") == [root]
        end(reg, root)
        assert reg.roots_of("job") == [] and reg.count_alive_of("job") == 2
        for kid in kids[1:]:
            end(reg, kid)
        assert reg.count_alive_of("job") == 0 and "job" not in reg._alive
        assert reg.roots_of("other") == [other] and reg.count_alive_of("nosuch") == 0
    trio.run(run)


class CountingDict(dict):
    probes = 0

    def __contains__(self, key):
        CountingDict.probes += 1
        return super().__contains__(key)


def test_free_name_is_amortised_constant():
    async def run():
        reg = Registry()
        reg._live = CountingDict()
        for _ in range(2_000):
            make(reg)
        return CountingDict.probes
    # A linear search from suffix 2 would probe about 2,000,000 times.
    assert trio.run(run) <= 3 * 2_000


def test_ended_tasks_are_forgotten_beyond_the_bound_and_pruned_from_parents():
    async def run():
        reg = Registry()
        parent = make(reg, "parent")
        kids = [make(reg, "kid", parent) for _ in range(ENDED_KEPT + 10)]
        for k in kids[:-1]:
            end(reg, k)
        assert list(parent.children) == [kids[-1].id]
        assert len(reg.tasks) == ENDED_KEPT + 2   # the parent, the alive kid, ENDED_KEPT ended
        assert kids[0].id not in reg.tasks
    trio.run(run)


def test_matching_is_in_id_order_and_takes_each_task_as_it_is_when_taken():
    reg = Registry()
    tasks = [make(reg) for _ in range(6)]
    for t in reversed(tasks):          # the suspended index fills in reverse id order
        t.state = "suspended"
    assert [t.id for t in reg.matching(state="suspended")] == [t.id for t in tasks]
    taken = reg.matching(state="suspended")
    first = next(taken)
    tasks[1].state = "running"         # changed after the call, before it is taken
    end(reg, tasks[2])
    assert [first.id] + [t.id for t in taken] == [tasks[0].id] + [t.id for t in tasks[3:]]


def test_a_state_s_index_that_empties_lets_go_of_its_table():
    reg = Registry()
    tasks = [make(reg) for _ in range(5000)]   # all "starting" at once, as in a burst
    grown = sys.getsizeof(reg.by_state["starting"])
    for t in tasks:
        t.state = "running"
    assert not reg.by_state["starting"]
    assert sys.getsizeof(reg.by_state["starting"]) < grown // 50
    assert [t.id for t in reg.matching(state="running")] == [t.id for t in tasks]
    late = make(reg)   # the fresh index takes new tasks
    assert list(reg.matching(state="starting")) == [late]


def test_matching_by_job_and_state_uses_the_smaller_index():
    reg = Registry()
    other = SimpleNamespace(name="other")
    mine = [make(reg) for _ in range(3)]
    theirs = Task(reg.new_id(), reg.free_name("x"), other, None, None, (), None)
    reg.add(theirs)
    theirs.state = mine[1].state = "suspended"
    assert list(reg.matching(job="job", state="suspended")) == [mine[1]]
    assert list(reg.matching(job="other")) == [theirs]
    assert list(reg.matching(job="nobody")) == []
    assert list(reg.matching()) == [*mine, theirs]
    assert list(reg.matching(state="killed")) == []


def test_all_tasks_in_id_order_dense_or_sparse_and_not_those_added_meanwhile():
    reg = Registry()
    tasks = [make(reg) for _ in range(10)]
    end(reg, tasks[3])
    del reg.tasks[tasks[5].id]             # a gap, as pruning leaves
    listed = reg.matching()                 # dense: the ids are walked
    first = next(listed)
    late = make(reg)                        # added after the call: not taken
    assert [first.id] + [t.id for t in listed] == [t.id for t in tasks if t is not tasks[5]]
    for _ in range(3 * ENDED_KEPT):         # ended tasks forgotten: more ids than tasks, sparse
        end(reg, make(reg, "churn"))
    assert reg.next_id - next(iter(reg.tasks)) > 2 * len(reg.tasks)
    assert [t.id for t in reg.matching()] == sorted(reg.tasks) and late in reg.matching()


def test_scan_marks_each_task_looked_at_and_not_taken():
    """So a caller bounds its work by what it looked at: running and waiting tasks share
    an index, and a filter may find nothing among many."""
    reg = Registry()
    tasks = [make(reg) for _ in range(5)]
    for t in tasks:
        t.state = "running"                 # shown "running": not in the event loop
    assert list(reg.scan(state="waiting")) == [None] * 5
    scan = reg.scan(state="running")
    assert next(scan) is tasks[0]
    tasks[2].state = "suspended"            # changed after the look began
    assert list(scan) == [tasks[1], None, tasks[3], tasks[4]]
    del reg.tasks[tasks[1].id]              # a gap in the ids: looked at, nothing there
    assert list(reg.scan()) == [tasks[0], None, tasks[2], tasks[3], tasks[4]]


def test_a_filter_matching_more_than_at_once_walks_the_tasks_instead_of_copying(monkeypatch):
    from cosched import registry

    class Uncopyable(dict):
        def __iter__(self):
            raise AssertionError("the index was copied")
        values = items = __iter__
    monkeypatch.setattr(registry, "AT_ONCE", 3)
    reg = Registry()
    other = SimpleNamespace(name="other")
    tasks = [make(reg) for _ in range(6)]
    stranger = Task(reg.new_id(), reg.free_name("x"), other, None, None, (), None)
    reg.add(stranger)
    for t in [*tasks[:5], stranger]:
        t.state = "suspended"
    reg.by_state["suspended"] = Uncopyable(reg.by_state["suspended"])
    reg._roots["job"] = Uncopyable(reg._roots["job"])   # where a job's tasks are found from
    assert list(reg.scan(state="suspended")) == [*tasks[:5], None, stranger]
    assert list(reg.matching(job="job")) == tasks
    assert list(reg.matching(job="job", state="suspended")) == tasks[:5]
    assert list(reg.matching(job="other")) == [stranger]   # a small index: copied


def test_rare_fields_read_their_defaults_until_one_is_set_and_then_keep_every_value():
    reg = Registry()
    t = make(reg, "t")
    assert (t.restarts, t.starts, t.switches, t.result, t.error, t.traceback, t.scope,
            t.abandoned, t.kill_requested, t.done, t.children) == \
        (0, None, 0, None, None, None, None, False, False, False, {})
    t.error = t.traceback = t.result = None   # what each life's start assigns
    t.restarts = 0
    assert t._rare is None, "a default assigned made the record"
    t.restarts += 1
    t.error = "boom"
    assert t._rare is not None
    assert (t.restarts, t.error, t.result, t.abandoned) == (1, "boom", None, False)
    t.error = None
    assert t.error is None and t.restarts == 1
    other = make(reg, "other")
    assert other.error is None and other._rare is None   # one record per task, not shared
    child = make(reg, "child", parent=other)
    assert other.children == {child.id: child} and child._rare is None


def test_a_job_s_tasks_are_found_through_its_top_level_tasks_and_their_children(monkeypatch):
    from cosched import registry
    reg = Registry()
    other = SimpleNamespace(name="other")

    def stranger():
        t = Task(reg.new_id(), reg.free_name("x"), other, None, None, (), None)
        reg.add(t)
        return t
    strangers = [stranger() for _ in range(5)]
    root = make(reg, "job")
    kid = make(reg, "kid", root)
    strangers.append(stranger())
    grandkid = make(reg, "grandkid", kid)
    ended_kid = make(reg, "kid", root)
    end(reg, ended_kid)
    root2 = make(reg, "job")
    kid2 = make(reg, "kid", root2)
    end(reg, root2)   # its child is alive until it ends too
    ours = [root, kid, grandkid, ended_kid, root2, kid2]
    assert list(reg.scan(job="job")) == ours   # in id order; no other task looked at
    assert list(reg.matching(job="job", state="finished")) == [ended_kid, root2]
    assert list(reg.matching(job="other")) == strangers
    assert reg.count_listed_of("job") == 6 and reg.count_listed_of("nosuch") == 0
    assert list(reg.scan(job="nosuch")) == []
    monkeypatch.setattr(registry, "ENDED_KEPT", 1)
    end(reg, stranger())   # root2 and ended_kid are forgotten; kid2 is still alive
    assert reg.count_listed_of("job") == 4
    assert list(reg.matching(job="job")) == [root, kid, grandkid, kid2]   # every task walked
    for t in (kid2, grandkid, kid, root):
        end(reg, t)
    assert list(reg.matching(job="job")) == [root] and reg.count_listed_of("job") == 1


def test_a_job_s_ids_are_copied_from_its_parents_tables_without_looking_at_each_child():
    class Leaf(Task):   # a task that spawned nothing: nothing of it is read for its job's ids
        __slots__ = ()
        locked = False

        def _look(self, what):
            if Leaf.locked:
                raise AssertionError(f"a child was looked at ({what})")

        @property
        def alive(self):
            self._look("alive")
            return Task.alive.fget(self)

        @property
        def children(self):
            self._look("children")
            return Task.children.fget(self)

        @property
        def _children(self):
            self._look("_children")
            return Task._children.fget(self)

        @_children.setter
        def _children(self, value):
            Task._children.fset(self, value)

    reg = Registry()
    root = make(reg, "job")
    kids = [Task(reg.new_id(), None, JOB, None, None, (), root)]
    kids += [Leaf(reg.new_id(), None, JOB, None, None, (), root) for _ in range(50)]
    grandkids = [Leaf(reg.new_id(), None, JOB, None, None, (), kids[0]) for _ in range(5)]
    for t in kids + grandkids:
        reg.add(t)
    Leaf.locked = True
    try:
        assert reg._of_job("job") == [root.id] + [t.id for t in kids + grandkids]
    finally:
        Leaf.locked = False
