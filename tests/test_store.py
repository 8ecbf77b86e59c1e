"""The state database on real files: schema, corrupt and foreign files, the lock, the writer
thread's group commits, ids, lost tasks, retention and the history queries."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest

from cosched.store import (CACHE_KIB, DB_NAME, FLUSH_ROWS, ID_BLOCK, LOST, RUN_STARTS, SCHEMA_VERSION,
                           Store, StoreError, history_query, known_query, task_query)

WAIT = 10.0


class Done:
    """A done callback that a test can wait on (the writer thread calls it)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.result = self.error = None

    def __call__(self, result, error) -> None:
        self.result, self.error = result, error
        self.event.set()

    def wait(self):
        assert self.event.wait(WAIT), "the writer thread did not answer"
        assert self.error is None, self.error
        return self.result


def opened(folder: Path, **kw) -> tuple[Store, object]:
    store = Store(folder, **kw)
    initial = store.open()
    store.start()
    return store, initial


def committed(store: Store) -> None:
    """Wait until everything queued so far is committed."""
    done = Done()
    store.barrier(done)
    done.wait()


def read(store: Store, query):
    done = Done()
    store.read(query, done)
    return done.wait()


def test_a_new_database_is_created_with_the_current_schema(tmp_path):
    store, initial = opened(tmp_path / "state")
    assert initial.next_id == 1 and initial.states == {} and initial.lost == []
    assert store.close()
    conn = sqlite3.connect(tmp_path / "state" / DB_NAME)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert oct(os.stat(tmp_path / "state").st_mode & 0o777) == "0o750"


def test_states_are_committed_in_order_and_read_back_after_a_reopen(tmp_path):
    store, _ = opened(tmp_path)
    done = Done()
    for n in range(100):
        store.put_state("job", f'{{"n":{n}}}', 7)
    store.put_state("other", '{"x":1}', 8, done)
    done.wait()   # committed: the callback comes after the COMMIT returned
    assert store.close()
    store, initial = opened(tmp_path)
    assert initial.states == {"job": '{"n":99}', "other": '{"x":1}'}
    store.close()


def test_ids_are_reserved_ahead_and_never_handed_out_twice(tmp_path):
    store, initial = opened(tmp_path)
    assert initial.next_id == 1
    store.task_started(1, "a", "a", None, "/j/a.py", 1.0, 0)
    store.reserve_ids(5000)      # what the recorder does before its ids reach the block's end
    committed(store)
    store._thread.join(0)        # no close: as if the daemon had been killed
    store._release()
    again = Store(tmp_path)
    initial = again.open()
    assert initial.next_id == 5000, "an id below the reservation could have been in use"
    assert initial.lost == [1]
    again.close()
    third = Store(tmp_path)
    assert third.open().next_id == 5000 + ID_BLOCK   # each start reserves a block
    third.close()


def test_tasks_alive_when_the_daemon_died_are_recorded_as_lost(tmp_path):
    store, _ = opened(tmp_path)
    now = time.time()
    store.task_started(3, "t", "job", None, "/j/job.py", now - 2, 0)
    store.event(now - 1, 3, "job", "suspended", '{"values":["q"]}')
    committed(store)
    store._release()             # killed: nothing ended the task
    store, initial = opened(tmp_path)
    assert initial.lost == [3]
    task = read(store, task_query(3))
    assert (task["state"], task["error"], task["ended"]) == ("lost", LOST, now - 1)
    events = read(store, history_query(3, None, 10))["events"]
    assert [e["event"] for e in events] == ["started", "suspended", "lost"]
    store.close()


