"""Per-task log buffers and the stdout/stderr proxy (cosched.tasklog): in-process with
real trio tasks and threads, and end to end with `coschedctl logs [-f]` against a real
coschedd."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import threading
import time
from types import SimpleNamespace

import pytest
import trio

from cosched.tasklog import MAX_TEXT, OutputProxy, TaskLogs, enter
from test_daemon import BASE_CONFIG, COSCHEDCTL, WAIT, Daemon, daemon, raw_request  # noqa: F401


def fake_task(tid, name="t", job="j", state="running"):
    """What TaskLogs reads of a task: id, name, job name, state, error, ctx.log."""
    logged = []
    log = SimpleNamespace(info=lambda line, **kw: logged.append((line, kw)))
    return SimpleNamespace(id=tid, name=name, job=SimpleNamespace(name=job), state=state,
                           error=None, ctx=SimpleNamespace(log=log), logged=logged)


def logs_of(*tasks, size=5):
    by_id = {t.id: t for t in tasks}
    return TaskLogs(size, by_id.get)


def messages(items):
    return [i["message"] for i in items]


# -- in process ---------------------------------------------------------------------

def test_records_are_filed_by_task_id_and_bounded():
    a, b = fake_task(1, "a"), fake_task(2, "b")
    logs = logs_of(a, b, size=3)
    for n in range(5):
        logs.capture({"event": f"a{n}", "level": "info", "id": 1, "task": "a", "n": n})
    logs.capture({"event": "b0", "level": "warning", "id": 2, "task": "b"})
    logs.capture({"event": "not a task's", "level": "info"})
    logs.capture({"event": "unknown task", "level": "info", "id": 99})
    assert messages(logs.records([1], 10)) == ["a2", "a3", "a4"]
    last = logs.records([1], 1)[0]
    assert (last["task"], last["id"], last["job"], last["source"], last["level"],
            last["fields"]) == ("a", 1, "j", "log", "info", {"n": 4})
    assert messages(logs.records([1, 2], 2)) == ["a4", "b0"]
    assert logs.records([1], 0) == []


def test_a_jobs_newest_records_are_the_brute_force_ones_found_in_a_few_buffers():
    import random

    rng = random.Random(7)
    tasks = [fake_task(i, f"w.{i}", job="w" if i % 5 else "other") for i in range(1, 301)]
    logs = logs_of(*tasks, size=4)
    written = []   # (time, task id, message): every record of job w, in time order
    for n in range(3000):   # distinct times, tasks written in random order and amounts
        t = rng.choice(tasks)
        logs.add(t.id, (1000.0 + n, "stdout", None, f"m{n}", None))
        if t.job.name == "w":
            written.append((t.id, f"m{n}"))
    kept = [(tid, m) for i, (tid, m) in enumerate(written)   # the newest 4 of each task
            if sum(1 for later in written[i + 1:] if later[0] == tid) < 4]
    for lines in (1, 3, 10, 57, 400, 5000):
        got = logs.job_records("w", lines)
        assert [(r["id"], r["message"]) for r in got] == kept[-lines:], lines
        assert {r["job"] for r in got} == {"w"}
    looks = list(logs.search("w", 3))
    assert looks.count(None) <= 4 and len([x for x in looks if x is not None]) == 3
    assert logs.job_records("w", 0) == [] and logs.job_records("nothing", 5) == []


def test_a_long_search_of_a_jobs_records_gives_no_buffer_twice_when_written_meanwhile(
        monkeypatch):
    from cosched import tasklog

    monkeypatch.setattr(tasklog, "CHUNK", 2)   # the first 2 from the index, then a copy
    tasks = [fake_task(i, f"c.{i}") for i in range(1, 7)]
    logs = logs_of(*tasks, size=3)
    for i, t in enumerate(tasks):
        logs.add(t.id, (float(i), "stdout", None, f"old {i}", None))
    search = logs.search("j", 10)
    taken = [next(search), next(search)]   # buffers 6 and 5 read; the rest not listed yet
    logs.add(6, (10.0, "stdout", None, "new 6", None))   # written meanwhile: to the end
    logs.add(2, (11.0, "stdout", None, "new 2", None))
    found = [x for x in [*taken, *search] if x is not None]
    messages_found = [r[3] for r, _, _ in found]
    assert len(messages_found) == len(set(messages_found)), messages_found
    # every record there when the search began; of the new, the one in a buffer not
    # read yet (buffer 6 was read before "new 6" came)
    assert sorted(messages_found) == sorted([f"old {i}" for i in range(6)] + ["new 2"])


def test_a_forgotten_buffer_leaves_the_jobs_search():
    a, b = fake_task(1, "a"), fake_task(2, "b")
    logs = logs_of(a, b)
    logs.add(1, (1.0, "stdout", None, "a0", None))
    logs.add(2, (2.0, "stdout", None, "b0", None))
    logs._forget(2)
    assert messages(logs.job_records("j", 5)) == ["a0"]
    logs._forget(1)
    assert logs._written == {} and logs.job_records("j", 5) == []


def test_a_jobs_records_answer_comes_in_chunks_with_the_same_records():
    from test_eventfeed import wire

    tasks = [fake_task(i, f"c.{i}") for i in range(1, 2501)]
    logs = logs_of(*tasks, size=2)
    for i, t in enumerate(tasks):
        logs.add(t.id, (float(i), "stdout", None, f"line {i}", None))
    for lines in (5, 2500, 3000):
        assert wire(logs.job_answer("j", lines)) == {"records": logs.job_records("j", lines)}
    assert messages(wire(logs.job_answer("j", 2))["records"]) == ["line 2498", "line 2499"]


def test_a_reload_that_keeps_task_lines_leaves_the_buffers_alone():
    a = fake_task(1, "a")
    logs = logs_of(a, size=3)
    for n in range(5):
        logs.add(1, (float(n), "stdout", None, f"a{n}", None))
    records = logs._buffers[1].records
    logs.resize(3)   # every reload passes the setting: the same, nothing is rebuilt
    assert logs._buffers[1].records is records
    logs.resize(2)
    assert logs._buffers[1].records.maxlen == 2 and messages(logs.records([1], 5)) == ["a3", "a4"]


def test_field_values_are_kept_as_bounded_text():
    class Hostile:
        def __repr__(self):
            raise RuntimeError("no")

    t = fake_task(1)
    logs = logs_of(t)
    logs.capture({"event": "x" * (MAX_TEXT * 2), "id": 1, "obj": Hostile(), "ok": True,
                  "big": "y" * (MAX_TEXT * 2)})
    record = logs.records([1], 1)[0]
    assert len(record["message"]) == MAX_TEXT
    assert record["fields"]["obj"] == "<unrepresentable Hostile>"
    assert record["fields"]["ok"] is True and len(record["fields"]["big"]) == MAX_TEXT


def test_printed_text_becomes_lines_and_is_logged_once():
    t = fake_task(1)
    logs = logs_of(t)
    logs.write(t, "stdout", "one\ntw")
    logs.write(t, "stdout", "o\n")
    logs.write(t, "stderr", "x" * (MAX_TEXT + 10) + "\n")
    logs.write(t, "stdout", "unfinished")
    items = logs.records([1], 10)
    assert [(i["source"], i["message"]) for i in items[:2]] == [("stdout", "one"),
                                                               ("stdout", "two")]
    assert [len(i["message"]) for i in items[2:]] == [MAX_TEXT, 10]
    assert [line for line, _ in t.logged] == ["one", "two", "x" * MAX_TEXT, "x" * 10]
    assert all(kw["_printed"] for _, kw in t.logged)
    # the logged copy comes back through the capture hook: not filed twice
    logs.capture({"event": "one", "id": 1, "stream": "stdout", "_printed": True})
    assert len(logs.records([1], 10)) == 4
    t.state = "finished"
    logs.ended(t)  # the unfinished line is written out at the end
    assert logs.records([1], 1)[0]["message"] == "unfinished"


def test_followers_get_new_records_and_the_end_of_their_task():
    a, b = fake_task(1, "a"), fake_task(2, "b", job="k")

    async def main():
        logs = logs_of(a, b)
        logs.start()
        task_stream = logs.follow(tid=1, backlog=[], queue=10)
        job_stream = logs.follow(job="k", backlog=[], queue=10)
        logs.capture({"event": "for a", "id": 1})
        logs.capture({"event": "for b", "id": 2})
        a.state, a.error = "failed", "ValueError: x"
        logs.ended(a)
        got = [item async for item in task_stream]
        job_stream.close()
        return (messages(got), task_stream.result, messages([i async for i in job_stream]),
                logs._by_task, logs._by_job)

    task_items, result, job_items, by_task, by_job = trio.run(main)
    assert task_items == ["for a"]
    assert result == {"ended": "failed", "error": "ValueError: x"}
    assert job_items == ["for b"]
    assert by_task == {} and by_job == {}  # nobody follows: producers pay nothing


def test_nothing_is_kept_while_no_buffer_is_wanted():
    t = fake_task(1)
    logs = logs_of(t, size=0)
    logs.capture({"event": "x", "id": 1})
    assert logs.records([1], 10) == [] and logs._buffers == {}


def test_the_proxy_routes_each_trio_tasks_text_to_its_task():
    a, b = fake_task(1, "a"), fake_task(2, "b")
    logs = logs_of(a, b)
    real = io.StringIO()
    proxy = OutputProxy(real, "stdout", logs)

    async def printer(t, word):
        enter(t)
        for n in range(3):
            print(f"{word} {n}", file=proxy)
            await trio.sleep(0)

    async def main():
        logs.start()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(printer, a, "apple")
            nursery.start_soon(printer, b, "banana")
        print("the daemon's own", file=proxy)

    trio.run(main)
    assert messages(logs.records([1], 10)) == ["apple 0", "apple 1", "apple 2"]
    assert messages(logs.records([2], 10)) == ["banana 0", "banana 1", "banana 2"]
    assert real.getvalue() == "the daemon's own\n"


def test_text_from_a_worker_thread_reaches_its_task_through_the_loop():
    t = fake_task(1)
    logs = logs_of(t)
    proxy = OutputProxy(io.StringIO(), "stderr", logs)
    threads = []

    def in_thread():
        threads.append(threading.get_ident())
        print("from a thread", file=proxy)

    async def main():
        logs.start()
        enter(t)
        stream = logs.follow(tid=1, backlog=[], queue=10)
        await trio.to_thread.run_sync(in_thread)
        with trio.fail_after(WAIT):
            return await stream.__anext__()

    item = trio.run(main)
    assert (item["message"], item["source"]) == ("from a thread", "stderr")
    assert threads and threads[0] != threading.get_ident()


# -- end to end -----------------------------------------------------------------------

class Follower:
    """`coschedctl ARGS` in the background; its stdout lines as they come."""

    def __init__(self, socket, *args):
        self.proc = subprocess.Popen([COSCHEDCTL, "--socket", str(socket), *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     stdin=subprocess.DEVNULL)
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()

    def wait_for(self, predicate, what, timeout=WAIT):
        """Until some line satisfies predicate; that line."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = next((line for line in self.lines if predicate(line)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no line with {what} within {timeout}s; got {self.lines}")
                self.changed.wait(left)

    def wait_exit(self, timeout=WAIT):
        rc = self.proc.wait(timeout)
        self.reader.join(timeout)
        return rc

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)


