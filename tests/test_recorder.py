"""Durable task.state, history and interrupted tasks, end to end: real coschedd processes
restarted on the same state folder (gracefully, and with SIGKILL), driven by coschedctl."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from test_daemon import BASE_CONFIG, WAIT, Daemon, merged, newest

ROOT = Path(__file__).resolve().parent.parent
NOBODY = 4242   # a uid with no account, for the daemon as another user


@pytest.fixture
def restartable(tmp_path):
    """start(jobs, config=..., root="d") -> a ready Daemon; calling it again with the same
    root restarts on the same state folder. All are stopped at teardown."""
    made: list[Daemon] = []

    def start(jobs: dict[str, str], config: dict | None = None, root: str = "d",
              wait: bool = True, base: Path | None = None) -> Daemon:
        d = Daemon((base or tmp_path) / root, merged(BASE_CONFIG, config or {}), jobs, None)
        made.append(d)
        if wait:
            d.wait_ready()
        return d

    yield start
    for d in made:
        d.stop()


def graceful_stop(d: Daemon) -> None:
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0, d.log_tail()


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(predicate, what: str, d: Daemon | None = None, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{d.log_tail() if d else ''}")
        time.sleep(0.02)
    return result


# -- task.state across restarts ------------------------------------------------------

KEEPER = """
    import json

    from cosched import coro

    async def main(task):
        with open({log!r}, "a") as f:
            f.write(json.dumps({{"id": task.id, "restored": task.restored,
                                 "state": task.state}}) + "\\n")
        task.state["runs"] = task.state.get("runs", 0) + 1
        task.state.setdefault("ids", []).append(task.id)
        await coro.yield_("waiting")
"""


def test_state_survives_restarts_and_new_tasks_know_they_were_restored(restartable, tmp_path):
    log = tmp_path / "keeper.log"
    jobs = {"keeper": KEEPER.format(log=str(log))}
    off = {"history": {"record": False}}
    d = restartable(jobs, off)
    first = d.wait_task("keeper", lambda t: t["state"] == "suspended", "suspended")
    d.ok("kill", "keeper")                   # a new task of the job, same daemon
    d.ok("start", "keeper")
    second = d.wait_task("keeper", lambda t: t["id"] != first["id"] and
                         t["state"] == "suspended", "the second task suspended")
    graceful_stop(d)
    d = restartable(jobs, off)               # the daemon again, on the same state folder
    third = d.wait_task("keeper", lambda t: t["state"] == "suspended", "suspended again")
    assert [(r["id"], r["restored"], r["state"]) for r in lines(log)] == [
        (first["id"], False, {}),
        (second["id"], True, {"runs": 1, "ids": [first["id"]]}),
        (third["id"], True, {"runs": 2, "ids": [first["id"], second["id"]]})]
    assert first["id"] < second["id"] < third["id"]
    assert d.ok("show", "keeper")["task_state"] == {
        "runs": 3, "ids": [first["id"], second["id"], third["id"]]}
    # history.record = false: the states are kept, the history is not
    rc, text, err = d.ctl("history", json_output=False)
    assert rc == 0 and "history is not recorded" in text, (text, err)
    rc, out, err = d.ctl("show", first["id"])
    assert rc == 1 and "no-such-task" in err


FAMILY = """
    import json

    from cosched import coro

    async def child(task):
        try:
            task.state["n"] = task.state.get("n", 0) + 1
            await task.checkpoint()
            return {{"name": task.name, "state": task.state, "saved": True}}
        except Exception as e:
            return {{"name": task.name, "error": f"{{type(e).__name__}}: {{e}}"}}

    async def main(task):
        named = await task.spawn(child, name="kept").join()
        unnamed = await task.spawn(child).join()
        with open({log!r}, "a") as f:
            f.write(json.dumps([named, unnamed]) + "\\n")
        await coro.yield_("done")
