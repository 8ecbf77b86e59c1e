"""Lifecycle events, from a real Supervisor running real job files in trio."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent
from types import SimpleNamespace

import trio

from cosched.config import load_config
from cosched.events import Events, task_event
from cosched.supervisor import Supervisor

ASKER = """
    from cosched import coro

    async def main(task):
        answer = await coro.yield_("name?")
        if answer == "boom":
            raise ValueError("boom")
        return answer
"""


def make_supervisor(tmp_path: Path, jobs: dict[str, str], extra: str = "") -> Supervisor:
    (tmp_path / "jobs").mkdir()
    for name, source in jobs.items():
        (tmp_path / "jobs" / f"{name}.py").write_text(dedent(source))
    (tmp_path / "c.toml").write_text('[daemon]\njobs_dir = "jobs"\nruntime_dir = "run"\n'
                                     '[jobs]\nrestart = "on-failure"\nrestart_delay = 0\n' + extra)
    return Supervisor(load_config(tmp_path / "c.toml"))


def drive(sup: Supervisor, scenario) -> None:
    """Run the supervisor, and scenario() beside it within 10 s."""
    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            with trio.fail_after(10):
                await scenario()
            nursery.cancel_scope.cancel()

    trio.run(main)


async def until(predicate) -> None:
    while not predicate():
        await trio.sleep(0.01)


def test_a_tasks_life_is_announced_in_order(tmp_path):
    sup = make_supervisor(tmp_path, {"asker": ASKER})
    seen: list[dict] = []
    sup.events.subscribe(seen.append)

    async def scenario():
        await until(lambda: any(e["event"] == "suspended" for e in seen))
        await sup.resume("asker", ["boom"], 5)          # fails, restarts, asks again
        await until(lambda: sum(e["event"] == "suspended" for e in seen) >= 2)
        await sup.resume("asker", ["Ada"], 5)

    drive(sup, scenario)
    kinds = [e["event"] for e in seen]
    assert kinds == ["job-loaded", "started", "suspended", "resumed", "failed", "restarting",
                     "started", "suspended", "resumed", "finished"], kinds
    failed = seen[kinds.index("failed")]
    assert failed["error"] == "ValueError: boom" and failed["job"] == "asker"
    assert seen[kinds.index("suspended")]["values"] == ["name?"]
    assert seen[-1]["result"] == "Ada"
    assert all(isinstance(e["time"], float) for e in seen)


def test_a_failing_listener_is_dropped_and_others_still_hear():
    events = Events()
    heard: list[dict] = []

    def broken(event):
        raise RuntimeError("listener bug")

    events.subscribe(broken)
    events.subscribe(heard.append)
    events.job("job-loaded", "a")
    events.job("job-loaded", "b")
    assert [e["job"] for e in heard] == ["a", "b"]
    assert bool(events)
    unsubscribe = events.subscribe(heard.append)
    unsubscribe()
    events.job("job-removed", "a")
    assert len(heard) == 3


def test_a_listener_hears_only_the_kinds_of_events_it_subscribed_to():
    events = Events()
    jobs_only: list[dict] = []
    tasks_only: list[dict] = []
    both: list[dict] = []
    events.subscribe(jobs_only.append, tasks=False)
    events.subscribe(tasks_only.append, jobs=False)
    unsubscribe = events.subscribe(both.append)
    task = SimpleNamespace(name="t", id=1, job=SimpleNamespace(name="a"), state="running")
    events.task("started", task)
    events.job("job-loaded", "a")
    assert [e["event"] for e in jobs_only] == ["job-loaded"]
    assert [e["event"] for e in tasks_only] == ["started"]
    assert [e["event"] for e in both] == ["started", "job-loaded"]
    unsubscribe()   # from both kinds
    events.task("finished", task)
    events.job("job-removed", "a")
    assert len(both) == 2 and len(jobs_only) == 2 and len(tasks_only) == 2


class CountedName:
    """A task whose name is counted each time it is made."""

    def __init__(self):
        self.id, self.job, self.state, self.made = 7, SimpleNamespace(name="a"), "running", 0

    @property
    def name(self):
        self.made += 1
        return "a.7"


def test_a_watcher_hears_task_events_as_they_are_made_and_no_dict_is_made_for_it():
    events = Events()
    watched: list[tuple] = []
    task = CountedName()
    stop = events.watch_tasks(lambda *event: watched.append(event))
    assert bool(events)
    events.job("job-loaded", "a")   # job events are not a watcher's
    events.task("started", task, restarts=0)
    assert len(watched) == 1 and task.made == 0   # no dict, no name, for a watcher
    when, kind, t, fields = watched[0]
    assert isinstance(when, float) and (kind, t, fields) == ("started", task, {"restarts": 0})
    heard: list[dict] = []
    events.subscribe(heard.append)
    events.task("killed", task, error="x")
    assert heard == [{"time": watched[1][0], "event": "killed", "task": "a.7", "id": 7,
                      "job": "a", "state": "running", "error": "x"}]
    assert heard[0] == task_event(*watched[1])
    stop()
    events.task("finished", task)
    assert len(watched) == 2 and len(heard) == 2


def test_listen_takes_job_events_as_dicts_and_task_events_undressed_until_removed():
    events = Events()
    jobs, tasks = [], []
    stop = events.listen(jobs.append, lambda *event: tasks.append(event[1]))
    task = SimpleNamespace(name="t", id=1, job=SimpleNamespace(name="a"), state="running")
    events.task("started", task)
    events.job("job-loaded", "a")
    assert tasks == ["started"] and [e["event"] for e in jobs] == ["job-loaded"]
    stop()
    events.task("finished", task)
    events.job("job-removed", "a")
    assert tasks == ["started"] and len(jobs) == 1 and not events


def test_a_failing_watcher_is_dropped_and_the_others_still_hear():
    events = Events()
    watched, heard = [], []

    def broken(*event):
        raise RuntimeError("watcher bug")

    events.watch_tasks(broken)
    events.watch_tasks(lambda *event: watched.append(event[1]))
    events.subscribe(heard.append)
    task = SimpleNamespace(name="t", id=1, job=SimpleNamespace(name="a"), state="running")
    events.task("started", task)
    events.task("finished", task)
    assert watched == ["started", "finished"]
    assert [e["event"] for e in heard] == ["started", "finished"]
    assert events._watchers == (events._watchers[0],)   # broken went at its first failure


def test_a_stop_is_announced_before_the_tasks_it_kills(tmp_path):
    sup = make_supervisor(tmp_path, {"asker": ASKER})
    seen: list[dict] = []
    sup.events.subscribe(seen.append)

    async def scenario():
        await until(lambda: any(e["event"] == "suspended" for e in seen))
        assert await sup.stop(5) == []

    drive(sup, scenario)
    kinds = [e["event"] for e in seen]
    assert kinds[-2:] == ["stopping", "killed"], kinds
    assert seen[-1]["traceback"] is None and seen[-1]["error"] is None


def test_first_starts_reach_watchers_in_a_batch_before_any_other_event():
    """A first start is held back: a watcher with a batch function hears the batch once
    (times and tasks, in order), one without hears each; any other event, task or job,
    is heard after them; listeners of dicts hear each at once."""
    events = Events()
    batches, one_by_one = [], []
    events.watch_tasks(lambda *e: batches.append(("event", e[1], e[2].id)),
                       lambda times, tasks: batches.append(
                           ("batch", [t.id for t in tasks], times)))
    events.watch_tasks(lambda *e: one_by_one.append((e[1], e[2].id, e[3])))
    tasks = [SimpleNamespace(name=f"a.{i}", id=i, job=SimpleNamespace(name="a"),
                             state="running") for i in (1, 2, 3)]
    for t in tasks[:2]:
        events.started(t)
    assert batches == [] and one_by_one == []   # held back
    events.task("suspended", tasks[0], values=[1])   # flushes first
    events.started(tasks[2])
    events.job("job-removed", "a")                   # as does a job event
    assert [b[:2] for b in batches] == [("batch", [1, 2]), ("event", "suspended"),
                                        ("batch", [3])]
    times = batches[0][2]
    assert len(times) == 2 and times[0] <= times[1] <= batches[2][2][0]
    assert one_by_one == [("started", 1, {"restarts": 0}), ("started", 2, {"restarts": 0}),
                          ("suspended", 1, {"values": [1]}), ("started", 3, {"restarts": 0})]
    heard: list[dict] = []
    events.subscribe(heard.append)
    events.started(tasks[0])   # a listener of dicts: heard at once, by everyone
    assert [e["event"] for e in heard] == ["started"] and heard[0]["restarts"] == 0
    assert one_by_one[-1] == ("started", 1, {"restarts": 0})


def test_first_starts_are_heard_at_the_loops_next_turn_and_on_flush():
    """In trio, the first start held back asks for a callback at the loop's next turn:
    the starts are heard without any other event; a failing batch watcher is dropped
    and the others still hear."""
    events = Events()
    heard: list[int] = []

    def broken(times, tasks):
        raise RuntimeError("watcher bug")

    events.watch_tasks(lambda *e: None, broken)
    events.watch_tasks(lambda *e: None, lambda times, tasks: heard.extend(t.id for t in tasks))
    task = SimpleNamespace(name="a.1", id=1, job=SimpleNamespace(name="a"), state="running")

    async def main():
        events.started(task)
        events.started(task)
        assert heard == []
        with trio.fail_after(5):
            while not heard:
                await trio.sleep(0)
        assert heard == [1, 1]
        events.started(task)
        events.flush()
        assert heard == [1, 1, 1] and len(events._watchers) == 1

    trio.run(main)