def test_a_file_that_is_not_a_database_is_moved_aside_never_emptied(tmp_path):
    db = tmp_path / DB_NAME
    junk = b"these are my notes, not a database\n" * 200
    db.write_bytes(junk)
    with pytest.raises(StoreError) as info:
        Store(tmp_path).open()
    message = str(info.value)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(f"{DB_NAME}.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == junk
    assert message.startswith(f"the state database {db} is not usable (file is not a database)")
    assert f"it was moved to {aside[0]} (nothing was deleted)" in message
    assert not db.exists()
    store, initial = opened(tmp_path)   # the next start begins with an empty database
    assert initial.states == {}
    store.close()


def test_a_damaged_database_is_moved_aside_with_its_wal(tmp_path):
    store, _ = opened(tmp_path)
    done = Done()
    for n in range(2000):
        store.event(float(n), n, "job", "suspended", '{"values":["' + "x" * 200 + '"]}')
    store.barrier(done)
    done.wait()
    store.close()
    db = tmp_path / DB_NAME
    data = bytearray(db.read_bytes())
    page = 4096
    data[page * 3: page * 40] = os.urandom(page * 37)   # pages of the tables, not the header
    db.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="is not usable") as info:
        Store(tmp_path).open()
    assert "moved to" in str(info.value)
    assert not db.exists()
    assert any(p.name.startswith(f"{DB_NAME}.corrupt-") for p in tmp_path.iterdir())


def test_a_database_of_a_newer_schema_is_refused_untouched(tmp_path):
    store, _ = opened(tmp_path)
    store.close()
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    before = (tmp_path / DB_NAME).read_bytes()
    with pytest.raises(StoreError, match=f"has schema version {SCHEMA_VERSION + 1}, newer than"):
        Store(tmp_path).open()
    assert (tmp_path / DB_NAME).read_bytes() == before


