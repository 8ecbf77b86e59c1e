"""The event history and its followers (cosched.eventfeed): in process on a real Events,
and end to end with `coschedctl events [-f]` against a real coschedd."""

from __future__ import annotations

import json
import signal
import tracemalloc

import pytest
import trio

from cosched import eventfeed
from cosched.eventfeed import CHUNK, COLUMNS, MAX_ITEMS, STRIDE, EventLog, _Ring
from cosched.events import Events
from cosched.feeds import LOOKED, Feed, Stream
from cosched.protocol import Chunked

from test_daemon import BASE_CONFIG, SLEEPER, Daemon, daemon  # noqa: F401
from test_tasklog import followers  # noqa: F401


def announce(events, n, job="j"):
    for i in range(n):
        events.job("job-loaded", f"{job}{i}" if job is None else job, n=i)


def test_history_keeps_the_newest_and_filters_by_job():
    events = Events()
    log = EventLog(events, kept=3)
    announce(events, 5)
    events.job("job-loaded", "other")
    assert [e["n"] for e in log.recent(10, "j")] == [3, 4]
    assert [e.get("n") for e in log.recent(2)] == [4, None]
    assert log.recent(0) == []


def test_the_ring_gives_back_each_event_as_it_was_heard():
    events = Events()
    seen: list[dict] = []
    events.subscribe(seen.append)
    log = EventLog(events, kept=10)
    task = type("T", (), {"name": "t", "id": 1, "job": type("J", (), {"name": "j"}), "state": "s"})
    events.task("started", task, restarts=2)
    events.job("job-loaded", "j", path="/j.py")
    events.task("killed", task, error="boom", traceback=None)
    assert log.recent(10) == seen
    assert [list(e) for e in log.recent(10)] == [list(e) for e in seen]   # key order kept


class Child:
    """A spawned task as events see it: its name made on each read, as Task makes an
    implied name."""

    def __init__(self, id, job="many", parent="many", state="starting"):
        self.id, self.parent, self.state = id, parent, state
        self.job = type("J", (), {"name": job})

    @property
    def name(self):
        return f"{self.parent}.{self.id}"


def test_the_ring_keeps_the_newest_in_order_whatever_their_shape():
    events = Events()
    seen: list[dict] = []
    events.subscribe(seen.append)
    log = EventLog(events, kept=7)
    wide = {f"f{i}": i for i in range(COLUMNS + 3)}   # more fields than a slot holds
    events.task("started", Child(1))                  # a name the id implies
    events.task("started", Child(2, parent="many.1")) # a grandchild: <parent>.<id>, kept
    events.task("started", Child(3, job="other"))     # many.3 of job other: kept
    events.task("failed", Child(4), error="x", **wide)
    events.job("reload", "*")                         # fewer fields than a slot holds
    events.job("job-loaded", "j", **wide)
    odd = {"event": "odd", "time": "not first"}
    log._heard(odd)                                   # another form: kept whole
    seen.append(odd)
    events.task("killed", Child(5))
    assert log.recent(10) == seen[1:]                 # the first went out of the ring
    assert [list(e) for e in log.recent(10)] == [list(e) for e in seen[1:]]
    assert log.recent(1)[0]["task"] == "many.5" and log.recent(10)[0]["task"] == "many.1.2"
    assert [e["id"] for e in log.recent(10, "other")] == [3]


def test_a_resized_ring_keeps_the_newest_events_it_can():
    events = Events()
    log = EventLog(events, kept=4)
    for i in range(1, 7):
        events.task("started", Child(i))
    ring = log._ring
    log.resize(4)   # every reload passes the setting: the same, the ring stays
    assert log._ring is ring
    log.resize(2)
    assert [e["id"] for e in log.recent(10)] == [5, 6]
    events.task("started", Child(7))
    log.resize(5)
    events.task("started", Child(8))
    assert [e["id"] for e in log.recent(10)] == [6, 7, 8]
    assert [e["task"] for e in log.recent(10)] == ["many.6", "many.7", "many.8"]
    log.resize(0)
    events.task("started", Child(9))
    assert log.recent(10) == [] and not events


def test_a_ring_larger_than_its_first_slots_grows_then_writes_over_the_oldest(monkeypatch):
    monkeypatch.setattr(eventfeed, "FIRST_SLOTS", 2)
    ring = _Ring(5)
    events = Events()
    events.subscribe(ring.append)
    for i in range(1, 4):
        events.task("started", Child(i))
    assert [e["id"] for e in ring] == [1, 2, 3]
    for i in range(4, 9):
        events.task("started", Child(i))
    assert [e["id"] for e in ring] == [4, 5, 6, 7, 8] and len(ring._times) == 5


