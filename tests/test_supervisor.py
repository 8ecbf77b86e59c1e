"""Fault containment, end to end: whatever a job raises, returns or yields ends that task only.

Each test runs a real coschedd with a misbehaving job beside a well-behaved
"bystander", and checks that the daemon still answers, the bystander is the
same task still waiting, and the offender's state and error say what happened.
"""

from __future__ import annotations

import signal
import time

import psutil
import pytest

from test_daemon import LIVE, SLEEPER, WAIT, by_id, daemon, newest, write_job  # noqa: F401

NO_RESTART = {"jobs": {"restart": "no"}}


def bystander_ok(d, before: dict) -> None:
    """The daemon answers and the bystander is the same task, still waiting."""
    now = newest(d.status(), "bystander")
    assert now["id"] == before["id"], now
    assert now["state"] == "waiting", now
    assert d.proc.poll() is None


def start_with_bystander(daemon, jobs: dict, config: dict | None = None):
    d = daemon(jobs={"bystander": SLEEPER, **jobs}, config=config or NO_RESTART)
    by = d.wait_task("bystander", lambda t: t["state"] == "waiting", "waiting")
    return d, by


RAISERS = {
    "sysexit": ("raise SystemExit(3)", "SystemExit: 3"),
    "sys_exit": ("import sys; sys.exit('bye')", "SystemExit: bye"),
    "keyboard": ("raise KeyboardInterrupt('ki')", "KeyboardInterrupt: ki"),
    "genexit": ("raise GeneratorExit('ge')", "GeneratorExit: ge"),
    "custom": ("raise Custom('mine')", "Custom: mine"),
    "group": ("raise BaseExceptionGroup('grp', [KeyboardInterrupt('a'), ValueError('b')])",
              "BaseExceptionGroup: grp (2 sub-exceptions)"),
    "cancelled": ("raise trio.Cancelled._create()", "the job raised trio.Cancelled"),
}


def raiser(statement: str) -> str:
    return f"""
        import trio

        class Custom(BaseException):
            pass

        async def main(task):
            await trio.sleep(0.05)
            {statement}
    """


@pytest.mark.parametrize("kind", sorted(RAISERS))
def test_any_base_exception_from_a_body_fails_only_that_task(daemon, kind):
    statement, error = RAISERS[kind]
    d, by = start_with_bystander(daemon, {"bad": raiser(statement)})
    bad = d.wait_task("bad", lambda t: t["state"] not in LIVE | {"starting"}, "ended")
    assert bad["state"] == "failed", bad
    assert error in bad["error"], bad
    bystander_ok(d, by)
    shown = d.ok("show", "bad")
    assert "Traceback" in shown["traceback"]
    # The daemon still starts jobs afterwards.
    assert d.ok("start", "bystander")["task"]["job"] == "bystander"


def test_a_failing_spawned_child_fails_only_itself(daemon):
    source = """
        import trio

        async def child(task):
            raise SystemExit("child exits")

        async def main(task):
            c = task.spawn(child, name="kid")
            try:
                await c.join()
            except Exception as e:
                return f"parent saw: {e}"
    """
    d, by = start_with_bystander(daemon, {"parent": source})
    parent = d.wait_task("parent", lambda t: t["state"] == "finished", "finished")
    kid = newest(d.status(), "kid")
    assert kid["state"] == "failed" and kid["error"] == "SystemExit: child exits", kid
    assert "SystemExit: child exits" in d.ok("show", parent["id"])["result"]
    bystander_ok(d, by)


@pytest.mark.parametrize("statement,error", [
    ("raise SystemExit('in cleanup')", "cleanup raised SystemExit: in cleanup"),
    ("raise KeyboardInterrupt()", "cleanup raised KeyboardInterrupt"),
])
def test_base_exception_from_cleanup_during_a_kill(daemon, statement, error):
    source = f"""
        import trio

        async def main(task):
            try:
                await trio.sleep(1000)
            finally:
                {statement}
    """
    d, by = start_with_bystander(daemon, {"bad": source})
    d.wait_task("bad", lambda t: t["state"] == "waiting", "waiting")
    out = d.ok("kill", "bad")["task"]
    assert out["state"] == "killed", out
    assert error in out["error"], out
    bystander_ok(d, by)