@pytest.fixture
def followers():
    started = []

    def follow(socket, *args):
        f = Follower(socket, *args)
        started.append(f)
        return f

    yield follow
    for f in started:
        f.stop()


TALKER = """
    import sys

    from cosched import coro

    print("loaded-marker: top level of the job file")

    async def main(task):
        print("before the follow")
        await coro.yield_("go?")
        print("printed after the follow started")
        print("to stderr", file=sys.stderr)
        task.log.info("logged after", n=1)
        await task.run_sync(print, "from a worker thread")
        print("no newline at the end", end="")
        return "done"
"""


QUICK = "async def main(task):\n    print('hi')\n    return 1\n"


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    """One daemon for the end-to-end tests below; each test has its own jobs."""
    jobs = {"talker": TALKER, "talker_json": TALKER, "gather": TALKER, "quick": QUICK}
    daemon = Daemon(tmp_path_factory.mktemp("tasklog"), BASE_CONFIG, jobs, None)
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        daemon.stop()


def test_logs_follow_gets_what_the_job_prints_after_it_started_and_ends_with_the_task(
        d, followers):
    task = d.wait_task("talker", lambda t: t["state"] == "suspended", "suspended")
    follow = followers(d.socket, "logs", "-f", task["id"])
    follow.wait_for(lambda line: line.endswith("talker[%d] stdout: before the follow"
                                               % task["id"]), "the backlog")
    d.ok("resume", "talker")
    for text in ("stdout: printed after the follow started", "stderr: to stderr",
                 "info: logged after n=1", "stdout: from a worker thread",
                 "stdout: no newline at the end", "-- ended: finished --"):
        follow.wait_for(lambda line, text=text: text in line, repr(text))
    assert follow.wait_exit() == 0
    # each printed line also reached the daemon's log, tagged with its task
    printed = [r for r in d.log_records() if r.get("stream") == "stdout"]
    assert {"before the follow", "printed after the follow started"} <= \
        {r["event"] for r in printed if r.get("id") == task["id"]}
    # text written outside any task still reaches the daemon's own stdout
    assert "loaded-marker: top level of the job file" in d.log_text()


