"""cosched.cancels: one trio task cancelled through a scope spliced in when the kill comes.

Real trio tasks in a real nursery; each test checks what a scope around the whole
task would have done (or, for `go_home`, that the task is free again afterwards).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import trio
import trio.testing

from cosched import cancels

pytestmark = pytest.mark.skipif(not cancels.SPLICE, reason="this trio has no internals to splice")


def only_cancelled(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(only_cancelled(e) for e in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


class Victim:
    """A trio task that runs ``body`` and records how it ended; it leaves a kill's
    scope at its root, as the supervisor does."""

    def __init__(self, body):
        self.body = body
        self.task = None
        self.ended: str | None = None
        self.after: str | None = None
        self.scope: trio.CancelScope | None = None
        self.started = trio.Event()

    async def run(self) -> None:
        self.task = trio.lowlevel.current_task()
        self.started.set()
        try:
            await self.body(self)
            self.ended = "returned"
        except BaseException as exc:   # a nursery inside gathers them in a group
            if not only_cancelled(exc):
                raise
            self.ended = "cancelled"
            assert trio.current_effective_deadline() == -math.inf
            if self.scope is not None:
                cancels.go_home(self.task, self.scope)
        self.after = "free" if trio.current_effective_deadline() == math.inf else "cancelled"

    def kill(self) -> None:
        self.scope = cancels.cancel_task(self.task)


async def run(*victims: Victim, then=None) -> None:
    """Start the victims in a nursery; once all are blocked, ``then(nursery)``; return
    when every victim has ended."""
    async with trio.open_nursery() as n:
        for v in victims:
            n.start_soon(v.run)
            await v.started.wait()
        await trio.testing.wait_all_tasks_blocked()
        if then is not None:
            await then(n)


def kill(victim: Victim):
    async def then(n):
        victim.kill()
    return then


async def sleeps(v: Victim) -> None:
    await trio.sleep(3600)


def test_a_task_asleep_in_its_own_scope_is_cancelled_and_its_sibling_is_not():
    async def main():
        victim, sibling = Victim(sleeps), Victim(sleeps)

        async def then(n):
            victim.kill()
            await trio.testing.wait_all_tasks_blocked()
            assert (victim.ended, victim.after) == ("cancelled", "free")
            assert sibling.ended is None   # still asleep
            n.cancel_scope.cancel()

        await run(victim, sibling, then=then)
        assert sibling.ended == "cancelled"

    trio.run(main)


def test_a_task_parked_with_no_scope_of_its_own_is_cancelled():
    event = trio.Event()

    async def waits(v):
        await event.wait()   # a parking lot: the task sits in its nursery's status

    async def main():
        victim = Victim(waits)
        await run(victim, then=kill(victim))
        assert (victim.ended, victim.after) == ("cancelled", "free")

    trio.run(main)


def test_the_cancellation_is_level_triggered_until_the_task_leaves():
    seen = []

    async def stubborn(v):
        for _ in range(3):
            try:
                await trio.sleep(3600)
            except trio.Cancelled:
                seen.append("cancelled")
        await trio.sleep(0)

    async def main():
        victim = Victim(stubborn)
        await run(victim, then=kill(victim))
        assert seen == ["cancelled"] * 3
        assert (victim.ended, victim.after) == ("cancelled", "free")

    trio.run(main)


def test_a_shielded_scope_finishes_before_the_cancellation_arrives():
    steps = []
    release = trio.Event()

    async def cleanup(v):
        with trio.CancelScope(shield=True):
            await release.wait()
            steps.append("shielded part done")
        steps.append("after the shield")
        await trio.sleep(3600)

    async def main():
        victim = Victim(cleanup)

        async def then(n):
            victim.kill()
            await trio.testing.wait_all_tasks_blocked()
            assert victim.ended is None and steps == []   # the shield holds
            release.set()

        await run(victim, then=then)
        assert steps == ["shielded part done", "after the shield"]
        assert (victim.ended, victim.after) == ("cancelled", "free")

    trio.run(main)


def test_trio_tasks_started_in_the_tasks_own_nursery_are_cancelled_with_it():
    children = []

    async def child():
        try:
            await trio.sleep(3600)
        except trio.Cancelled:
            children.append("cancelled")
            raise

    async def parent(v):
        with trio.move_on_after(3600):   # scopes between the nursery and the task
            async with trio.open_nursery() as n:
                n.start_soon(child)
                n.start_soon(child)
                await trio.sleep(3600)

    async def main():
        victim = Victim(parent)
        await run(victim, then=kill(victim))
        assert children == ["cancelled", "cancelled"]
        assert (victim.ended, victim.after) == ("cancelled", "free")

    trio.run(main)


def test_a_task_that_kills_itself_is_cancelled_at_its_next_checkpoint():
    steps = []

    async def self_kill(v):
        v.kill()
        steps.append("still running")
        await trio.sleep(0)
        steps.append("never")

    async def main():
        victim = Victim(self_kill)
        await run(victim)
        assert steps == ["still running"]
        assert (victim.ended, victim.after) == ("cancelled", "free")

    trio.run(main)


def test_a_task_leaving_a_kill_while_its_nursery_is_cancelled_stays_cancelled():
    async def main():
        victim = Victim(sleeps)

        async def then(n):
            victim.kill()
            outer.cancel()   # the daemon stopping at the same time

        with trio.CancelScope() as outer:
            await run(victim, then=then)
        assert (victim.ended, victim.after) == ("cancelled", "cancelled")

    trio.run(main)


def test_a_kill_swallowed_by_the_task_leaves_its_scope_when_it_leaves():
    async def swallows(v):
        try:
            await trio.sleep(3600)
        except trio.Cancelled:
            pass
        assert not cancels.go_home(v.task, v.scope)
        assert not cancels.go_home(v.task, None)   # a second time: nothing to do
        await trio.sleep(0)   # free again: no Cancelled

    async def main():
        victim = Victim(swallows)
        await run(victim, then=kill(victim))
        assert (victim.ended, victim.after) == ("returned", "free")

    trio.run(main)


@pytest.mark.parametrize("cancelled", [False, True])
def test_scopes_a_task_entered_by_hand_and_never_left_are_closed_at_its_root(cancelled):
    seen = []

    async def leaks(v):
        scope = trio.CancelScope(deadline=trio.current_time() + 3600).__enter__()
        if cancelled:
            scope.cancel()
            try:
                await trio.sleep(3600)
            except trio.Cancelled:
                seen.append("cancelled by its own scope")
        seen.append(trio.current_effective_deadline() < math.inf)   # under its deadline
        seen.append(cancels.go_home(v.task, None))                   # left open: closed
        seen.append(trio.current_effective_deadline() == math.inf)  # free of it
        await trio.sleep(0)

    async def main():
        victim = Victim(leaks)
        await run(victim)
        assert victim.ended == "returned"

    trio.run(main)
    assert seen == ["cancelled by its own scope"] * cancelled + [True, True, True]


def test_without_the_internals_the_supervisor_gives_each_life_a_scope_and_kills_still_work():
    """COSCHED_SCOPE_PER_TASK turns the splice off (as a trio without the internals
    would): kills go through a real scope per life, end to end."""
    env = {**os.environ, "COSCHED_SCOPE_PER_TASK": "1"}
    probe = subprocess.run([sys.executable, "-c", "from cosched import cancels; print(cancels.SPLICE)"],
                           env=env, capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "False"
    tests = os.path.join(os.path.dirname(__file__), "test_daemon.py")
    ran = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
                          tests, "-k", "kill_running or kill_suspended or kill_ends"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert ran.stdout.splitlines()[-1].startswith("3 passed"), ran.stdout[-2000:]