def test_a_ring_of_a_thousand_spawns_costs_under_a_hundred_bytes_an_event():
    # a tuple of the fields, a float and the name string were 196 bytes an event
    children = [Child(1000 + i) for i in range(1000)]
    events = Events()
    events.task("started", children[0], restarts=0)   # (the shape is made once per process)
    tracemalloc.start()
    try:
        ring = _Ring(1000)
        events.subscribe(ring.append)
        for child in children:   # as the supervisor announces a start
            events.task("started", child, restarts=0)
        size = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(ring) == 1000 and size / 1000 < 100
    assert [e["task"] for e in ring][-1] == "many.1999"


def test_the_ring_keeps_a_spawned_tasks_event_without_making_its_name():
    from cosched.registry import Task

    class Named(Task):
        __slots__ = ("made",)

        @property
        def name(self):
            self.made = getattr(self, "made", 0) + 1
            return super().name

    job = type("J", (), {"name": "many"})
    root = Task(1, "many", job, None, None, (), None)
    other = Task(2, "many.x", job, None, None, (), None)
    child, grandchild = Named(3, None, job, None, None, (), root), Named(4, None, job, None,
                                                                       None, (), other)
    events = Events()
    log = EventLog(events, kept=10)
    events.task("started", child, restarts=0)
    events.task("started", grandchild, restarts=0)
    events.task("started", root, restarts=1)
    assert not hasattr(child, "made") and not hasattr(grandchild, "made")
    ring = log._ring
    assert ring._slots[2] is eventfeed._IMPLIED and ring._slots[2 + STRIDE] == "many.x.4"
    assert [(e["task"], e["id"], e["restarts"]) for e in log.recent(10)] == [
        ("many.3", 3, 0), ("many.x.4", 4, 0), ("many", 1, 1)]


def wire(answer):
    """An answer as a client reads it: one JSON line (a Chunked one sent in pieces)."""
    if isinstance(answer, Chunked):
        return json.loads(b"".join(answer.pieces(1)))["result"]
    return json.loads(json.dumps(answer))


def spawned(events, n, rare_every=0):
    for i in range(1, n + 1):
        events.task("started", Child(i, job="rare" if rare_every and i % rare_every == 0
                                     else "many"))


def test_the_newest_are_searched_for_from_the_newest_and_looks_are_told():
    events = Events()
    log = EventLog(events, kept=10)
    spawned(events, 12, rare_every=4)   # kept: 3..12; of rare: 4, 8, 12
    ring = log._ring
    looks = list(ring.newest(2, "rare"))
    assert [ring.event(k)["id"] for k in looks if k is not None] == [12, 8]
    assert looks.count(None) == 5   # 12, 11, 10, 9, 8 looked at
    assert [ring.event(k)["id"] for k in ring.newest(5, "rare") if k is not None] == [12, 8, 4]
    assert [ring.event(k)["id"] for k in ring.newest(9, before=5) if k is not None] == [5, 4, 3]
    assert ring.event(0) is None and ring.event(12) is None and ring.job_of(1) is None
    assert [e["id"] for e in log.recent(2, "rare")] == [8, 12]


def test_a_long_ring_answers_a_chunk_at_a_time_the_same_events(monkeypatch):
    events = Events()
    log = EventLog(events, kept=5 * CHUNK)
    spawned(events, 3 * CHUNK, rare_every=7)
    events.job("reload", "*")
    for lines, job in ((10, None), (CHUNK + 5, None), (5 * CHUNK, None), (3, "rare"),
                       (5 * CHUNK, "rare"), (5, "*"), (5, "nothing")):
        answer = log.answer(lines, job)
        assert isinstance(answer, Chunked)
        assert wire(answer) == {"events": wire(log.recent(lines, job))}
    assert [e["id"] for e in wire(log.answer(2, "rare"))["events"]] == [2989, 2996]
    assert len(wire(log.answer(5 * CHUNK))["events"]) == 3 * CHUNK + 1
    small = EventLog(events, kept=CHUNK)
    assert not isinstance(small.answer(10), Chunked)


def test_events_written_over_while_an_answer_is_sent_are_left_out():
    events = Events()
    log = EventLog(events, kept=2 * CHUNK)
    spawned(events, 2 * CHUNK)
    pieces = log.answer(2 * CHUNK).pieces(1)
    sent = [next(pieces) for _ in range(4)]   # the opening, the search, the oldest chunk
    for i in range(1, CHUNK + 2):             # new events write over the next chunk's
        events.task("finished", Child(10_000 + i))
    got = json.loads(b"".join(sent + list(pieces)))["result"]["events"]
    ids = [e["id"] for e in got]
    assert ids[:CHUNK] == list(range(1, CHUNK + 1)) and len(ids) < 2 * CHUNK
    assert all(e["event"] == "started" for e in got) and ids == sorted(ids)


