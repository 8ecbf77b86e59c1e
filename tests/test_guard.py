"""The step guard, end to end: runaway steps are interrupted in place, kill and stop always finish.

Each test runs a real coschedd whose job never yields (a pure-Python loop, a
blocking sleep or recv), or whose cleanup never ends, and checks that the
offender is stopped with a clear error while the daemon and a bystander task
carry on.
"""

from __future__ import annotations

import signal
import subprocess
import time

import psutil

from test_daemon import COSCHEDCTL, WAIT, daemon, write_job  # noqa: F401
from test_supervisor import bystander_ok, start_with_bystander

SPIN = """
    from pathlib import Path

    from cosched import coro

    async def main(task):
        await coro.yield_("ready")   # the test resumes it once it has seen the daemon up
        try:
            while True:
                pass
        finally:
            Path(task.config["marker"]).write_text("unwound")
"""

BLOCKING_SLEEP = """
    import time

    from cosched import coro

    async def main(task):
        await coro.yield_("ready")
        time.sleep(3600)
"""

BLOCKING_RECV = """
    import socket

    from cosched import coro

    async def main(task):
        await coro.yield_("ready")
        a, b = socket.socketpair()
        a.recv(1)
"""


def limited(seconds: float, **job: dict) -> dict:
    return {"jobs": {"restart": "no", "step_limit": seconds}, "job": job}


def go(d, *names: str) -> None:
    """Resume tasks suspended at "ready", without waiting for the answers: a runaway step
    keeps the event loop from answering until it ends."""
    for name in names:
        d.wait_task(name, lambda t: t["state"] == "suspended", "ready")
    for name in names:
        _fire(d, name)


