"""Where a task is (cosched.whereis): `coschedctl show` of suspended and waiting tasks of
a real coschedd names the job's file and line, and the job's own stack."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_daemon import BASE_CONFIG, Daemon

REPO_JOBS = Path(__file__).resolve().parent.parent / "jobs"

TRANSFERRER = """
    import trio

    from cosched import coro

    async def inner():
        await coro.transfer(None, "from inner")
        await trio.sleep(1000)

    async def main(task):
        co = coro.create(inner)
        await coro.resume(co)   # main waits in this resume: the transfer suspends the task
"""
NESTED_WAIT = """
    import trio

    async def deeper():
        await trio.sleep(1000)

    async def main(task):
        await deeper()
"""


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    jobs = {"ask": (REPO_JOBS / "ask.py").read_text(),
            "pingpong": (REPO_JOBS / "pingpong.py").read_text(),
            "hop": TRANSFERRER, "nested": NESTED_WAIT}
    daemon = Daemon(tmp_path_factory.mktemp("whereis"), BASE_CONFIG, jobs, None)
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        daemon.stop()


def line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_show_of_a_task_that_yielded_names_the_job_line(d):
    path = d.jobs_dir / "ask.py"
    d.wait_task("ask", lambda t: t["state"] == "suspended", "asking")
    shown = d.ok("show", "ask")
    line = line_of(path, 'await coro.yield_(NAME)')
    assert shown["at"] == {"file": str(path), "line": line, "function": "main"}
    assert shown["stack"] == [shown["at"]]
    assert shown["waiting_on"] == f"coschedctl resume (yielded at ask.py:{line})"
    rc, out, _ = d.ctl("show", "ask", json_output=False)
    assert f"at: {path}:{line} in main" in out.splitlines()
    assert "_sync.py" not in out and "trio" not in out.split("stack:")[1]


def test_show_of_a_task_that_transferred_to_main_names_the_coroutine_line(d):
    d.wait_task("hop", lambda t: t["state"] == "suspended", "suspended")
    shown = d.ok("show", "hop")
    path = d.jobs_dir / "hop.py"
    line = line_of(path, 'coro.transfer(None, "from inner")')
    assert shown["yielded"] == ["from inner"]
    assert shown["at"] == {"file": str(path), "line": line, "function": "inner"}
    assert shown["waiting_on"] == f"coschedctl resume (transferred to main at hop.py:{line})"


def test_show_of_a_pingpong_rally_points_at_its_last_yield(d):
    path = d.jobs_dir / "pingpong.py"
    d.wait_task("pingpong", lambda t: t["state"] == "suspended", "suspended")
    shown = d.ok("show", "pingpong")
    assert shown["at"]["line"] == line_of(path, "await coro.yield_(count)")


def test_show_of_a_waiting_task_gives_the_job_stack_down_to_its_await(d):
    d.wait_task("nested", lambda t: t["state"] == "waiting", "waiting")
    shown = d.ok("show", "nested")
    path = d.jobs_dir / "nested.py"
    assert [(f["function"], f["line"]) for f in shown["stack"]] == [
        ("main", line_of(path, "await deeper()")),
        ("deeper", line_of(path, "await trio.sleep(1000)"))]
    assert shown["at"] == shown["stack"][-1]
    assert shown["waiting_on"].endswith(f"nested.py:{line_of(path, 'await trio.sleep(1000)')}")