def test_an_exception_from_cleanup_during_a_kill_is_a_kill_and_not_restarted(daemon):
    """Raised by the job's cleanup, a ValueError (or the refusal of a yield made after
    the kill) ends the task killed, as a BaseException does: not failed, and not
    restarted by restart = "always"."""
    source = """
        import trio

        from cosched import coro

        async def main(task):
            try:
                await trio.sleep(1000)
            except trio.Cancelled:
                if task.config.get("yield"):
                    await coro.yield_("one more question")
                raise ValueError("cleanup went wrong")
    """
    d = daemon(jobs={"bad": source, "asker": source},
               config={"jobs": {"restart": "always", "restart_delay": 0.1},
                       "job": {"asker": {"config": {"yield": True}}}})
    for name, error in (("bad", "cleanup raised ValueError: cleanup went wrong"),
                        ("asker", "cleanup raised CoroutineError: cannot yield")):
        task = d.wait_task(name, lambda t: t["state"] == "waiting", "waiting")
        out = d.ok("kill", name)["task"]
        assert out["state"] == "killed", out
        assert out["error"].startswith(error), out
        time.sleep(0.5)   # past the restart delay: still the same, killed task
        now = newest(d.status(), name)
        assert (now["id"], now["state"], now["restarts"]) == (task["id"], "killed", 0), now


def test_base_exception_from_cleanup_of_a_suspended_task(daemon):
    source = """
        from cosched import coro

        async def main(task):
            try:
                await coro.yield_("waiting")
            finally:
                raise SystemExit("closing")
    """
    d, by = start_with_bystander(daemon, {"bad": source})
    d.wait_task("bad", lambda t: t["state"] == "suspended", "suspended")
    out = d.ok("kill", "bad")["task"]
    assert out["state"] == "killed", out
    assert "SystemExit: closing" in out["error"], out
    bystander_ok(d, by)


def test_a_job_raising_cancelled_does_not_wedge_the_scheduler(daemon):
    d, by = start_with_bystander(daemon, {"bad": raiser("raise trio.Cancelled._create()")})
    d.wait_task("bad", lambda t: t["state"] == "failed", "failed")
    started = d.ok("start", "bystander")["task"]
    assert started["state"] in LIVE | {"starting"}
    d.wait_status(lambda s: by_id(s, started["id"])["state"] == "waiting", "new task waits")
    bystander_ok(d, by)


HOSTILE_VALUES = """
    from cosched import coro

    class BadRepr:
        def __repr__(self):
            raise RuntimeError("no repr for you")
        __str__ = __repr__

    class BadStr(Exception):
        def __str__(self):
            raise RuntimeError("no str either")

    def deep(n):
        v = []
        for _ in range(n):
            v = [v]
        return v

    async def main(task):
        await coro.yield_(BadRepr())
        await coro.yield_(deep(5000))
        await coro.yield_("x" * 1_000_000)
        if task.config.get("ret"):
            return BadRepr()
        raise BadStr()
"""


@pytest.mark.parametrize("ret", [False, True])
def test_hostile_values_are_rendered_safely(daemon, ret):
    d, by = start_with_bystander(daemon, {"hostile": HOSTILE_VALUES},
                                 {**NO_RESTART, "job": {"hostile": {"config": {"ret": ret}}}})
    t = d.wait_task("hostile", lambda t: t["state"] == "suspended", "first yield")
    assert t["yielded"] == ["<unrepresentable BadRepr>"]
    rc, text, err = d.ctl("show", "hostile", json_output=False)
    assert rc == 0 and "unrepresentable BadRepr" in text, (text, err)
    out = d.ok("resume", "hostile")
    assert out["outcome"] == "yielded"
    assert "too deep" in str(out["values"])   # nested beyond the encoder's depth
    out = d.ok("resume", "hostile")
    assert out["values"] == ["x" * 1_000_000]
    out = d.ok("resume", "hostile")
    if ret:
        assert out["outcome"] == "finished" and out["values"] == ["<unrepresentable BadRepr>"]
    else:
        assert out["outcome"] == "failed", out
        assert out["error"] == "BadStr: <unrepresentable BadStr>", out
    bystander_ok(d, by)
    rc, text, err = d.ctl("status", json_output=False)
    assert rc == 0, err