def _fire(d, name: str) -> None:
    proc = subprocess.Popen([COSCHEDCTL, "--socket", str(d.socket), "--timeout", "60", "resume",
                             name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    d.helpers = getattr(d, "helpers", []) + [proc]


def test_step_limit_interrupts_a_python_loop(daemon, tmp_path):
    marker = tmp_path / "spin.marker"
    d, by = start_with_bystander(daemon, {"spin": SPIN},
                                 limited(1, spin={"config": {"marker": str(marker)}}))
    go(d, "spin")
    t = d.wait_task("spin", lambda t: t["state"] == "failed", "failed")
    assert t["error"].startswith("StepTimeout: step ran longer than step_limit (1s); it was at "
                                 "spin.py:"), t
    assert marker.read_text() == "unwound"      # finally blocks ran as the step unwound
    bystander_ok(d, by)
    assert any(r.get("event") == "task failed" and r.get("task") == "spin"
               for r in d.log_records())


def test_step_limit_interrupts_blocking_calls(daemon):
    d, by = start_with_bystander(daemon, {"sleepy": BLOCKING_SLEEP, "recv": BLOCKING_RECV},
                                 limited(1))
    go(d, "sleepy", "recv")
    for name, line in (("sleepy", "sleepy.py:8"), ("recv", "recv.py:9")):
        t = d.wait_task(name, lambda t: t["state"] == "failed", "failed")
        assert "StepTimeout" in t["error"] and line in t["error"], t
    bystander_ok(d, by)


def test_step_limit_applies_the_restart_policy(daemon):
    config = limited(0.5)
    config["jobs"].update(restart="on-failure", restart_delay=0.05)
    d, by = start_with_bystander(daemon, {"sleepy": BLOCKING_SLEEP}, config)
    for _ in range(3):
        go(d, "sleepy")
        d.wait_task("sleepy", lambda t: t["state"] in ("restarting", "failed", "starting"),
                    "interrupted")
    t = d.wait_task("sleepy", lambda t: t["restarts"] >= 2, "restarted twice")
    assert "StepTimeout" in (t["error"] or "StepTimeout"), t
    bystander_ok(d, by)


def test_step_limit_bounds_a_job_files_top_level(daemon):
    d, by = start_with_bystander(daemon, {}, limited(1))
    write_job(d.jobs_dir, "loops", "while True:\n    pass\n")
    s = d.wait_status(lambda s: any(e["job"] == "loops" for e in s["job_errors"]), "refused")
    error = next(e for e in s["job_errors"] if e["job"] == "loops")["error"]
    assert "StepTimeout" in error and "loops.py:1" in error, error
    bystander_ok(d, by)


def test_kill_interrupts_a_runaway_step_at_once(daemon, tmp_path):
    marker = tmp_path / "spin.marker"
    d, by = start_with_bystander(daemon, {"spin": SPIN},
                                 limited(0, spin={"config": {"marker": str(marker)}}))
    go(d, "spin")
    time.sleep(1.0)   # well into the runaway step
    began = time.monotonic()
    out = d.ok("kill", "spin")["task"]
    assert out["state"] == "killed", out
    assert "killed while its step was running" in out["error"], out
    assert marker.read_text() == "unwound"
    assert time.monotonic() - began < WAIT
    bystander_ok(d, by)


def test_sigterm_ends_a_runaway_step(daemon, tmp_path):
    marker = tmp_path / "spin.marker"
    d, by = start_with_bystander(daemon, {"spin": SPIN},
                                 limited(0, spin={"config": {"marker": str(marker)}}))
    go(d, "spin")
    time.sleep(1.0)
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0, d.log_tail()
    assert marker.read_text() == "unwound"
    assert not d.socket.exists()


def test_sighup_interrupts_a_runaway_step_and_reloads(daemon):
    d, by = start_with_bystander(daemon, {"sleepy": BLOCKING_SLEEP}, limited(0))
    go(d, "sleepy")
    time.sleep(1.0)
    write_job(d.jobs_dir, "fresh", "import trio\nasync def main(task):\n    await trio.sleep(1000)\n")
    d.signal(signal.SIGHUP)
    t = d.wait_task("sleepy", lambda t: t["state"] == "failed", "failed")
    assert "reload (SIGHUP)" in t["error"], t
    d.wait_task("fresh", lambda t: t["state"] == "waiting", "fresh job runs")
    bystander_ok(d, by)


NEVER_ENDING_CLEANUP = """
    import trio
    from cosched import coro

    async def main(task):
        try:
            if task.config.get("suspend"):
                await coro.yield_("waiting")
            await trio.sleep(1000)
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(1000)
"""

SWALLOWS_CANCELLED = """
    import trio

    async def main(task):
        while True:
            try:
                await trio.sleep(1000)
            except trio.Cancelled:
                pass
"""


def test_kill_abandons_cleanup_that_never_ends(daemon):
    config = {"daemon": {"stop_timeout": 1}, "jobs": {"restart": "no"},
              "job": {"stuck": {"config": {"suspend": True}}}}
    d, by = start_with_bystander(daemon, {"stuck": NEVER_ENDING_CLEANUP, "deaf": SWALLOWS_CANCELLED},
                                 config)
    d.wait_task("stuck", lambda t: t["state"] == "suspended", "suspended")
    d.wait_task("deaf", lambda t: t["state"] == "waiting", "waiting")
    for name in ("stuck", "deaf"):
        out = d.ok("kill", name)["task"]
        assert out["state"] == "killed", out
        assert out["error"] == "cleanup did not finish within 1 s", out
    rc, out, err = d.ctl("resume", "stuck", "x")
    assert rc == 1 and "not-suspended" in err, (out, err)
    bystander_ok(d, by)


def test_sigterm_abandons_cleanup_that_never_ends(daemon):
    config = {"daemon": {"stop_timeout": 1}, "jobs": {"restart": "no"}}
    d, by = start_with_bystander(daemon, {"stuck": NEVER_ENDING_CLEANUP}, config)
    d.wait_task("stuck", lambda t: t["state"] == "waiting", "waiting")
    began = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0, d.log_tail()
    assert time.monotonic() - began < 1 + 5
    record = next(r for r in d.log_records() if r.get("event", "").startswith(
        "coschedd stopped; cleanup of these tasks was abandoned"))
    assert any(name.startswith("stuck ") for name in record["tasks"]), record
    assert not d.socket.exists()


MANY_STUCK = """
    import trio

    async def stuck(task):
        try:
            await trio.sleep(1000)
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(1000)

    async def main(task):
        for _ in range(30):
            task.spawn(stuck)
        await trio.sleep(1000)
"""


def test_a_stop_that_abandons_many_tasks_names_twenty_and_counts_the_rest(daemon):
    d = daemon(jobs={"many": MANY_STUCK},
               config={"daemon": {"stop_timeout": 1}, "jobs": {"restart": "no"}})
    d.wait_task("many", lambda t: t["state"] == "waiting", "waiting")
    d.wait_status(lambda s: sum(t["state"] == "waiting" for t in s["tasks"]) == 31, "31 waiting")
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0, d.log_tail()
    records = d.log_records()
    final = next(r for r in records if r.get("event", "").startswith(
        "coschedd stopped; cleanup of these tasks was abandoned"))
    assert len(final["tasks"]) == 20 and final["more"] == 10, final   # "many" itself ends
    named = [r for r in records if r.get("event") == "task abandoned"]
    assert len(named) == 20, named
    summary = next(r for r in records if r.get("event") == "tasks abandoned")
    assert summary["more"] == 10, summary


OFFLOADED = """
    import os
    import time
    from pathlib import Path

    async def main(task):
        if task.config["how"] == "thread":
            return await task.run_sync(time.sleep, 3600)
        return await task.run_in_process(work, task.config["pidfile"])

    def work(pidfile):
        Path(pidfile).write_text(str(os.getpid()))
        time.sleep(3600)
"""


def test_run_sync_and_run_in_process_return_values(daemon):
    source = """
        import hashlib

        def digest(data):
            return hashlib.sha256(data).hexdigest()

        class Odd(Exception):
            pass

        def fails():
            raise Odd("from the worker")

        async def main(task):
            a = await task.run_sync(digest, b"abc")
            b = await task.run_in_process(digest, b"abc")
            try:
                await task.run_in_process(fails)
            except Odd as e:
                c = str(e)
            return a == b, c
    """
    d = daemon(jobs={"offload": source}, config={"jobs": {"restart": "no"}})
    d.wait_task("offload", lambda t: t["state"] == "finished", "finished")
    assert d.ok("show", "offload")["result"] == [True, "from the worker"]


def test_kill_cancels_run_sync_and_run_in_process(daemon, tmp_path):
    pidfile = tmp_path / "worker.pid"
    config = {"jobs": {"restart": "no"},
              "job": {"thr": {"config": {"how": "thread"}},
                      "proc": {"config": {"how": "process", "pidfile": str(pidfile)}}}}
    d, by = start_with_bystander(daemon, {"thr": OFFLOADED, "proc": OFFLOADED}, config)
    d.wait_task("thr", lambda t: t["state"] == "waiting", "waiting")
    assert d.ok("kill", "thr")["task"]["state"] == "killed"
    assert any(r.get("event", "").startswith("abandoned a worker thread") for r in d.log_records())
    deadline = time.monotonic() + 30
    while not pidfile.exists():   # a worker process starts a fresh interpreter
        assert time.monotonic() < deadline, d.log_tail()
        time.sleep(0.05)
    worker = psutil.Process(int(pidfile.read_text()))
    assert d.ok("kill", "proc")["task"]["state"] == "killed"
    worker.wait(WAIT)   # raises TimeoutExpired if the worker outlives the kill
    bystander_ok(d, by)


def test_idle_daemon_parks_the_watchdog(daemon):
    """While the loop sleeps in epoll, the guard's thread waits without a timeout."""
    d, by = start_with_bystander(daemon, {})
    time.sleep(1.5)   # PERIOD is 0.5 s: the watchdog has parked by now
    proc = psutil.Process(d.proc.pid)
    names = {t.id: t for t in proc.threads()}
    before = {tid: t.user_time + t.system_time for tid, t in names.items()}
    time.sleep(2)
    after = {t.id: t.user_time + t.system_time for t in proc.threads()}
    assert after == before, (before, after)


def test_an_ended_task_leaves_no_step_behind(daemon):
    """The last step of a task ends after it left the registry: the guard must not go on
    timing it (it would declare the idle daemon stuck and end it)."""
    d = daemon(jobs={"quick": "async def main(task):\n    return 1\n"}, config=limited(0.2))
    d.wait_task("quick", lambda t: t["state"] == "finished", "finished")
    time.sleep(0.2 + 5 + 1.5)   # past step_limit + STUCK_GRACE
    assert d.proc.poll() is None, d.log_tail()
    assert d.ok("ping")["pid"] == d.proc.pid


SWALLOWS_TIMEOUTS = """
    from cosched import coro

    async def main(task):
        await coro.yield_("ready")
        while True:            # swallows every interruption, so none can end the step
            try:
                while True:
                    pass
            except BaseException:
                pass
"""


def test_a_step_that_cannot_be_interrupted_ends_the_daemon_with_code_4(daemon):
    d, by = start_with_bystander(daemon, {"stubborn": SWALLOWS_TIMEOUTS}, limited(0.5))
    go(d, "stubborn")
    assert d.wait_exit(timeout=0.5 + 5 + 20) == 4, d.log_tail()
    record = next(r for r in d.log_records() if r.get("event") == "coschedd is ending itself")
    assert record["task"] == "stubborn" and "cannot be interrupted" in record["reason"], record