def test_one_daemon_per_state_folder(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from cosched.store import Store; "
         f"Store({str(tmp_path)!r}).open(); print('open', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "open\n"
        with pytest.raises(StoreError, match=f"the state folder {tmp_path} is in use by another "
                                             f"coschedd \\(pid {holder.pid}\\)"):
            Store(tmp_path).open()
    finally:
        holder.stdin.close()
        holder.wait(WAIT)
    store, _ = opened(tmp_path)   # free again once its holder has ended
    store.close()


def test_a_state_folder_that_is_a_file_is_named(tmp_path):
    (tmp_path / "state").write_text("")
    with pytest.raises(StoreError, match=f"cannot create the state folder {tmp_path / 'state'}"):
        Store(tmp_path / "state").open()


def test_history_queries_by_task_job_name_since_and_limit(tmp_path):
    store, _ = opened(tmp_path)
    store.task_started(1, "ask", "ask", None, "/j/ask.py", 10.0, 0)
    store.event(11.0, 1, "ask", "suspended", '{"values":["name?"]}')
    store.task_started(2, "ask.2", "ask", 1, "/j/ask.py", 12.0, 0)
    store.task_ended(2, 13.0, "ask", "failed", '{"error":"E: x"}', "failed", None, "E: x", "tb")
    store.task_started(3, "other", "other", None, "/j/other.py", 14.0, 0)
    store.event(15.0, None, "other", "job-loaded", '{"path":"/j/other.py"}')
    committed(store)
    kinds = lambda q: [(e["task"], e["event"]) for e in read(store, q)["events"]]
    assert kinds(history_query(1, None, 50)) == [(1, "started"), (1, "suspended")]
    assert kinds(history_query("ask", None, 50)) == [(1, "started"), (1, "suspended"),
                                                    (2, "started"), (2, "failed")]
    assert kinds(history_query("ask.2", None, 50)) == [(2, "started"), (2, "failed")]
    assert kinds(history_query(None, 13.5, 50)) == [(3, "started"), (None, "job-loaded")]
    last = read(store, history_query(None, None, 2))
    assert last["more"] is True and [e["event"] for e in last["events"]] == ["started",
                                                                            "job-loaded"]
    assert read(store, history_query(1, None, 50))["events"][1]["values"] == ["name?"]
    task = read(store, task_query("ask.2"))
    assert (task["id"], task["parent"], task["state"], task["traceback"]) == (2, 1, "failed", "tb")
    assert read(store, task_query(99)) is None
    store.close()


def test_retention_keeps_max_rows_and_drops_ended_tasks_without_events(tmp_path):
    store, _ = opened(tmp_path, max_rows=100, max_days=0)
    store.prune_every = 50
    for tid in range(1, 301):   # 300 tasks, 2 events each
        store.task_started(tid, f"t{tid}", "job", None, "/j.py", float(tid), 0)
        store.task_ended(tid, tid + 0.5, "job", "finished", "{}", "finished", "1", None, None)
    committed(store)
    store.event(999.0, None, "job", "job-loaded", None)   # one more batch: the prune follows it
    committed(store)
    history = read(store, history_query(None, None, 10_000))["events"]
    conn = sqlite3.connect(tmp_path / DB_NAME)
    tasks = conn.execute("SELECT min(id), count(*) FROM tasks").fetchone()
    assert 100 <= len(history) <= 150, len(history)   # pruned every 50 new events to 100
    seqs = [e["seq"] for e in history]          # (first starts are kept in tasks rows)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) and seqs[-1] == 601
    assert conn.execute("SELECT count(*) FROM tasks WHERE started_seq < ?",
                        (seqs[0],)).fetchone()[0] == 0   # pruned starts forget their seq
    assert tasks[1] <= 75 and tasks[0] > 200, tasks   # only tasks that still have events
    store.close()


def test_retention_by_age(tmp_path):
    now = [1_000_000.0]
    store, _ = opened(tmp_path, max_rows=10_000, max_days=1, clock=lambda: now[0])
    store.prune_every = 1
    store.event(now[0] - 2 * 86400, None, "job", "job-loaded", None)
    store.event(now[0] - 10, None, "job", "job-removed", None)
    committed(store)
    store.event(now[0], None, "job", "job-loaded", None)
    committed(store)
    events = read(store, history_query(None, None, 50))["events"]
    assert [e["event"] for e in events] == ["job-removed", "job-loaded"]
    store.close()


def test_a_failed_commit_reports_the_error_to_its_waiter_and_the_thread_goes_on(tmp_path):
    store, _ = opened(tmp_path)
    bad = Done()
    store.event(1.0, 1, "job", "suspended", "\udcff", bad)   # SQLite cannot store this text
    assert bad.event.wait(WAIT) and bad.error is not None
    assert store.failed_commits == 1
    good = Done()
    store.put_state("job", "{}", 1, good)
    good.wait()
    store.close()


def test_a_start_row_made_in_the_writer_thread_and_one_that_fails_loses_only_itself(tmp_path):
    store, _ = opened(tmp_path)
    made_in: list[str] = []

    def row(tid: int, when: float) -> tuple:
        made_in.append(threading.current_thread().name)
        if tid == 2:
            raise ValueError("a broken row")
        return (tid, f"t{tid}", "job", None, "/j/job.py", when, 0)

    for tid in (1, 2, 3):
        store.task_started_from(row, tid, float(tid))
    committed(store)
    assert set(made_in) == {"cosched state writer"}
    assert read(store, task_query(1))["name"] == "t1"
    assert read(store, task_query(2)) is None
    assert read(store, task_query(3))["started"] == 3.0
    assert store.failed_commits == 0
    store.close()


def test_the_writer_holds_nothing_of_a_batch_once_it_is_written(tmp_path):
    store, _ = opened(tmp_path)

    class Source:   # what a start's row is made from (a task, in the daemon)
        tid = 1

    source = Source()
    gone = weakref.ref(source)
    store.task_started_from(lambda s: (s.tid, "t", "job", None, "/j.py", 1.0, 0), source)
    committed(store)
    del source
    for _ in range(100):   # the writer lets go of its batch right after its last callback
        if gone() is None:
            break
        time.sleep(0.05)
    assert gone() is None, "the writer thread still holds a written batch"
    store.close()


def test_a_batch_longer_than_one_flush_keeps_each_task_s_rows_in_order(tmp_path):
    store, _ = opened(tmp_path, max_days=0)   # (times near 1970: kept)
    n = FLUSH_ROWS * 2 + 7   # one batch: the writer is held in a callback until all are queued
    held, release = threading.Event(), threading.Event()
    store.barrier(lambda result, error: (held.set(), release.wait(WAIT)))
    assert held.wait(WAIT)
    for tid in range(1, n + 1):
        store.task_started(tid, f"t{tid}", "job", None, "/j.py", float(tid), 0)
        store.task_ended(tid, tid + 0.5, "job", "finished", '{"result": 1}', "finished",
                         None, None, None)
    store.task_started(1, "t1", "job", None, "/j.py", n + 1.0, 1)   # 1 starts again
    assert len(store._queue) == 2 * n + 1
    release.set()
    committed(store)
    for tid in (2, FLUSH_ROWS, n):
        task = read(store, task_query(tid))
        assert (task["state"], task["ended"]) == ("finished", tid + 0.5)
        events = read(store, history_query(tid, None, 10))["events"]
        assert [e["event"] for e in events] == ["started", "finished"]
    again = read(store, task_query(1))
    assert (again["state"], again["ended"], again["restarts"]) == ("running", None, 1)
    assert [e["event"] for e in read(store, history_query(1, None, 10))["events"]] == \
        ["started", "finished", "started"]
    store.close()


def test_a_burst_of_starts_is_queued_as_runs_and_written_in_order(tmp_path):
    store, _ = opened(tmp_path, max_days=0)
    held, release = threading.Event(), threading.Event()
    store.barrier(lambda result, error: (held.set(), release.wait(WAIT)))
    assert held.wait(WAIT)

    def row(tid: int, when: float, restarts: int = 0) -> tuple:
        if tid == 5:
            raise ValueError("a broken row")
        return (tid, f"t{tid}", "job", None, "/j.py", when, restarts)

    def other(tid: int) -> tuple:   # another row maker: a run of its own
        return (tid, f"o{tid}", "job", None, "/j.py", 0.5, 0)

    n = RUN_STARTS + 10
    for tid in range(1, n + 1):
        store.task_started_from(row, tid, float(tid))
    store.task_started_from(other, n + 1)
    store.task_ended(3, 3.5, "job", "finished", None, "finished", None, None, None)
    store.task_started_from(row, 3, 4.0, 1)   # after the end: a new run, written after it
    runs = [op for op in store._queue if op[0] == "starts"]
    assert [len(op[3]) // op[2] for op in runs] == [RUN_STARTS, 10, 1, 1]
    assert store.stats()["queued"] == n + 3
    release.set()
    committed(store)
    assert store.operations == 1 + n + 3 + 1   # each start counted, the two barriers too
    assert read(store, task_query(5)) is None   # its row failed: only it is lost
    for tid in (1, RUN_STARTS, n):
        assert read(store, task_query(tid))["started"] == float(tid)
    assert read(store, task_query(n + 1))["name"] == f"o{n + 1}"
    again = read(store, task_query(3))
    assert (again["state"], again["ended"]) == ("running", None)
    assert [(e["event"], e["time"]) for e in read(store, history_query(3, None, 10))["events"]] \
        == [("started", 3.0), ("finished", 3.5), ("started", 4.0)]
    store.close()


def test_the_page_cache_is_bounded(tmp_path):
    store, _ = opened(tmp_path)
    assert store._conn.execute("PRAGMA cache_size").fetchone()[0] == -CACHE_KIB
    store.close()


def test_a_later_migration_upgrades_an_existing_database_and_keeps_its_data(tmp_path,
                                                                          monkeypatch):
    import cosched.store as store_module
    store, _ = opened(tmp_path)
    done = Done()
    store.put_state("job", '{"n":1}', 1, done)
    done.wait()
    store.close()
    later = [*store_module.MIGRATIONS, ["ALTER TABLE states ADD COLUMN note TEXT"]]
    monkeypatch.setattr(store_module, "MIGRATIONS", later)
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", len(later))
    store, initial = opened(tmp_path)
    assert initial.states == {"job": '{"n":1}'}
    store.close()
    conn = sqlite3.connect(tmp_path / DB_NAME)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    assert "note" in [row[1] for row in conn.execute("PRAGMA table_info(states)")]


def test_retention_by_age_goes_in_order_and_stops_at_the_first_young_event(tmp_path):
    """Events are pruned by age from the oldest seq up to the first one young enough: an
    old time after it (the clock stepped back) is kept, for max_rows to prune."""
    now = [1_000_000.0]
    store, _ = opened(tmp_path, max_rows=10_000, max_days=1, clock=lambda: now[0])
    store.prune_every = 1
    for kind, age in (("a", 3), ("b", 2), ("c", 0), ("d", 5), ("e", 0)):
        store.event(now[0] - age * 86400, None, "job", kind, None)
    committed(store)
    store.event(now[0], None, "job", "f", None)   # a prune follows
    committed(store)
    events = read(store, history_query(None, None, 50))["events"]
    assert [e["event"] for e in events] == ["c", "d", "e", "f"]
    store.close()


def test_a_database_of_the_first_schema_migrates_keeping_its_history(tmp_path):
    from cosched import store as store_module
    conn = sqlite3.connect(tmp_path / DB_NAME)
    for statement in store_module.MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO tasks (id, name, job, started, ended, ended_seq, state) "
                 "VALUES (1, 'a', 'job', 1.0, 2.0, 2, 'finished'), (2, 'b', 'job', 3.0, NULL, "
                 "NULL, 'running')")
    conn.execute("INSERT INTO events (seq, time, task, job, event) VALUES (1, 1.0, 1, 'job', "
                 "'started'), (2, 2.0, 1, 'job', 'finished'), (3, 3.0, 2, 'job', 'started')")
    conn.commit()
    conn.close()
    store, initial = opened(tmp_path, max_days=0)
    assert initial.next_id >= 3
    events = read(store, history_query(None, None, 50))["events"]
    assert [(e["seq"], e["event"]) for e in events] == [(1, "started"), (2, "finished"),
                                                        (3, "started"), (4, "lost")]
    store.task_started(initial.next_id, "", "job", 2, "/j.py", 5.0, 0)   # a first start now
    events = read(store, history_query("job", None, 50))["events"]       # is its row
    assert [(e["seq"], e["task"], e["event"]) for e in events][-2:] == [
        (4, 2, "lost"), (5, initial.next_id, "started")]
    assert events[-1]["name"] == f"job.{initial.next_id}"
    assert read(store, task_query("b"))["state"] == "lost"   # old names are found as before
    store.close()
    conn = sqlite3.connect(tmp_path / DB_NAME)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    indexes = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                                "AND sql IS NOT NULL"))
    assert "events_time" not in indexes and "WHERE ended_seq IS NOT NULL" in indexes[
        "tasks_ended"]
    assert conn.execute("SELECT count(*) FROM tasks INDEXED BY tasks_ended "
                        "WHERE ended_seq < 10").fetchone()[0] == 2   # (both ended now)
    conn.close()