"""


def test_a_child_spawned_with_a_name_keeps_its_state_and_one_without_has_none(restartable,
                                                                               tmp_path):
    log = tmp_path / "family.log"
    jobs = {"family": FAMILY.format(log=str(log))}
    d = restartable(jobs)
    d.wait_task("family", lambda t: t["state"] == "suspended", "suspended")
    graceful_stop(d)
    d = restartable(jobs)
    d.wait_task("family", lambda t: t["state"] == "suspended", "suspended again")
    runs = lines(log)
    assert [run[0] for run in runs] == [{"name": "kept", "state": {"n": 1}, "saved": True},
                                        {"name": "kept", "state": {"n": 2}, "saved": True}]
    for run in runs:
        unnamed = run[1]
        assert unnamed["name"].startswith("family.") and "error" in unnamed, unnamed
        assert unnamed["error"].startswith("StateError: task family.") and \
            "has no durable state" in unnamed["error"], unnamed


CHECKPOINTER = """
    import json
    import os

    async def main(task):
        fd = os.open({log!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, (json.dumps({{"start": task.id, "state": task.state}}) + "\\n").encode())
        n = task.state.get("n", 0)
        while True:
            n += 1
            # all three change together: a state read back torn would not add up
            task.state.update(n=n, square=n * n, tail=list(range(n % 40)))
            await task.checkpoint()
            os.write(fd, (json.dumps({{"ack": n}}) + "\\n").encode())
"""


def test_sigkill_loses_no_acknowledged_checkpoint_and_ids_keep_growing(restartable, tmp_path):
    names = ["cp0", "cp1"]
    logs = {name: tmp_path / f"{name}.log" for name in names}
    jobs = {name: CHECKPOINTER.format(log=str(logs[name])) for name in names}
    rng = random.Random(12)
    ids_before = 0
    for cycle in range(4):
        seen = {name: len(lines(logs[name])) for name in names}
        d = restartable(jobs)
        wait_for(lambda: all(len(lines(logs[n])) >= seen[n] + 15 for n in names),
                 "15 acknowledged checkpoints of every job", d)
        time.sleep(rng.uniform(0, 0.2))
        d.proc.send_signal(signal.SIGKILL)
        assert d.wait_exit() == -signal.SIGKILL
        ids = [r["start"] for n in names for r in lines(logs[n])[seen[n]:] if "start" in r]
        assert len(ids) == len(names) and min(ids) > ids_before, (cycle, ids, ids_before)
        ids_before = max(ids)
    d = restartable(jobs)   # the last kill too is checked against what the next start reads
    wait_for(lambda: all(sum("start" in r for r in lines(logs[n])) == 5 for n in names),
             "the fifth start of every job", d)
    for name in names:
        records, checked = lines(logs[name]), 0
        for i, record in enumerate(records):
            if "start" not in record or i == 0:
                continue
            acked = [r["ack"] for r in records[:i] if "ack" in r]
            state = record["state"]
            assert acked[-1] <= state["n"] <= acked[-1] + 1, (name, acked[-5:], state)
            assert state == {"n": state["n"], "square": state["n"] ** 2,
                             "tail": list(range(state["n"] % 40))}, (name, state)
            checked += 1
        assert checked == 4


BAD_STATE = """
    import socket

    from cosched import StateError

    async def main(task):
        task.state["good"] = task.state.get("good", 0) + 1
        await task.checkpoint()
        task.state["conn"] = socket.socket()
        await task.checkpoint()
"""


def test_a_checkpoint_of_state_json_cannot_hold_fails_naming_the_key(restartable):
    d = restartable({"bad": BAD_STATE}, {"job": {"bad": {"restart": "no"}}})
    task = d.wait_task("bad", lambda t: t["state"] == "failed", "failed")
    assert task["error"].startswith("StateError: task.state['conn'] is a socket; task.state "
                                    "holds only JSON values"), task["error"]
    shown = d.ok("show", "bad")
    assert "await task.checkpoint()" in shown["traceback"]
    logged = [r for r in d.log_records() if r.get("event", "").startswith("task.state not saved")]
    assert logged and "task.state['conn'] is a socket" in logged[0]["error"]   # at its end
    d.ok("start", "bad")   # the last good state is what the next task gets
    d.wait_status(lambda s: len([t for t in s["tasks"] if t["state"] == "failed"]) == 2,
                  "the second task failed too")
    assert d.ok("show", "bad")["task_state"]["good"] == 2


# -- history --------------------------------------------------------------------------

ASKER = """
    from cosched import coro

    async def main(task):
        answer = await coro.yield_("q?")
        if answer == "boom":
            raise ValueError("boom")
        return answer
"""


def test_history_of_a_task_with_values_errors_and_tracebacks_survives_a_restart(restartable):
    config = {"job": {"asker": {"restart": "on-failure"}}}
    d = restartable({"asker": ASKER}, config)
    task = d.wait_task("asker", lambda t: t["state"] == "suspended", "suspended")
    d.ok("resume", "asker", "boom")          # fails, restarts, asks again
    d.wait_task("asker", lambda t: t["state"] == "suspended" and t["restarts"] == 1, "again")
    assert d.ok("resume", "asker", '"Ada"')["outcome"] == "finished"
    graceful_stop(d)
    d = restartable({"asker": ASKER}, config)
    events = d.ok("history", str(task["id"]))["events"]
    assert [e["event"] for e in events] == ["started", "suspended", "resumed", "failed",
                                            "restarting", "started", "suspended", "resumed",
                                            "finished"]
    assert events[1]["values"] == ["q?"] and events[2]["values"] == ["boom"]
    assert events[3]["error"] == "ValueError: boom"
    assert 'raise ValueError("boom")' in events[3]["traceback"]
    assert events[8]["result"] == "Ada" and events[7]["values"] == ["Ada"]
    assert {e["task"] for e in events} == {task["id"]} and events[0]["name"] == "asker"
    shown = d.ok("show", str(task["id"]))    # ended before the restart: from the history
    assert (shown["state"], shown["result"], shown["recorded"]) == ("finished", "Ada", True)
    assert newest(d.status(), "asker")["id"] > task["id"]   # ids are not used again
    # human output: one line per event, the traceback under its event
    rc, text, err = d.ctl("history", "asker", json_output=False)
    assert rc == 0, err
    assert text.splitlines()[0].split() == ["TIME", "TASK", "NAME", "JOB", "EVENT", "DETAIL"]
    assert any(line.split()[5:] == ["suspended", '"q?"'] for line in text.splitlines()[1:])
    assert '    ValueError: boom' in text.splitlines()
    # --limit, --since, unknown targets
    last = d.ok("history", "asker", "--limit", "2")
    assert last["more"] and [e["event"] for e in last["events"]] == ["started", "suspended"]
    assert d.ok("history", "--since", "2999-01-01")["events"] == []
    assert d.ok("history", "--since", "10m")["events"]
    rc, out, err = d.ctl("history", "nosuch")
    assert rc == 1 and "no-such-task: no task or job 'nosuch' in the history" in err
    rc, out, err = d.ctl("history", "--since", "yesterday-ish")
    assert rc == 2 and "not a time or an age: 'yesterday-ish'" in err


def test_history_retention_keeps_at_most_max_rows(restartable):
    spawner = """
        async def child(task):
            return 1

        async def main(task):
            for _ in range(1500):
                await task.spawn(child).join()
            return "done"
    """
    d = restartable({"many": spawner}, {"history": {"max_rows": 1000}})
    d.wait_task("many", lambda t: t["state"] == "finished", "finished")
    events = d.ok("history", "--limit", "100000")["events"]
    assert 1000 <= len(events) <= 2100, len(events)   # pruned every 1000 new events
    assert events[-1]["event"] == "finished" and events[-1]["name"] == "many"
    assert not any(e["event"] == "job-loaded" for e in events), "the oldest were not pruned"


# -- a graceful stop interrupts ---------------------------------------------------------

def test_a_task_suspended_at_a_stop_is_interrupted_and_its_job_asks_again(restartable):
    ask = (ROOT / "jobs" / "ask.py").read_text()
    config = {"job": {"ask": {"autostart": False}}}   # started by hand, restarted by the stop
    d = restartable({"ask": ask}, config)
    d.ok("start", "ask")
    d.wait_task("ask", lambda t: t["state"] == "suspended", "asking")
    assert d.ok("resume", "ask", "Alice")["values"] == ["Another? (yes/no)"]
    old = newest(d.status(), "ask")
    graceful_stop(d)
    d = restartable({"ask": ask}, config)
    new = d.wait_task("ask", lambda t: t["state"] == "suspended", "asking again")
    assert new["id"] > old["id"]
    assert new["yielded"] == ["Another? (yes/no)"]          # the open question, from the state
    assert d.ok("show", "ask")["task_state"] == {"names": ["Alice"], "asking": "again"}
    shown = d.ok("show", str(old["id"]))
    assert (shown["state"], shown["yielded"]) == ("interrupted", ["Another? (yes/no)"])
    last = d.ok("history", str(old["id"]))["events"][-1]
    assert (last["event"], last["values"]) == ("interrupted", ["Another? (yes/no)"])
    assert any(r.get("event") == "asking again after a restart" for r in d.log_records())
    assert d.ok("resume", "ask", "no")["values"] == [["Alice"]]
    graceful_stop(d)                                   # ended: nothing to pick up
    d = restartable({"ask": ask}, config)
    time.sleep(0.3)
    assert d.status()["tasks"] == [], "a finished job was started again"


# -- bad input at start-up ----------------------------------------------------------------

MARKER = """
    from pathlib import Path

    Path({path!r}).write_text("ran")

    async def main(task):
        pass
"""


def test_a_database_file_that_is_not_a_database_stops_startup_and_is_kept(restartable,
                                                                        tmp_path):
    marker = tmp_path / "ran"
    state = tmp_path / "d" / "state"
    state.mkdir(parents=True)
    (state / "cosched.db").write_bytes(b"not sqlite at all\n" * 100)
    d = restartable({"m": MARKER.format(path=str(marker))}, wait=False)
    assert d.wait_exit() == 2
    moved = [p for p in state.iterdir() if p.name.startswith("cosched.db.corrupt-")]
    assert len(moved) == 1 and moved[0].read_bytes() == b"not sqlite at all\n" * 100
    assert (f"coschedd: cannot open the state database: the state database {state / 'cosched.db'}"
            f" is not usable (file is not a database); it was moved to {moved[0]}") in d.log_text()
    assert not marker.exists(), "a job ran"
    d = restartable({"m": MARKER.format(path=str(marker))})   # the next start begins anew
    wait_for(marker.exists, "the job to run", d)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run the daemon as another uid")
def test_a_state_folder_the_daemon_cannot_write_stops_startup(restartable, tmp_path,
                                                              monkeypatch):
    import test_daemon
    wrapper = tmp_path / "as-nobody"
    wrapper.write_text(f"#!/bin/sh\nexec setpriv --reuid={NOBODY} --regid={NOBODY} "
                       f"--clear-groups {test_daemon.COSCHEDD} \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setattr(test_daemon, "COSCHEDD", str(wrapper))
    base = Path(tempfile.mkdtemp(prefix="cosched-state-"))   # a way in for uid NOBODY
    os.chmod(base, 0o755)
    root = base / "d"
    try:
        for folder, owner in (("run", NOBODY), ("state", 0)):
            (root / folder).mkdir(parents=True, mode=0o755)
            os.chown(root / folder, owner, owner)
        marker = base / "ran"
        d = restartable({"m": MARKER.format(path=str(marker))}, wait=False, base=base)
        assert d.wait_exit() == 2
        text, ran = d.log_text(), marker.exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert (f"coschedd: cannot open the state database: the state folder {root / 'state'} is "
            f"not writable by uid {NOBODY}") in text, text
    assert not ran, "a job ran"


def test_a_bad_schedule_stops_startup_before_any_job_runs(restartable, tmp_path):
    marker = tmp_path / "ran"
    d = restartable({"m": MARKER.format(path=str(marker)), "t": MARKER.format(path=str(marker))},
                    {"job": {"t": {"every": 0}}}, wait=False)
    assert d.wait_exit() == 2
    assert ("coschedd: configuration error: job.t.every: 0 is not more than 0 seconds; an "
            "interval must be") in d.log_text(), d.log_text()
    assert not marker.exists(), "a job ran"


def with_recorder(tmp_path, jobs: dict[str, str], extra: str, scenario) -> None:
    """In process: a real Supervisor of ``jobs`` with a Store and a Recorder of its
    history, and ``await scenario(sup, store, recorder)`` beside them (within WAIT)."""
    import trio
    from textwrap import dedent

    from cosched.config import load_config
    from cosched.recorder import Recorder
    from cosched.store import Store
    from cosched.supervisor import Supervisor

    (tmp_path / "jobs").mkdir()
    for name, source in jobs.items():
        (tmp_path / "jobs" / f"{name}.py").write_text(dedent(source))
    (tmp_path / "c.toml").write_text('[daemon]\njobs_dir = "jobs"\nruntime_dir = "run"\n'
                                     'state_dir = "state"\n' + extra)
    sup = Supervisor(load_config(tmp_path / "c.toml"))

    async def main():
        store = Store(sup.config.state_dir)
        initial = store.open()
        store.start()
        recorder = Recorder(store, initial, sup, history=True)
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            with trio.fail_after(WAIT):
                await scenario(sup, store, recorder)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_checkpoint_whose_commit_fails_raises_state_error(tmp_path):
    """The database connection is closed under the writer, so the next commit fails for
    real."""
    import trio

    saver = """
        from cosched import StateError, coro

        async def main(task):
            task.state["n"] = 1
            await task.checkpoint()
            await coro.yield_("saved once")
            task.state["n"] = 2
            try:
                await task.checkpoint()
            except StateError as e:
                return str(e)
            return "no error"
    """
    out = {}

    async def scenario(sup, store, recorder):
        while "saver" not in sup.job_table or sup.reg.roots_of("saver") == [] or \
                sup.find("saver").state != "suspended":
            await trio.sleep(0.01)
        assert store.stats()["commits"] >= 1 and store.stats()["failed_commits"] == 0
        await recorder.read(lambda conn: conn.close(), "the test")   # in the writer
        out["answer"] = await sup.resume("saver", [], WAIT)
        out["stats"] = store.stats()

    with_recorder(tmp_path, {"saver": saver}, "", scenario)
    assert out["answer"]["outcome"] == "finished"
    assert out["answer"]["values"][0].startswith(
        "could not save task.state of saver (#1) in the state database: Cannot operate on a "
        "closed database"), out["answer"]
    assert out["stats"]["failed_commits"] >= 1


def test_history_of_a_name_no_one_has_is_refused_without_looking_at_every_task(tmp_path):
    """An unknown target is looked up by id and name in the registry (the test makes
    walking the tasks fail); known ones are answered."""
    import trio

    from cosched.protocol import ControlError
    from test_supervisor import MANY

    class Untouchable(dict):
        def values(self):
            raise AssertionError("every task looked at")
    out = {}

    async def scenario(sup, store, recorder):
        while len(sup.tasks) < 6:
            await trio.sleep(0.01)
        sup.tasks = sup.reg.tasks = Untouchable(sup.reg.tasks)
        for target in ("nosuch", 99, "many.3", 4, "many"):
            try:
                found = await recorder.history(target, None, 10)
                out[target] = ("known", found["recording"])
            except ControlError as e:
                out[target] = ("refused", e.code)

    with_recorder(tmp_path, {"many": MANY}, "[job.many]\nconfig = { n = 5 }\n", scenario)
    assert out["nosuch"] == out[99] == ("refused", "no-such-task")
    assert out["many.3"] == out[4] == out["many"] == ("known", True)


def test_a_long_history_answer_comes_whole_and_in_order(restartable):
    from test_daemon import WIDE

    d = restartable({"wide": WIDE})
    whole = wait_for(lambda: (h := d.ok("history", "wide", "--limit", "5000"))["events"] and
                     sum(e["event"] == "started" for e in h["events"]) == 1201 and h,
                     "1,201 starts recorded", d)   # more than a chunk: sent in pieces
    events = whole["events"]
    assert whole["more"] is False and whole["recording"] is True
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert sorted(e["task"] for e in events if e["event"] == "started") == list(range(1, 1202))
    last = d.ok("history", "wide", "--limit", "3")
    assert last["more"] is True and last["events"] == events[-3:]


def test_a_first_start_is_recorded_from_the_task_and_a_restart_with_its_time(tmp_path):
    """A task's first life is queued as the task alone: its row and its "started" event
    take the time it was made; a restart's event takes the restart's time, its row the
    count."""
    import trio

    from cosched.store import task_query
    from test_supervisor import MANY
    out = {}

    async def scenario(sup, store, recorder):
        while len(sup.tasks) < 4:
            await trio.sleep(0.01)
        child = sup.reg.find("many.3")
        out["made"], out["root made"] = child.started_at, sup.tasks[1].started_at
        sup.tasks[1].restarts = 2   # as if the job's own task had begun its third life
        recorder.on_task(12345.5, "started", sup.tasks[1], {"restarts": 2})
        out["child"] = await recorder.read(task_query(3), "a task")
        out["root"] = await recorder.read(task_query(1), "a task")
        out["events"] = (await recorder.history(None, None, 100))["events"]
        out["by name"] = (await recorder.history("many.3", None, 100))["events"]
        out["kept names"] = await recorder.read(
            lambda conn: dict(conn.execute("SELECT id, name FROM tasks")), "the names")

    with_recorder(tmp_path, {"many": MANY}, "[job.many]\nconfig = { n = 3 }\n", scenario)
    child, root = out["child"], out["root"]
    assert (child["name"], child["job"], child["parent"], child["restarts"]) == (
        "many.3", "many", 1, 0)
    assert child["started"] == pytest.approx(out["made"], abs=0.01)
    assert root["restarts"] == 2   # and its first life's time
    assert root["started"] == pytest.approx(out["root made"], abs=0.01)
    started = [(e["task"], e["time"]) for e in out["events"] if e["event"] == "started"]
    assert dict(started)[3] == pytest.approx(out["made"], abs=0.01)
    assert started[-1] == (1, 12345.5)
    # a child named <job>.<id> keeps '' in its row, and is found and shown by that name
    assert out["kept names"] == {1: "many", 2: "", 3: "", 4: ""}
    assert [(e["task"], e["name"], e["event"]) for e in out["by name"]] == [
        (3, "many.3", "started")]


def test_show_of_an_id_beyond_any_task_is_no_such_task(restartable):
    """An id too large for the database (but short enough to read as one) names no
    task: the usual refusal, not an error of the database."""
    d = restartable({"idle": "import trio\n\nasync def main(task):\n    await trio.sleep(3600)\n"})
    for ref in ("9223372036854775808", "9999999999999999999"):
        rc, _, err = d.ctl("show", ref)
        assert rc == 1 and "no-such-task" in err and "database" not in err, err
    rc, _, err = d.ctl("show", "9223372036854775807")   # the largest id: looked up, not found
    assert rc == 1 and "no-such-task" in err, err


def test_a_failed_read_of_the_database_says_it_could_not_read(tmp_path):
    from cosched.recorder import StateError
    from test_supervisor import MANY
    out = {}

    async def scenario(sup, store, recorder):
        try:
            await recorder.read(lambda conn: conn.execute("SELECT no_such_column FROM tasks"),
                                "the history")
        except StateError as e:
            out["error"] = str(e)

    with_recorder(tmp_path, {"many": MANY}, "[job.many]\nconfig = { n = 1 }\n", scenario)
    assert out["error"].startswith("could not read the history from the state database: ")
    assert "no_such_column" in out["error"]


def test_a_name_no_database_can_hold_is_no_such_task(restartable):
    """A lone surrogate (valid in a JSON string) names nothing the history stored: show
    and history refuse it as unknown, not with an error of the database."""
    import socket

    d = restartable({"idle": "import trio\n\nasync def main(task):\n    await trio.sleep(3600)\n"})
    for n, (cmd, arg) in enumerate((("show", "task"), ("history", "target"))):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(WAIT)
            s.connect(str(d.socket))
            s.sendall(b'{"id": %d, "cmd": "%s", "args": {"%s": "job\\udcff"}}\n'
                      % (n, cmd.encode(), arg.encode()))
            answer = json.loads(s.makefile("rb").readline())
        assert answer["ok"] is False and answer["error"]["code"] == "no-such-task", answer
    assert d.ok("ping")["pong"] is True


def test_after_a_kill_the_start_names_twenty_lost_tasks_and_counts_them_all(restartable):
    """A million lost tasks would be one log line of megabytes: the warning names the
    first twenty ids and counts every one; the history has them all."""
    many = ("import trio\n\nasync def child(task):\n    await trio.sleep(3600)\n\n"
            "async def main(task):\n    for _ in range(30):\n        task.spawn(child)\n"
            "    await trio.sleep(3600)\n")
    d = restartable({"many": many})
    d.wait_status(lambda s: len(s["tasks"]) == 31, "31 tasks")
    wait_for(lambda: sum(e["event"] == "started" for e in d.ok(
        "history", "many", "--limit", "100")["events"]) == 31, "31 starts recorded", d)
    d.proc.send_signal(signal.SIGKILL)
    assert d.wait_exit() == -signal.SIGKILL
    d = restartable({"many": many})
    warning = [json.loads(line) for line in d.log_text().splitlines()
               if "recorded as lost" in line]
    assert len(warning) == 1, d.log_tail()
    assert warning[0]["tasks"] == list(range(1, 21)) and warning[0]["count"] == 31
    lost = [e for e in d.ok("history", "many", "--limit", "200")["events"] if e["event"] == "lost"]
    assert sorted(e["task"] for e in lost) == list(range(1, 32))