def test_restart_backoff_never_overflows(daemon):
    # restart_delay 0 and a huge burst: the task fails and restarts as fast as it can.
    # restart_delay * 2 ** restarts used to overflow at restart 1024.
    config = {"jobs": {"restart": "on-failure", "restart_delay": 0, "restart_delay_max": 0,
                       "start_limit_burst": 1_000_000}}
    d, by = start_with_bystander(daemon, {"flaky": "async def main(task):\n    raise ValueError('x')\n"},
                                 config)
    d.wait_status(lambda s: newest(s, "flaky")["restarts"] > 1100, "1100 restarts", timeout=60)
    bystander_ok(d, by)


def test_keyboard_interrupt_at_a_hot_added_files_top_level(daemon):
    d, by = start_with_bystander(daemon, {})
    write_job(d.jobs_dir, "kb", "raise KeyboardInterrupt('at import')\n")
    jobs = d.wait_status(lambda s: any(e["job"] == "kb" for e in s["job_errors"]),
                         "kb refused")["job_errors"]
    error = next(e for e in jobs if e["job"] == "kb")["error"]
    assert "KeyboardInterrupt: at import" in error, error
    write_job(d.jobs_dir, "sx", "raise SystemExit('at import')\n")
    d.wait_status(lambda s: any(e["job"] == "sx" for e in s["job_errors"]), "sx refused")
    bystander_ok(d, by)


def test_failed_task_frees_its_frames(daemon):
    source = """
        import trio

        async def main(task):
            ballast = bytearray(400 * 1024 * 1024)
            ballast[::4096] = b"x" * len(ballast[::4096])   # touch every page
            await trio.sleep(0.2)
            raise ValueError("done with the ballast")
    """
    d, by = start_with_bystander(daemon, {})
    proc = psutil.Process(d.proc.pid)
    base = proc.memory_info().rss
    write_job(d.jobs_dir, "heavy", source)
    d.wait_task("heavy", lambda t: t["state"] == "failed", "failed")
    deadline = time.monotonic() + WAIT
    while proc.memory_info().rss > base + 100 * 1024 * 1024:
        assert time.monotonic() < deadline, (base, proc.memory_info().rss)
        time.sleep(0.1)
    bystander_ok(d, by)


def test_ended_children_are_pruned_and_names_stay_unique(daemon):
    source = """
        import trio

        async def child(task, seconds):
            await trio.sleep(seconds)

        async def main(task):
            keep = [task.spawn(child, 1000, name="worker") for _ in range(3)]
            for _ in range(200):
                await task.spawn(child, 0, name="worker").join()
            await trio.sleep(1000)
    """
    d = daemon(jobs={"boss": source}, config=NO_RESTART)
    boss = d.wait_status(lambda s: len(s["tasks"]) >= 200 and all(
        t["state"] != "running" for t in s["tasks"] if t["name"].startswith("worker")),
        "children done")
    boss = newest(boss, "boss")
    shown = d.ok("show", "boss")
    alive = [t for t in d.status()["tasks"] if t["name"].startswith("worker") and t["state"] in LIVE]
    assert sorted(shown["children"]) == sorted(t["id"] for t in alive)
    assert len(alive) == 3
    names = [t["name"] for t in d.status()["tasks"] if t["name"].startswith("worker")]
    assert len(names) == len(set(names))   # unique among listed tasks
    assert boss["state"] == "waiting"


def test_daemon_signal_still_stops_the_daemon(daemon):
    d, by = start_with_bystander(daemon, {"bad": raiser("raise KeyboardInterrupt()")})
    d.wait_task("bad", lambda t: t["state"] == "failed", "failed")
    d.signal(signal.SIGINT)
    assert d.wait_exit() == 0, d.log_tail()


MANY = """
    import trio

    async def child(task):
        await trio.sleep(1000)

    async def main(task):
        for _ in range(task.config["n"]):
            task.spawn(child)
        await trio.sleep(1000)
"""