def test_a_burst_of_starts_and_ends_is_written_in_statements_of_many_rows(tmp_path):
    """More rows than one statement takes, a task started again after its end in the
    same batch: every row is written, in order."""
    store, _ = opened(tmp_path, max_days=0)
    n = FLUSH_ROWS * 2 + 5
    for tid in range(1, n + 1):
        store.task_started(tid, f"t{tid}", "job", None, "/j.py", float(tid), 0)
    store.task_ended(3, 1e6, "job", "finished", None, "finished", None, None, None)
    store.task_started(3, "t3", "job", None, "/j.py", 2e6, 1)
    committed(store)
    events = read(store, history_query(None, None, 10 * n))["events"]
    assert len(events) == n + 2 and [e["seq"] for e in events] == list(range(1, n + 3))
    assert [(e["task"], e["event"]) for e in events[-2:]] == [(3, "finished"), (3, "started")]
    assert read(store, task_query(3))["state"] == "running"
    assert read(store, task_query(3))["restarts"] == 1
    assert read(store, task_query(n))["name"] == f"t{n}"
    store.close()


def test_a_first_start_is_its_tasks_row_placed_among_the_events(tmp_path):
    """A first start writes no event row: its tasks row keeps its seq, and every query
    gives it in its place (by id, job, name, a name kept as '', time); a restart is an
    event of its own and leaves the first start where it was."""
    store, _ = opened(tmp_path, max_days=0)
    store.task_started(1, "job", "job", None, "/j.py", 1.0, 0)
    store.event(2.0, 1, "job", "suspended", None)
    store.task_started(2, "", "job", 1, "/j.py", 3.0, 0)           # named job.2
    store.task_started(3, "job.x", "job", 1, "/j.py", 4.0, 0)
    store.task_started(4, "", "other", None, "/o.py", 5.0, 0)
    store.task_ended(1, 6.0, "job", "failed", None, "failed", None, "E", None)
    store.task_started(1, "job", "job", None, "/j.py", 7.0, 1)     # a restart
    committed(store)
    rows = lambda q: [(e["seq"], e["task"], e["name"], e["event"])
                      for e in read(store, q)["events"]]
    assert rows(history_query(None, None, 50)) == [
        (1, 1, "job", "started"), (2, 1, "job", "suspended"), (3, 2, "job.2", "started"),
        (4, 3, "job.x", "started"), (5, 4, "other.4", "started"), (6, 1, "job", "failed"),
        (7, 1, "job", "started")]
    assert rows(history_query("job", None, 50)) == [
        r for r in rows(history_query(None, None, 50)) if r[1] != 4]
    assert rows(history_query("job.2", None, 50)) == [(3, 2, "job.2", "started")]
    assert rows(history_query("job.x", None, 50)) == [(4, 3, "job.x", "started")]
    assert rows(history_query(1, 3.5, 50)) == [(6, 1, "job", "failed"), (7, 1, "job", "started")]
    assert rows(history_query(None, 4.5, 2)) == [(6, 1, "job", "failed"), (7, 1, "job", "started")]
    assert read(store, history_query(None, 4.5, 2))["more"] is True
    assert read(store, task_query("job.2"))["name"] == "job.2"
    assert read(store, task_query("other.4"))["id"] == 4
    assert read(store, task_query("job.4")) is None    # task 4 is other's
    assert [read(store, known_query(t)) for t in ("job.2", "other", "job.9", "other.9")] == [
        True, True, False, False]
    conn = sqlite3.connect(tmp_path / DB_NAME)
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 3   # no first start
    assert conn.execute("SELECT id, started_seq FROM tasks ORDER BY id").fetchall() == [
        (1, 1), (2, 3), (3, 4), (4, 5)]
    conn.close()
    store.close()
    store, initial = opened(tmp_path, max_days=0)   # after a restart (which ends the four
    top = rows(history_query(None, None, 50))[-1]   # alive as lost) the seqs go on
    assert top[0] == 11 and top[3] == "lost"
    store.task_started(initial.next_id, "", "job", 1, "/j.py", 8.0, 0)
    assert rows(history_query(initial.next_id, None, 5)) == [
        (12, initial.next_id, f"job.{initial.next_id}", "started")]
    store.close()


