"""Tests of cosched.task: what a job may do through its task object.

Processes here are real (``sh`` and ``sleep``); waits are bounded by trio.fail_after.
"""

import os
import signal
import subprocess

import psutil
import pytest
import trio

from cosched.task import Shared, TaskContext, TaskFailed, end_processes


def run(afn, *args):
    async def bounded():
        with trio.fail_after(30):
            return await afn(*args)

    return trio.run(bounded)


def ctx(**kw) -> TaskContext:
    return TaskContext("job-1", 1, None, {}, **kw)


def gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped yet counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def read_pids(stream, count: int) -> list[int]:
    data = b""
    while data.count(b"\n") < count:
        chunk = await stream.receive_some()
        assert chunk, f"the command ended before printing {count} pids: {data!r}"
        data += chunk
    return [int(x) for x in data.split()]


async def cancelled_tree(script: str, count: int, grace: float) -> tuple[list[int], int]:
    """Run `sh -c script` (which prints `count` pids) via run_process, cancel it once
    they are printed; return the pids and the shell's own pid."""
    r, w = os.pipe()
    shell: list[int] = []

    async def job(task_status=trio.TASK_STATUS_IGNORED):
        await ctx().run_process(["sh", "-c", script], stdout=w, grace=grace, check=False)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(job)
        async with trio.lowlevel.FdStream(r) as stream:
            pids = await read_pids(stream, count)
        os.close(w)
        shell += [psutil.Process(pids[0]).ppid()]
        nursery.cancel_scope.cancel()
    return pids, shell[0]


def test_run_process_returns_the_completed_process():
    async def main():
        return await ctx().run_process(["sh", "-c", "echo hi; exit 3"], capture_stdout=True,
                                       check=False)

    done = run(main)
    assert (done.returncode, done.stdout) == (3, b"hi\n")


def test_run_process_raises_like_trio_on_failure():
    async def main():
        await ctx().run_process(["sh", "-c", "exit 4"])

    with pytest.raises(subprocess.CalledProcessError) as info:
        run(main)
    assert info.value.returncode == 4


def test_cancelled_run_process_ends_the_processes_the_command_started():
    # trio alone would SIGTERM the shell only; its two background sleeps would live on.
    script = "sleep 60 & echo $!; sleep 60 & echo $!; wait"
    pids, shell = run(cancelled_tree, script, 2, 5.0)
    assert len(pids) == 2
    assert all(gone(p) for p in [*pids, shell]), [(p, gone(p)) for p in pids]


def test_descendants_that_ignore_sigterm_are_killed_after_the_grace_period():
    # The child traps TERM and keeps sleeping; the shell exits at once on TERM.
    script = "sh -c 'trap \"\" TERM; echo $$; while :; do sleep 1; done' & wait"
    pids, _ = run(cancelled_tree, script, 1, 0.5)
    assert gone(pids[0])


def test_end_processes_terminates_and_waits_without_a_grace_period_when_they_exit():
    async def main():
        procs = [await trio.lowlevel.open_process(["sleep", "60"]) for _ in range(3)]
        targets = [psutil.Process(p.pid) for p in procs]
        with trio.fail_after(4):  # well under the grace period: SIGTERM sufficed
            await end_processes(targets, grace=20)
        return [await p.wait() for p in procs]

    assert run(main) == [-signal.SIGTERM] * 3


def test_end_processes_ignores_processes_that_are_already_gone():
    async def main():
        proc = await trio.lowlevel.open_process(["true"])
        target = psutil.Process(proc.pid)
        await proc.wait()
        await end_processes([target], grace=20)

    run(main)


def test_join_reports_failure():
    async def main():
        t = ctx()
        t._finish("failed", "ValueError: x")
        with pytest.raises(TaskFailed, match="job-1 .#1. failed: ValueError: x"):
            await t.join()

    run(main)


def test_state_is_one_dict_made_on_first_use_or_the_one_given():
    task = ctx()
    assert task._state is None             # a task that never uses its state holds no dict
    task.state["n"] = 1
    assert task.state == {"n": 1} and task.state is task._state
    given = {"kept": True}
    assert ctx(state=given).state is given
    task.state = {"replaced": 1}
    assert task.state == {"replaced": 1}


def test_a_child_s_implied_name_is_derived_from_its_parent_s_and_holds_no_string():
    parent = ctx()
    child = TaskContext(parent, 7, None, {})
    grandchild = TaskContext(child, 9, None, {})
    assert (child.name, grandchild.name) == ("job-1.7", "job-1.7.9")
    assert type(child._name) is TaskContext and child._name is parent


def test_what_few_tasks_have_is_made_only_when_set_and_services_are_shared():
    shared = Shared()
    plain = TaskContext("a", 1, None, {}, shared=shared)
    other = TaskContext("b", 2, None, {}, shared=shared)
    assert plain._more is None and (plain.trigger, plain.restored, plain._key) == (None, False, None)
    assert plain._shared is other._shared
    hooked = TaskContext("c", 3, None, {}, trigger={"task": "x"}, restored=True, key="c")
    assert (hooked.trigger, hooked.restored, hooked._key) == ({"task": "x"}, True, "c")
    plain._finish("finished", 42)
    assert run(plain.join) == 42 and other._more is None


def test_a_child_s_context_made_without_keywords_is_the_one_the_constructor_makes():
    from cosched.task import Shared, TaskContext
    shared = Shared()
    parent = TaskContext("job", 1, lambda name, tid: (name, tid), {"k": 1}, shared=shared)
    made = TaskContext(parent, 7, parent._log, parent.config, shared=shared)
    quick = TaskContext.child_of(parent, 7, parent._log, parent.config, shared)
    for ctx in (made, quick):
        assert (ctx.name, ctx.id, ctx.config, ctx._shared) == ("job.7", 7, {"k": 1}, shared)
        assert (ctx.trigger, ctx.restored, ctx._key, ctx.state) == (None, False, None, {})
    assert {s: getattr(quick, s) for s in TaskContext.__slots__ if s != "_state"} == \
        {s: getattr(made, s) for s in TaskContext.__slots__ if s != "_state"}
