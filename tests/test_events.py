"""Lifecycle events, from a real Supervisor running real job files in trio."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent
from types import SimpleNamespace

import trio

from cosched.config import load_config
from cosched.events import Events
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