def test_a_long_status_arrives_whole_in_one_line_and_filters_use_indexes(daemon):
    import json
    import socket

    n = 1200   # more than one chunk of the answer
    d = daemon(jobs={"many": MANY, "bystander": SLEEPER},
               config={**NO_RESTART, "job": {"many": {"config": {"n": n}}}})
    s = d.wait_status(lambda s: len(s["tasks"]) == n + 2 and all(
        t["state"] == "waiting" for t in s["tasks"]), "all waiting")
    assert [t["id"] for t in s["tasks"]] == sorted(t["id"] for t in s["tasks"])
    assert s["daemon"]["num_tasks"] == n + 2 and s["job_errors"] == []
    assert set(s["daemon"]["loop"]) == {"longest_batch", "long_batches", "recent_long"}
    with socket.socket(socket.AF_UNIX) as sock:   # a raw client: one response line
        sock.settimeout(30)
        sock.connect(str(d.socket))
        sock.sendall(b'{"id": 7, "cmd": "status"}\n{"id": 8, "cmd": "ping"}\n')
        data = b""
        while data.count(b"\n") < 2:
            chunk = sock.recv(1 << 20)
            assert chunk, data[-200:]
            data += chunk
    first, second = data.split(b"\n")[:2]
    answer = json.loads(first)
    assert answer["id"] == 7 and answer["ok"] and len(answer["result"]["tasks"]) == n + 2
    assert json.loads(second)["id"] == 8
    waiting = d.ok("status", "--state", "waiting")["tasks"]
    assert len(waiting) == n + 2
    assert d.ok("status", "--state", "suspended")["tasks"] == []
    assert d.ok("status", "--state", "running")["tasks"] == []   # looked at n + 2, took none
    assert len(d.ok("status", "--job", "many")["tasks"]) == n + 1
    d.ok("kill", "bystander")
    killed = d.ok("status", "--state", "killed")["tasks"]
    assert [t["name"] for t in killed] == ["bystander"]
    assert d.ok("status")["daemon"]["num_tasks"] == n + 1


def test_a_refused_file_is_tried_again_at_reload(daemon):
    """What refused a file may lie outside it (here a folder's mode): a reload checks again."""
    import os

    d, by = start_with_bystander(daemon, {})
    sub = d.jobs_dir / "sub"
    sub.mkdir()
    write_job(sub, "inner", SLEEPER)
    os.chmod(sub, 0o777)   # group and others may write the folder that holds the file
    os.symlink(sub / "inner.py", d.jobs_dir / "inner.py")
    d.ok("reload")
    error = next(e for e in d.status()["job_errors"] if e["job"] == "inner")["error"]
    assert "unsafe folder" in error and str(sub) in error, error
    os.chmod(sub, 0o755)   # fixed: nothing about the file itself changed
    report = d.ok("reload")
    assert "inner" in report["loaded"], report
    d.wait_task("inner", lambda t: t["state"] == "waiting", "runs")
    bystander_ok(d, by)


def test_a_client_that_stops_reading_a_long_status_is_dropped_and_others_go_on(daemon):
    """The answer is produced a piece at a time as the socket takes it: a client that
    reads nothing holds one piece, is disconnected after control.send_timeout, and the
    loop answers everyone else meanwhile."""
    import json
    import socket
    import time

    n = 5000   # an answer of about a megabyte: more than the socket buffers hold
    d = daemon(jobs={"many": MANY},
               config={**NO_RESTART, "control": {"send_timeout": 2},
                       "job": {"many": {"config": {"n": n}}}})
    d.wait_status(lambda s: s["daemon"]["num_tasks"] == n + 1, "all started")
    full = len(json.dumps(d.ok("status"), separators=(",", ":")))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(str(d.socket))
        sock.sendall(b'{"id": 1, "cmd": "status"}\n')
        began = time.monotonic()
        while time.monotonic() - began < 3:   # not reading; the daemon goes on
            assert d.ok("ping")["pong"] is True
        sock.settimeout(30)
        got = b""
        while chunk := sock.recv(1 << 16):   # what was buffered, then the end
            got += chunk
    assert len(got) < full and not got.endswith(b"\n"), len(got)
    assert d.ok("status", "--state", "waiting")["daemon"]["num_tasks"] == n + 1