def test_logs_of_a_job_gathers_its_tasks_and_json_gives_records(d):
    first = d.wait_task("gather", lambda t: t["state"] == "suspended", "suspended")
    second = d.ok("start", "gather")["task"]
    assert second["state"] == "suspended"
    records = d.ok("logs", "gather", "-n", "50")["records"]
    printed = [(r["id"], r["message"]) for r in records if r["source"] == "stdout"]
    assert (first["id"], "before the follow") in printed
    assert (second["id"], "before the follow") in printed
    times = [r["time"] for r in records]
    assert times == sorted(times)
    only = d.ok("logs", str(second["id"]), "-n", "50")["records"]
    assert {r["id"] for r in only} == {second["id"]}
    assert len(d.ok("logs", "gather", "-n", "1")["records"]) == 1


def test_logs_of_a_missing_task_is_refused_and_of_an_ended_one_ends_at_once(d):
    task = d.wait_task("quick", lambda t: t["state"] == "finished", "finished")
    rc, out, err = d.ctl("logs", "nosuch", json_output=False)
    assert rc == 1 and "no-such-task" in err
    rc, out, err = d.ctl("logs", "-f", str(task["id"]), json_output=False)
    assert rc == 0, err
    assert out.splitlines()[-1] == "-- ended: finished --"
    assert any(line.endswith("stdout: hi") for line in out.splitlines())