def test_tasks_lost_in_a_crash_are_numbered_after_the_last_first_start(tmp_path):
    """The history's last entry a first start (kept in its row, not in events): the lost
    tasks' events come after it, not beside the events table's last."""
    store, _ = opened(tmp_path, max_days=0)
    store.event(1.0, None, "job", "job-loaded", None)
    store.task_started(1, "job", "job", None, "/j.py", 2.0, 0)
    store.task_started(2, "", "job", 1, "/j.py", 3.0, 0)
    committed(store)
    store._release()             # killed: nothing ended the tasks
    store, initial = opened(tmp_path, max_days=0)
    assert initial.lost == [1, 2]
    events = read(store, history_query(None, None, 50))["events"]
    assert [(e["seq"], e["task"], e["event"]) for e in events] == [
        (1, None, "job-loaded"), (2, 1, "started"), (3, 2, "started"), (4, 1, "lost"),
        (5, 2, "lost")]
    assert read(store, task_query("job.2"))["state"] == "lost"
    store.close()


def test_retention_by_age_prunes_first_starts_in_order_with_the_events(tmp_path):
    now = [1_000_000.0]
    store, _ = opened(tmp_path, max_rows=10_000, max_days=1, clock=lambda: now[0])
    store.prune_every = 1
    store.task_started(1, "", "job", None, "/j.py", now[0] - 3 * 86400, 0)   # old
    store.event(now[0] - 2 * 86400, 1, "job", "suspended", None)              # old
    store.task_started(2, "", "job", None, "/j.py", now[0] - 10, 0)          # young
    store.event(now[0] - 5 * 86400, 2, "job", "suspended", None)   # old, after a young one
    committed(store)
    store.event(now[0], None, "job", "job-loaded", None)   # a prune follows
    committed(store)
    events = read(store, history_query(None, None, 50))["events"]
    assert [(e["task"], e["event"]) for e in events] == [
        (2, "started"), (2, "suspended"), (None, "job-loaded")]
    assert read(store, task_query(1))["state"] == "running"   # alive: its row stays
    store.close()