async def parked_family(sup):
    """Once MANY's task and its 10 children all wait: (that task, its children's ids)."""
    from test_events import until

    await until(lambda: len(sup.tasks) == 11 and all(
        t.shown_state() == "waiting" for t in sup.tasks.values()))
    parent = next(t for t in sup.tasks.values() if t.parent is None)
    return parent, sorted(t.id for t in sup.tasks.values() if t.parent is parent)


def counting_kills(sup):
    """(ids killed in order, kills in flight at each, a _request_kill that records both)."""
    killed: list[int] = []
    in_flight: list[int] = []
    request_kill = sup._request_kill

    def counting(t):
        killed.append(t.id)
        in_flight.append(sum(x.kill_requested and not x.done for x in sup.tasks.values()) + 1)
        request_kill(t)
    return killed, in_flight, counting


def burst_supervisor(tmp_path, monkeypatch, burst: str):
    """A supervisor of MANY (a task that spawns 10 children) with ``burst`` (STOP_BURST
    or KILL_BURST) set to 3: (it, *counting_kills(it))."""
    from cosched import supervisor
    from test_events import make_supervisor

    monkeypatch.setattr(supervisor, burst, 3)
    sup = make_supervisor(tmp_path, {"many": MANY}, '[job.many]\nconfig = { n = 10 }\n')
    return (sup, *counting_kills(sup))


def test_a_stop_kills_in_bursts_children_before_parents(tmp_path, monkeypatch):
    """trio holds a pending cancellation per cancelled task until it runs: the stop
    keeps at most STOP_BURST kills in flight, newest tasks (children) first."""
    import trio

    from test_events import drive

    sup, killed, in_flight, counting = burst_supervisor(tmp_path, monkeypatch, "STOP_BURST")
    monkeypatch.setattr(sup, "_request_kill", counting)

    async def scenario():
        parent, _ = await parked_family(sup)
        left = await sup.stop(10)
        assert left == []
        assert all(t.state == "killed" for t in sup.tasks.values())
        assert max(in_flight) <= 3, in_flight
        first = list(dict.fromkeys(killed))   # (a parent ending asks again for its children)
        assert first == sorted(first, reverse=True) and first[-1] == parent.id, killed
        await trio.sleep(0)

    drive(sup, scenario)


def test_a_task_that_ends_with_many_children_ends_them_in_bursts_newest_first(tmp_path,
                                                                               monkeypatch):
    """Killing a parent of many children does not cancel them all in one pass of the
    loop: at most KILL_BURST are being killed at a time, newest first, and the other
    tasks (and the daemon's answers) go on meanwhile."""
    import trio

    from test_events import drive, until

    sup, killed, in_flight, counting = burst_supervisor(tmp_path, monkeypatch, "KILL_BURST")

    async def scenario():
        parent, children = await parked_family(sup)
        sup._request_kill = counting
        await sup.kill(parent.id)
        await until(lambda: all(t.done for t in sup.tasks.values()))
        assert all(t.state == "killed" for t in sup.tasks.values())
        assert killed[0] == parent.id and killed[1:] == children[::-1], killed
        assert max(in_flight[1:]) <= 3, in_flight
        await trio.sleep(0)

    drive(sup, scenario)


def test_a_restarted_task_ends_its_many_children_in_bursts_and_begins_again(tmp_path,
                                                                             monkeypatch):
    from test_events import drive, until

    sup, killed, in_flight, counting = burst_supervisor(tmp_path, monkeypatch, "KILL_BURST")

    async def scenario():
        parent, old = await parked_family(sup)
        sup._request_kill = counting
        await sup.restart(parent.id)
        await until(lambda: all(sup.tasks[i].done for i in old) and len(parent.children) == 10
                    and all(c.shown_state() == "waiting" for c in parent.children.values()))
        assert all(sup.tasks[i].state == "killed" for i in old)
        assert killed[0] == parent.id and killed[1:] == old[::-1], killed
        assert max(in_flight[1:]) <= 3, in_flight
        assert parent.alive and parent.restarts == 1
        assert sorted(parent.children) != old   # the new life's own children

    drive(sup, scenario)