def test_logs_follow_in_json_is_one_object_per_line(d, followers):
    task = d.wait_task("talker_json", lambda t: t["state"] == "suspended", "suspended")
    follow = followers(d.socket, "--json", "logs", "-f", "-n", "1", task["id"])
    follow.wait_for(lambda line: True, "the newest past record: the follow is in place")
    d.ok("resume", "talker_json")
    follow.wait_for(lambda line: '"ended"' in line, "the final line")
    assert follow.wait_exit() == 0
    objects = [json.loads(line) for line in follow.lines]
    assert objects[-1] == {"ended": "finished", "error": None}
    assert "printed after the follow started" in [o.get("message") for o in objects[:-1]]


CHATTY = """
    import trio

    async def main(task):
        while True:
            print("x" * 4000)
            await trio.sleep(0.005)
"""


def test_a_follower_that_stops_reading_is_dropped_and_the_daemon_goes_on(daemon):
    d = daemon(jobs={"chatty": CHATTY},
               config={"control": {"send_timeout": 1, "follow_queue": 10}})
    task = d.wait_task("chatty", lambda t: t["steps"] > 10, "printing")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stalled:
        stalled.connect(str(d.socket))
        stalled.sendall(json.dumps({"id": 1, "cmd": "logs", "args": {
            "task": task["id"], "follow": True}}).encode() + b"\n")
        # never reads: the kernel's buffers fill, then the daemon's send times out
        d.wait_status(lambda s: any(r.get("event") == "control peer dropped"
                                    and "TimeoutError" in r.get("error", "")
                                    for r in d.log_records()), "the follower dropped")
        assert raw_request(d.socket, {"id": 2, "cmd": "ping"})["result"]["pong"] is True
        stalled.settimeout(WAIT)
        received = b""
        while chunk := stalled.recv(1 << 20):  # what was sent, then the end
            received += chunk
    lines = received.split(b"\n")
    assert all(json.loads(line)["id"] == 1 for line in lines[:-1])
    assert d.proc.poll() is None