def test_a_follower_gets_the_newest_searched_lazily_and_no_event_twice():
    events = Events()
    log = EventLog(events, kept=5 * CHUNK)
    spawned(events, 4 * CHUNK, rare_every=1000)

    async def main():
        stream = log.follow(2, "rare", queue=10)
        events.task("started", Child(99_000, job="rare"))   # after the follow: the feed's
        got = [await stream.__anext__() for _ in range(3)]
        stream.close()
        return [e["id"] for e in got]

    assert trio.run(main) == [3000, 4000, 99_000]


def test_a_stream_lets_the_loop_run_while_its_backlog_is_searched():
    turns = []

    async def main():
        async def other():
            while True:
                turns.append(len(turns))
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            await trio.lowlevel.checkpoint()
            stream = Stream(Feed(), [LOOKED] * 10_000 + ["found"])
            before = len(turns)
            item = await stream.__anext__()
            nursery.cancel_scope.cancel()
        return item, len(turns) - before

    item, ran = trio.run(main)
    assert item == "found" and ran >= 5   # a turn at least every LOOKS looks


def test_job_values_are_stored_bounded_and_other_listeners_see_them_as_sent():
    events = Events()
    seen = []
    log = EventLog(events, kept=10)
    events.subscribe(seen.append)
    huge, nested = list(range(MAX_ITEMS * 10)), [[[[[[1]]]]]]

    class Unprintable:
        def __repr__(self):
            raise ValueError("no")

    task = type("T", (), {"name": "t", "id": 1, "job": type("J", (), {"name": "j"}), "state": "s"})
    events.task("suspended", task, values=[huge, nested, Unprintable(), "x"])
    stored = log.recent(1)[0]["values"]
    assert isinstance(stored[0], str) and stored[0].startswith("[0, 1, 2")
    assert stored[1] == [[[["[[1]]"]]]] or isinstance(stored[1], list)
    assert stored[2] == "<unrepresentable Unprintable>" and stored[3] == "x"
    assert seen[0]["values"][0] is huge  # the copy is ours only


def test_without_history_nothing_listens_until_someone_follows():
    events = Events()
    log = EventLog(events, kept=0)
    assert not events  # emitting costs one truth test

    async def main():
        stream = log.follow(10, None, queue=10)
        assert events
        events.job("job-loaded", "a")
        item = await stream.__anext__()
        stream.close()
        return item

    assert trio.run(main)["job"] == "a"
    assert not events


def test_a_follower_of_one_job_hears_only_that_job():
    events = Events()
    log = EventLog(events, kept=10)

    async def main():
        stream = log.follow(0, "b", queue=10)
        events.job("job-loaded", "a")
        events.job("job-loaded", "b")
        log.close()
        return [e["job"] async for e in stream], stream.result

    assert trio.run(main) == (["b"], {"ended": "coschedd is stopping"})


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    jobs = {"sleeper": SLEEPER, "victim": SLEEPER, "quick": "async def main(task):\n    return 7\n"}
    daemon = Daemon(tmp_path_factory.mktemp("events"), BASE_CONFIG, jobs, None)
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        daemon.stop()


def test_events_follow_sees_a_kill(d, followers):
    task = d.wait_task("victim", lambda t: t["state"] == "waiting", "waiting")
    follow = followers(d.socket, "events", "-f", "-n", "1")
    # the newest past event comes first, taken together with the subscription: once
    # it is printed, every later event reaches this follower
    follow.wait_for(lambda line: True, "the newest past event")
    d.ok("kill", "victim")
    line = follow.wait_for(lambda line: " killed victim[" in line, "the kill")
    assert f"victim[{task['id']}] job victim killed" in line


def test_events_history_in_json_and_by_job(d):
    d.wait_task("quick", lambda t: t["state"] == "finished", "finished")
    d.wait_task("sleeper", lambda t: t["state"] == "waiting", "waiting")
    events = d.ok("events", "-n", "50")["events"]
    kinds = [(e["event"], e["job"]) for e in events]
    assert ("job-loaded", "quick") in kinds and ("finished", "quick") in kinds
    finished = next(e for e in events if e["event"] == "finished")
    assert finished["result"] == 7 and isinstance(finished["time"], float)
    only = d.ok("events", "--job", "sleeper", "-n", "50")["events"]
    assert only and {e["job"] for e in only} == {"sleeper"}
    rc, out, _ = d.ctl("events", "--job", "quick", json_output=False)
    assert rc == 0 and any(" finished quick[" in line and "result=7" in line
                           for line in out.splitlines()), out
    assert d.ok("events", "-n", "0") == {"events": []}


