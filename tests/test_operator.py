"""The operator's surface end to end, against a real coschedd driven by the real
coschedctl: restart, tree, --version, --json errors, and the frictions a first-time
user met (each test names the one it pins down)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from test_daemon import (BASE_CONFIG, COSCHEDCTL, COSCHEDD, CTL_TIMEOUT, SLEEPER, Daemon,
                         daemon, merged, write_job)  # noqa: F401
from test_watch import configmap

REPO = Path(__file__).resolve().parent.parent
ASKER = """
    from cosched import coro

    async def main(task):
        task.state["lives"] = task.state.get("lives", 0) + 1
        await coro.yield_("name?", task.state["lives"])
        return ["Alice", "Bob Smith"]
"""
SPAWNER = """
    import trio

    async def grandchild(task):
        await trio.sleep(1000)

    async def child(task):
        task.spawn(grandchild, name="grandchild")
        await trio.sleep(1000)

    async def main(task):
        task.spawn(child, name="first")
        task.spawn(child, name="second")
        await trio.sleep(1000)
"""


QUICK = "async def main(task):\n    return 1\n"

# Most tests share one daemon (starting one per test is what costs): each has its own jobs.
SHARED_JOBS = {"restarted": ASKER, "idle_asker": ASKER, "spawner": SPAWNER, "resumed": ASKER,
               "sleeper": SLEEPER, "quick": QUICK, "victim": SLEEPER, "start_asker": ASKER,
               "start_sleeper": SLEEPER,
               "pipeline": (REPO / "jobs" / "pipeline.py").read_text(),
               "echo": (REPO / "jobs" / "echo.py").read_text()}
SHARED_CONFIG = {"log": {"level": "info"},
                 "job": {name: {"autostart": False}
                         for name in ("idle_asker", "start_asker", "start_sleeper")}}


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    shared = Daemon(tmp_path_factory.mktemp("operator"), merged(BASE_CONFIG, SHARED_CONFIG),
                    SHARED_JOBS, None)
    try:
        shared.wait_ready()
        yield shared
    finally:
        shared.stop()


# -- restart and tree -----------------------------------------------------------------

def test_restart_runs_cleanup_and_starts_the_same_task_again_with_its_state(d):
    first = d.wait_task("restarted", lambda t: t["yielded"] == ["name?", 1], "first life")
    result = d.ok("restart", "restarted")
    assert result["started"] is False
    assert [(t["id"], t["state"], t["restarts"]) for t in result["tasks"]] == \
        [(first["id"], "suspended", 1)]
    assert d.ok("show", first["id"])["yielded"] == ["name?", 2]  # task.state survived
    d.ok("resume", "restarted")
    d.wait_task("restarted", lambda t: t["state"] == "finished", "finished")
    again = d.ok("restart", str(first["id"]))  # an ended task: a new one, same state
    assert again["started"] is True
    new = again["tasks"][0]
    assert new["id"] != first["id"] and new["name"] == "restarted"
    assert d.ok("show", new["id"])["yielded"] == ["name?", 3]
    rc, out, _ = d.ctl("restart", "restarted", json_output=False)
    assert rc == 0 and \
        out.strip() == f"restarted task {new['id']} (restarted, job restarted): suspended"


def test_restart_of_a_job_with_nothing_running_starts_it(d):
    assert d.ok("status", "--job", "idle_asker")["tasks"] == []
    started = d.ok("restart", "idle_asker")
    assert started["started"] is True and started["task"]["state"] == "suspended"
    rc, _, err = d.ctl("restart", "nosuch", json_output=False)
    assert rc == 1 and "no-such-task" in err


def test_jobs_lists_a_job_s_own_tasks_and_counts_what_they_spawned(d):
    d.wait_status(lambda s: sum(t["state"] == "waiting" for t in s["tasks"]
                                if t["job"] == "spawner") == 5, "5 waiting")
    root = next(t for t in d.ok("tree", "--job", "spawner")["tasks"] if t["depth"] == 0)
    job = next(j for j in d.ok("jobs")["jobs"] if j["name"] == "spawner")
    assert (job["tasks"], job["num_tasks"]) == ([root["id"]], 5)
    rc, out, _ = d.ctl("jobs", json_output=False)
    line = next(line for line in out.splitlines() if line.startswith("spawner "))
    assert rc == 0 and f" {root['id']} (+4 spawned) " in line, line


def test_tree_nests_children_under_their_parents(d):
    d.wait_status(lambda s: sum(t["state"] == "waiting" for t in s["tasks"]
                                if t["job"] == "spawner") == 5, "5 waiting")
    rows = d.ok("tree", "--job", "spawner")["tasks"]
    # which grandchild is named first depends on the scheduler: compare without the suffix
    assert [(r["name"].split(".")[0], r["depth"]) for r in rows] == [
        ("spawner", 0), ("first", 1), ("grandchild", 2), ("second", 1), ("grandchild", 2)]
    assert rows[1]["parent"] == rows[0]["id"] and rows[2]["parent"] == rows[1]["id"]
    assert rows[4]["parent"] == rows[3]["id"]
    rc, out, _ = d.ctl("tree", json_output=False)
    assert rc == 0
    lines = out.splitlines()
    spawner = lines.index(next(line for line in lines if " spawner " in line))
    assert [line.split(" (job")[0].lstrip("|`- ").split(" ", 1)[1].split(".")[0]
            for line in lines[spawner:spawner + 5]] == \
        ["spawner", "first", "grandchild", "second", "grandchild"]
    assert lines[spawner + 1].startswith("|-- ") and lines[spawner + 2].startswith("|   `-- ")
    assert lines[spawner + 3].startswith("`-- ") and lines[spawner + 4].startswith("    `-- ")
    sub = d.ok("tree", str(rows[1]["id"]))["tasks"]
    assert [r["name"].split(".")[0] for r in sub] == ["first", "grandchild"]


# -- versions and --json errors -----------------------------------------------------------

def test_both_programs_print_their_version():
    import cosched
    for program in (COSCHEDD, COSCHEDCTL):
        done = subprocess.run([program, "--version"], capture_output=True, text=True,
                              timeout=CTL_TIMEOUT)
        assert done.returncode == 0
        assert done.stdout.strip() == f"{Path(program).name} {cosched.__version__}"


def test_json_errors_are_json_on_stdout_with_the_usual_exit_codes(d, tmp_path):
    cases = [(["show", "nosuch"], 1, "no-such-task"), (["resume"], 2, "usage"),
             (["kill", "1", "--timeout", "nope"], 2, "usage")]
    for args, code, error in cases:
        rc, out, _ = _ctl_json(d.socket, args)
        assert rc == code, (args, rc, out)
        answer = json.loads(out)
        assert set(answer) == {"ok", "error"} and answer["ok"] is False
        assert set(answer["error"]) == {"code", "message"}
        assert answer["error"]["code"] == error and answer["error"]["message"]
    rc, out, _ = _ctl_json(tmp_path / "nothing.sock", ["ping"])
    assert rc == 3 and json.loads(out)["error"]["code"] == "unreachable"


def _ctl_json(socket, args):
    done = subprocess.run([COSCHEDCTL, "--socket", str(socket), "--json", *args],
                          capture_output=True, text=True, timeout=CTL_TIMEOUT,
                          stdin=subprocess.DEVNULL)
    return done.returncode, done.stdout, done.stderr


# -- the frictions of first use -----------------------------------------------------------

def test_resume_prints_a_finished_result_as_show_does(d):
    d.wait_task("resumed", lambda t: t["state"] == "suspended", "asking")
    rc, out, _ = d.ctl("resume", "resumed", "x", json_output=False)
    assert rc == 0 and out.strip() == 'finished: ["Alice", "Bob Smith"]'
    rc, out, _ = d.ctl("show", "resumed", json_output=False)
    assert 'result: ["Alice", "Bob Smith"]' in out.splitlines()


def test_resume_without_values_is_valid_usage(d):
    rc, _, err = d.ctl("resume", json_output=False)
    assert rc == 2 and "required: TASK" in err and "VALUE" not in err.splitlines()[-1]
    started = d.ok("start", "start_asker")["task"]
    assert d.ok("resume", str(started["id"]))["outcome"] == "finished"


def test_status_header_counts_alive_and_listed_tasks_and_an_empty_filter_says_so(d):
    d.wait_task("quick", lambda t: t["state"] == "finished", "finished")
    d.wait_task("sleeper", lambda t: t["state"] == "waiting", "waiting")
    rc, out, _ = d.ctl("status", "--job", "quick", json_output=False)
    alive = d.status()["daemon"]["num_tasks"]
    assert f"tasks {alive} alive, 1 listed" in out.splitlines()[0]
    rc, out, _ = d.ctl("status", "--job", "sleeper", "--state", "failed", json_output=False)
    assert rc == 0 and out.splitlines()[-1] == "no tasks to list"


def test_kill_of_an_ended_task_says_how_it_ended(d):
    d.wait_task("quick", lambda t: t["state"] == "finished", "finished")
    rc, _, err = d.ctl("kill", "quick", json_output=False)
    assert rc == 1 and err.strip().endswith("has already ended: it finished"), err
    d.wait_task("victim", lambda t: t["state"] == "waiting", "waiting")
    rc, out, _ = d.ctl("kill", "victim", json_output=False)
    assert rc == 0 and out.startswith("killed task")
    rc, out, _ = d.ctl("kill", "victim", json_output=False)  # killing twice is no error
    assert rc == 0 and out.strip().endswith("(victim, job victim) was already killed"), out


def test_start_reports_the_state_after_the_first_step(d):
    for _ in range(5):  # the scheduler's order varies from run to run: the answer must not
        assert d.ok("start", "start_asker")["task"]["state"] == "suspended"
        assert d.ok("start", "start_sleeper")["task"]["state"] == "waiting"


def test_the_echo_jobs_port_is_in_its_logs(d):
    echo = d.wait_task("echo", lambda t: t["state"] == "waiting", "listening")
    port = d.ok("show", echo["id"])["task_state"]["port"]
    rc, out, _ = d.ctl("logs", "echo", json_output=False)
    assert rc == 0 and any(line.endswith(f"echo[{echo['id']}] info: listening "
                                         f"host=127.0.0.1 port={port}")
                           for line in out.splitlines()), out


def test_pipeline_keeps_the_daemon_log_quiet_at_info(d):
    d.wait_task("pipeline", lambda t: t["state"] == "finished", "finished")
    records = d.log_records()
    assert [r["event"] for r in records if r.get("task") == "pipeline"].count("line") == 0
    assert "from cosched import coro" not in d.log_text()
    assert any(r.get("event") == "pipeline done" for r in records)


def test_a_jobs_folder_created_after_start_is_watched(daemon):
    d = daemon(config={"daemon": {"jobs_dir": "later/jobs"}})
    write_job(d.root / "later" / "jobs", "sleeper", SLEEPER)  # creates both folders
    d.wait_task("sleeper", lambda t: t["state"] == "waiting", "loaded without a reload")
    write_job(d.root / "later" / "jobs", "second", SLEEPER)
    d.wait_task("second", lambda t: t["state"] == "waiting", "watched from then on")


def test_a_configmap_update_reloads_its_jobs(daemon):
    d = daemon(config={"daemon": {"jobs_dir": "cm"}})
    folder = d.root / "cm"
    configmap(folder, {"sayer.py": 'async def main(task):\n    return "v1"\n'}, 1)
    d.wait_task("sayer", lambda t: t["state"] == "finished", "v1")
    assert d.ok("show", "sayer")["result"] == "v1"
    configmap(folder, {"sayer.py": 'async def main(task):\n    return "v2"\n'}, 2)
    d.wait_status(lambda s: any(t["state"] == "finished" and t["name"] == "sayer"
                                and d.ok("show", t["id"])["result"] == "v2"
                                for t in s["tasks"]), "v2 after the ..data swap")


def test_a_file_refused_at_start_is_reported_once(daemon):
    """The watch rescans the folder once it is on (files written in between count), but a
    refused file is tried again only by a reload: its error is not logged twice."""
    d = daemon(jobs={"sleeper": SLEEPER, "broken": "async def not_main(task):\n    pass\n"})
    d.wait_task("sleeper", lambda t: t["state"] == "waiting", "waiting")
    write_job(d.jobs_dir, "later", SLEEPER)   # loaded through the watch: it is on by now
    d.wait_task("later", lambda t: t["state"] == "waiting", "loaded by the watch")
    refusals = [r for r in d.log_records()
                if r.get("event") == "job failed to load" and r.get("job") == "broken"]
    assert len(refusals) == 1, refusals
    d.ok("reload")
    assert len([r for r in d.log_records() if r.get("event") == "job failed to load"
                and r.get("job") == "broken"]) == 2