KILLABLE = """
    import trio

    async def child(task):
        task.state["began"] = True
        await trio.sleep(0)
        task.state["past its first checkpoint"] = True
        await trio.sleep(1000)

    async def shielded(task):
        try:
            await trio.sleep(1000)
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(0.2)
                task.state["cleanup"] = "done"

    async def swallower(task):
        try:
            await trio.sleep(1000)
        except trio.Cancelled:
            task.state["swallowed"] = True
        await trio.sleep(0)   # the kill is still on: cancelled here
        task.state["never"] = True

    async def main(task):
        await trio.sleep(1000)
"""


def test_kills_reach_tasks_that_hold_no_scope_of_their_own(tmp_path):
    """A parked task holds no cancel scope; a kill splices one in, wherever the task is:
    before its first step, asleep, in a shielded cleanup, after swallowing the kill."""
    import trio

    from cosched import cancels
    from test_events import drive, make_supervisor, until

    sup = make_supervisor(tmp_path, {"killable": KILLABLE})

    async def scenario():
        await until(lambda: len(sup.tasks) == 1)
        parent = next(iter(sup.tasks.values()))
        mod = parent.job.module
        early = sup.start_task(parent.job, mod.child, (), parent)
        sup._request_kill(early)   # before its trio task has taken a step
        others = [sup.start_task(parent.job, fn, (), parent) for fn in (mod.shielded, mod.swallower)]
        await until(lambda: all(t.shown_state() == "waiting" for t in others))
        assert all(t.scope is None for t in [parent, *others]) == cancels.SPLICE
        for t in others:
            sup._request_kill(t)
        await until(lambda: all(t.done for t in [early, *others]))
        assert [t.state for t in [early, *others]] == ["killed"] * 3
        assert early.ctx.state == {"began": True}
        assert others[0].ctx.state == {"cleanup": "done"}
        assert others[1].ctx.state == {"swallowed": True}
        assert parent.shown_state() == "waiting"   # the bystander: untouched
        assert (parent.scope is None) == cancels.SPLICE
        await trio.sleep(0)

    drive(sup, scenario)


LEAKER = """
    import trio

    async def leaks(task):
        trio.CancelScope().__enter__()          # never left
        await trio.sleep(1000)

    async def leaks_and_returns(task):
        trio.CancelScope().__enter__()
        return 1

    async def leaks_cancelled(task):
        trio.CancelScope().__enter__().cancel()   # its Cancelled reaches the root
        await trio.sleep(1000)

    async def main(task):
        await trio.sleep(1000)
"""


def test_a_job_that_leaves_a_cancel_scope_open_fails_alone(tmp_path):
    """Scopes entered by hand and never left: without a with-block of the daemon's
    around the job nothing else would notice them, and a Cancelled of such a scope
    reaching the root must not pass for the daemon stopping (it would end the
    daemon's nursery)."""
    import trio

    from cosched import cancels
    from test_events import drive, make_supervisor, until

    sup = make_supervisor(tmp_path, {"leaker": LEAKER})

    async def scenario():
        await until(lambda: len(sup.tasks) == 1)
        parent = next(iter(sup.tasks.values()))
        mod = parent.job.module
        a, b, c = (sup.start_task(parent.job, fn, (), parent)
                   for fn in (mod.leaks, mod.leaks_and_returns, mod.leaks_cancelled))
        await until(lambda: a.shown_state() == "waiting" and b.done and c.done)
        sup._request_kill(a)
        await until(lambda: a.done)
        assert [t.state for t in (a, b, c)] == ["killed", "failed", "failed"]
        if cancels.SPLICE:   # (a scope of its own per life reports it as an internal error)
            assert all("left a trio cancel scope" in t.error for t in (a, b, c))
        after = sup.start_task(parent.job, mod.leaks, (), parent)   # the daemon goes on
        await until(lambda: after.shown_state() == "waiting")
        assert parent.shown_state() == "waiting"
        await trio.sleep(0)

    drive(sup, scenario)