def test_followers_get_a_clean_end_when_the_daemon_stops(daemon, followers):  # noqa: F811
    printer = "import trio\n\nasync def main(task):\n    print('hello')\n    await trio.sleep(1000)\n"
    d = daemon(jobs={"sleeper": printer})
    d.wait_task("sleeper", lambda t: t["state"] == "waiting", "waiting")
    events = followers(d.socket, "events", "-f", "-n", "1")
    logs = followers(d.socket, "logs", "-f", "-n", "1", "sleeper")  # the job: no end of its own
    for f in (events, logs):
        f.wait_for(lambda line: True, "the newest past line: the follow is in place")
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0
    for f in (events, logs):
        assert f.wait_exit() == 0
        assert f.lines[-1] == "-- ended: coschedd is stopping --"
    assert any(" killed sleeper[" in line for line in events.lines)


def test_events_from_a_long_ring_come_whole_from_a_real_daemon(daemon):  # noqa: F811
    from test_daemon import WIDE, raw_request

    d = daemon(jobs={"wide": WIDE}, config={"log": {"events_kept": 5000}})
    d.wait_status(lambda s: s["daemon"]["num_tasks"] == 1201, "1,200 children")
    got = d.ok("events", "-n", "1201", "--job", "wide")["events"]   # more than a chunk
    assert len(got) == 1201 and [e["event"] for e in got] == ["started"] * 1201
    assert sorted(e["id"] for e in got) == list(range(1, 1202)) and got[0]["task"] == "wide"
    assert [e["time"] for e in got] == sorted(e["time"] for e in got)   # as they were heard
    everything = [e for e in d.ok("events", "-n", "5000")["events"] if e["job"] == "wide"]
    assert got == everything[-1201:]
    assert all(e["task"] == f"wide.{e['id']}" for e in got[1:])   # names made again
    newest = raw_request(d.socket, {"id": 7, "cmd": "events", "args": {"lines": 3}})
    assert newest["id"] == 7 and [e["id"] for e in newest["result"]["events"]] == \
        [e["id"] for e in got[-3:]]
    rc, out, _ = d.ctl("events", "-n", "1100", json_output=False)
    assert rc == 0 and len(out.splitlines()) == 1100


def test_first_starts_heard_in_a_batch_are_kept_running_and_reach_followers():
    """The ring keeps a batch of first starts as their events (state "running", as it
    was then, whatever it is at the flush); a follower gets them as dicts, in order,
    before the event that flushed them; reading the ring flushes what is held back."""
    from cosched.registry import Task

    job = type("J", (), {"name": "many"})
    root = Task(1, "many", job, None, None, (), None)
    children = [Task(i, None, job, None, None, (), root) for i in (2, 3)]
    events = Events()
    log = EventLog(events, kept=10)
    for child in children:
        events.started(child)
    children[0]._state = "suspended"   # changed before the flush
    assert [(e["id"], e["event"], e["state"], e["task"]) for e in log.recent(10)] == [
        (2, "started", "running", "many.2"), (3, "started", "running", "many.3")]
    stream = log.follow(0, None, 100)
    events.started(root)
    events.task("killed", children[1])

    async def take():
        return [await stream.__anext__() for _ in range(2)]
    got = [(item["id"], item["event"], item["state"]) for item in trio.run(take)]
    assert got == [(1, "started", "running"), (3, "killed", "starting")]


def test_a_follower_waiting_on_an_idle_loop_gets_a_first_start_at_once():
    """The first start held back is heard at the loop's next turn, as a task step: a
    follower it wakes runs then (heard from the loop's last hook before it sleeps, it
    would have waited for the next wake-up of an idle loop)."""
    from cosched.registry import Task

    job = type("J", (), {"name": "many"})
    root = Task(1, "many", job, None, None, (), None)
    events = Events()
    log = EventLog(events, kept=10)
    stream = log.follow(0, None, 100)
    got = []

    async def follower(done):
        got.append(await stream.__anext__())
        done.cancel()

    async def main():
        async with trio.open_nursery() as nursery:
            done = trio.CancelScope()
            nursery.start_soon(follower, done)
            await trio.sleep(0.05)   # the follower waits; the loop goes idle
            events.started(Task(2, None, job, None, None, (), root))
            with trio.fail_after(5), done:
                await trio.sleep_forever()   # nothing else wakes the loop but the start

    trio.run(main)
    assert [(e["id"], e["event"], e["state"]) for e in got] == [(2, "started", "running")]