def test_a_jobs_history_reads_its_newest_events_not_all_of_them(tmp_path):
    """`history JOB` of a job with thousands of events reads about as many as it answers
    (each source newest first through its index): it ran in the writer thread, whose
    commits waited while a job of 500,000 events was read and sorted whole (1 s).
    Counted in SQLite's virtual machine steps, which no machine's speed changes."""
    import sqlite3 as sqlite
    from cosched import store as store_module
    conn = sqlite.connect(":memory:")
    for migration in store_module.MIGRATIONS:
        for statement in migration:
            conn.execute(statement)
    n = 5000
    conn.executemany("INSERT INTO tasks (id, name, job, started, ended, ended_seq, state, "
                     "started_seq) VALUES (?, '', 'many', ?, ?, ?, 'finished', ?)",
                     [(i, float(i), i + 0.5, n + i, i) for i in range(1, n + 1)])
    conn.executemany("INSERT INTO events (seq, time, task, job, event) VALUES "
                     "(?, ?, ?, 'many', 'finished')", [(n + i, i + 0.5, i) for i in range(1, n + 1)])
    steps = []
    conn.set_progress_handler(lambda: steps.append(1) and 0, 100)   # every 100 steps
    found = history_query("many", None, 10)(conn)
    conn.set_progress_handler(None, 0)
    assert [(e["task"], e["event"]) for e in found["events"]] == [
        (i, "finished") for i in range(n - 9, n + 1)] and found["more"]
    assert len(steps) < 50, len(steps)   # (reading all 5,000 events: over 1,500)


def test_history_since_finds_its_first_entry_by_bisection(tmp_path):
    """`history --since T` with few entries after T reads about those (no index by time
    is kept: times follow seqs, so the first young entry is found by bisection); the
    answer is the same as a search of every entry by time, for each kind of entry."""
    import sqlite3 as sqlite
    from cosched import store as store_module
    conn = sqlite.connect(":memory:")
    for migration in store_module.MIGRATIONS:
        for statement in migration:
            conn.execute(statement)
    n = 5000   # tasks: first start (seq 2i-1) and end (seq 2i), one second apart
    conn.executemany("INSERT INTO tasks (id, name, job, started, ended, ended_seq, state, "
                     "started_seq) VALUES (?, '', 'many', ?, ?, ?, 'finished', ?)",
                     [(i, 2.0 * i - 1, 2.0 * i, 2 * i, 2 * i - 1) for i in range(1, n + 1)])
    conn.executemany("INSERT INTO events (seq, time, task, job, event) VALUES "
                     "(?, ?, ?, 'many', 'finished')", [(2 * i, 2.0 * i, i) for i in range(1, n + 1)])
    for since, expected in ((2 * n - 2.5, [(n - 1, "finished"), (n, "started"), (n, "finished")]),
                            (2 * n + 1.0, []), (0.0, None)):
        for target in (None, "many"):
            steps = []
            conn.set_progress_handler(lambda: steps.append(1) and 0, 100)
            found = history_query(target, since, 50)(conn)["events"]
            conn.set_progress_handler(None, 0)
            got = [(e["task"], e["event"]) for e in found]
            if expected is None:   # all young: the newest 50, in order
                assert [e["seq"] for e in found] == list(range(2 * n - 49, 2 * n + 1))
            else:
                assert got == expected, (since, target, got)
            assert len(steps) < 60, (since, target, len(steps))   # (a scan: over 2,000)


def test_a_batch_of_first_starts_joins_the_last_run_and_is_written_in_order(tmp_path):
    """task_started_many: one lock for the batch; it fills the last run of the same row
    up to RUN_STARTS and queues the rest as runs; each start counts as an operation."""
    store, _ = opened(tmp_path, max_days=0)
    held, release = threading.Event(), threading.Event()
    store.barrier(lambda result, error: (held.set(), release.wait(WAIT)))
    assert held.wait(WAIT)

    def row(tid: int) -> tuple:
        return (tid, "", "job", None, "/j.py", float(tid), 0)

    store.task_started_from(row, 1)
    n = 2 * RUN_STARTS + 10
    store.task_started_many(row, list(range(2, n + 2)))
    runs = [len(op[3]) for op in store._queue if op[0] == "starts"]
    assert runs == [RUN_STARTS, RUN_STARTS, 11] and store.stats()["queued"] == n + 1
    release.set()
    committed(store)
    events = read(store, history_query("job", None, 10 * n))["events"]
    assert [(e["task"], e["seq"]) for e in events] == [(i, i) for i in range(1, n + 2)]
    store.close()
