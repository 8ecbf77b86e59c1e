"""The state database: one SQLite file under the daemon's state folder, written by one thread.

What it holds: each job's ``task.state`` (as JSON text), the jobs whose tasks a
graceful stop interrupted, the task-id high-water mark, every task's history
(start, suspensions and resumptions with their values, end, result, error,
traceback) and the last run of each timed job.

Design
------
- Opening happens at start-up, before any job runs, and may block: it takes the
  folder's lock file (one daemon per state folder), creates or migrates the
  schema (``PRAGMA user_version`` counts the migrations applied; a newer file
  than this code knows is refused, never rewritten), checks the file
  (``quick_check``) and reads what the daemon needs at start (``Initial``).
  A file that is not a database, or is corrupt, is renamed aside with its WAL
  and reported as ``StoreError``; it is never emptied or overwritten. Any other
  failure (a folder that cannot be written, a file that cannot be read) is a
  ``StoreError`` naming the path and leaves everything as it was.
- After that the database is touched only by the writer thread, which owns the
  connection. The event loop appends operations to a queue (a deque under a
  condition: constant time, no I/O) and returns. The thread sleeps in an untimed
  wait while the queue is empty, so an idle daemon makes no system calls.
- Group commit: the thread takes everything queued at once and applies it in one
  transaction. Under load many checkpoints share one commit; states of the same
  key in one batch collapse to the last. A batch that nobody waits for (history,
  the states saved at suspensions and ends) lingers up to ``LINGER`` for more
  work to share its commit; an operation someone waits for (a checkpoint, a
  read) ends the lingering at once. The timed wait happens only with work
  pending, never while idle. ``synchronous = FULL`` in WAL mode: when
  ``COMMIT`` returns, the WAL has been fsync'd. Whoever waits for an operation
  (``done`` callbacks) hears only after its commit, or gets the error.
- Reads (history, tasks that ended before a restart) are queued like writes and
  run after the writes queued before them, so they see everything the daemon
  has recorded so far.
- Retention: after every ``PRUNE_EVERY`` new events (and at start) the thread
  deletes, in bounded chunks, events beyond ``max_rows`` or older than
  ``max_days`` (those before the first event young enough, in order: no index
  by time is written at every event), and ended tasks that no event is left for.

Nothing here knows trio: callbacks run in the writer thread; the caller turns
them into event-loop wake-ups (``cosched.recorder``).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

__all__ = ["Store", "StoreError", "Initial", "DB_NAME", "LOCK_NAME", "SCHEMA_VERSION"]

log = structlog.get_logger("cosched.store")

DB_NAME = "cosched.db"
LOCK_NAME = "coschedd.lock"
ID_BLOCK = 1024          # task ids reserved (committed) ahead of use; see reserve_ids
PRUNE_CHUNK = 5000       # rows one prune statement deletes at most, so a commit stays short
LINGER = 0.01            # seconds a batch nobody waits for may wait for more to share its commit
LINGER_OPS = 1000        # ... unless it has this many operations already
MAX_COMMIT_OPS = 4000    # operations in one transaction at most
RUN_STARTS = 256         # starts sharing one queued operation at most (see task_started_from)
FLUSH_ROWS = 64          # history rows gathered for one executemany at most: CPython keeps
                         # up to 2,000 freed tuples of each length for reuse, so rows made
                         # by the thousand stayed allocated (0.2 KB a task of a small daemon);
                         # 256 rows with their names and paths held 85 KB while a spawn ran
CACHE_KIB = 64           # SQLite's page cache: it would grow to 2 MB as the history is written
                         # (pages written once, read rarely; the kernel caches the file anyway).
                         # 64 writes history rows as fast as 128 (at 32 each row cost 2.5x
                         # the CPU: its indexes re-read) and holds less
LOST = "coschedd ended without stopping the task (it was killed or crashed)"

Done = Callable[[Any, BaseException | None], None]   # (result, error), in the writer thread

MIGRATIONS: list[list[str]] = [
    [   # 1: the first schema
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
        "CREATE TABLE states (key TEXT PRIMARY KEY, state TEXT NOT NULL, task INTEGER,"
        " saved REAL NOT NULL) WITHOUT ROWID",
        "CREATE TABLE interrupted (job TEXT PRIMARY KEY, task INTEGER, time REAL NOT NULL)"
        " WITHOUT ROWID",
        "CREATE TABLE tasks (id INTEGER PRIMARY KEY, name TEXT NOT NULL, job TEXT NOT NULL,"
        " parent INTEGER, path TEXT, started REAL NOT NULL, ended REAL, ended_seq INTEGER,"
        " state TEXT NOT NULL, restarts INTEGER NOT NULL DEFAULT 0, result TEXT, error TEXT,"
        " traceback TEXT)",
        "CREATE INDEX tasks_name ON tasks (name, id)",
        "CREATE INDEX tasks_ended ON tasks (ended_seq)",
        "CREATE TABLE events (seq INTEGER PRIMARY KEY, time REAL NOT NULL, task INTEGER,"
        " job TEXT NOT NULL, event TEXT NOT NULL, data TEXT)",
        "CREATE INDEX events_task ON events (task, seq)",
        "CREATE INDEX events_job ON events (job, seq)",
        "CREATE INDEX events_time ON events (time)",
        "CREATE TABLE timers (job TEXT PRIMARY KEY, last_due REAL, last_run REAL,"
        " last_task INTEGER) WITHOUT ROWID",
    ],
    [   # 2: fewer index entries a start writes (a burst of a million starts writes them
        # all): only ended tasks in tasks_ended, the only ones pruning looks for there;
        # no index by time (events are pruned by age in seq order, see _prune)
        "DROP INDEX tasks_ended",
        "CREATE INDEX tasks_ended ON tasks (ended_seq) WHERE ended_seq IS NOT NULL",
        "DROP INDEX events_time",
    ],
    [   # 3: a task's first start is its tasks row, placed among the events by started_seq
        # (one row a start, not two: a burst of a million starts writes them all); a task
        # named <job>.<id> (a child its job's task spawned without a name) keeps '' as its
        # name (indexed names are the others; see NAME)
        "ALTER TABLE tasks ADD COLUMN started_seq INTEGER",
        "CREATE INDEX tasks_start ON tasks (started_seq) WHERE started_seq IS NOT NULL",
        "CREATE INDEX tasks_job ON tasks (job, started_seq) WHERE started_seq IS NOT NULL",
        "DROP INDEX tasks_name",
        "CREATE INDEX tasks_name ON tasks (name, id) WHERE name <> ''",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)
NAME = "CASE t.name WHEN '' THEN t.job || '.' || t.id ELSE t.name END"   # a tasks row t's name


class StoreError(Exception):
    """The state database cannot be used; the message names the path and the reason."""


@dataclass
class Initial:
    """What the daemon reads at start, before any job runs."""

    next_id: int                                  # first task id of this run
    states: dict[str, str] = field(default_factory=dict)        # key -> JSON text
    interrupted: dict[str, int] = field(default_factory=dict)   # job -> task id
    timers: dict[str, tuple[float | None, float | None, int | None]] = field(
        default_factory=dict)                     # job -> (last_due, last_run, last_task)
    lost: list[int] = field(default_factory=list)  # tasks alive when the daemon died
    moved_aside: Path | None = None


class Store:
    """The database file, its lock, and the writer thread (see the module docstring)."""

    def __init__(self, folder: Path, *, max_rows: int = 100_000, max_days: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.folder = Path(folder)
        self.path = self.folder / DB_NAME
        self.max_rows, self.max_days, self.clock = max_rows, max_days, clock
        self.prune_every = max(1000, max_rows // 20)
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._queue: deque[tuple] = deque()   # operations not yet taken by the thread
        self._queued = 0                      # ... counting each start of a run of starts
        self._mutex = threading.Lock()        # the condition's lock, taken directly where the
        self._cond = threading.Condition(self._mutex)   # loop queues (Condition.__enter__ is
                                                        # Python: a frame per operation)
        self._idle = True                     # the thread waits for work (under _cond)
        self._lingering = False               # ... or for more work to join a batch
        self._urgent = False                  # someone waits for an operation queued
        self._closing = False
        self._thread: threading.Thread | None = None
        self._since_prune = 0                 # events inserted since the last prune
        self._seq = 0                         # the last event's seq (the writer numbers them)
        self.commits = 0                      # transactions committed by the writer
        self.operations = 0                   # operations in them
        self.failed_commits = 0

    # ------------------------------------------------------------ opening (start-up)

    def open(self) -> Initial:
        """Lock, create or migrate, check and read the database; raises StoreError."""
        self.prepare_folder()
        self._take_lock()
        try:
            return self._open_db()
        except BaseException:
            self._release()
            raise

    def prepare_folder(self) -> None:
        """Create the state folder if missing; StoreError if it is not a writable folder."""
        folder = self.folder
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o750)
        except OSError as e:
            raise StoreError(f"cannot create the state folder {folder}: {e.strerror}") from None
        if not folder.is_dir():
            raise StoreError(f"the state folder {folder} is not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise StoreError(f"the state folder {folder} is not writable by uid {os.geteuid()} "
                             "(the daemon's user must own it, or be allowed to write to it)")
        if self.path.exists() and not os.access(self.path, os.R_OK | os.W_OK):
            raise StoreError(f"the state database {self.path} is not readable and writable by "
                             f"uid {os.geteuid()}")

    def _take_lock(self) -> None:
        """One daemon per state folder. A POSIX lock: released when the process ends,
        and not inherited by processes that jobs fork."""
        path = self.folder / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as e:
            raise StoreError(f"cannot open {path}: {e.strerror}") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if e.errno in (errno.EACCES, errno.EAGAIN):
                raise StoreError(f"the state folder {self.folder} is in use by another coschedd "
                                 f"(pid {other}); give each daemon its own daemon.state_dir") \
                    from None
            raise StoreError(f"cannot lock {path}: {e.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _release(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _open_db(self) -> Initial:
        conn = None
        try:
            conn = self._connect()
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"the state database {self.path} has schema version {version}, "
                                 f"newer than this coschedd's {SCHEMA_VERSION}; it was written "
                                 "by a newer cosched, so it is left untouched")
            self._check(conn)
            self._migrate(conn, version)
            init = self._read_initial(conn)
        except BaseException as e:
            if conn is not None:
                conn.close()
            if isinstance(e, sqlite3.DatabaseError):
                if getattr(e, "sqlite_errorname", "") in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
                    raise StoreError(self._quarantine(str(e))) from None
                raise StoreError(f"cannot use the state database {self.path}: {e}") from None
            raise
        self._conn = conn
        return init

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=0)
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch to WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = OFF")
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _check(self, conn: sqlite3.Connection) -> None:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            err = sqlite3.DatabaseError("; ".join(problems))
            err.sqlite_errorname = "SQLITE_CORRUPT"
            raise err

    def _quarantine(self, reason: str) -> str:
        """Rename the database and its WAL aside; the message for the operator."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{DB_NAME}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                os.replace(src, f"{aside}{suffix}")
        return (f"the state database {self.path} is not usable ({reason}); it was moved to "
                f"{aside} (nothing was deleted). Start coschedd again to begin with an empty "
                "database, or put a good copy back in its place")

    def _migrate(self, conn: sqlite3.Connection, version: int) -> None:
        for n in range(version, SCHEMA_VERSION):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[n]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {n + 1}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if version:   # (a new database is made, not migrated)
                log.info("state database migrated", path=str(self.path), version=n + 1)

    def _read_initial(self, conn: sqlite3.Connection) -> Initial:
        """What the daemon starts from; tasks left alive by a daemon that died are ended
        as lost, and a block of ids is reserved."""
        now = self.clock()
        one = lambda sql: conn.execute(sql).fetchone()[0]
        next_id = max(int(one("SELECT coalesce(max(value), 1) FROM meta WHERE key = 'next_id'")),
                      one("SELECT coalesce(max(id), 0) FROM tasks") + 1,
                      one("SELECT coalesce(max(task), 0) FROM events") + 1)
        init = Initial(next_id=next_id)
        init.states = dict(conn.execute("SELECT key, state FROM states"))
        init.interrupted = dict(conn.execute("SELECT job, task FROM interrupted"))
        init.timers = {job: (due, run, task) for job, due, run, task in
                       conn.execute("SELECT job, last_due, last_run, last_task FROM timers")}
        conn.execute("BEGIN IMMEDIATE")
        try:
            init.lost = self._end_lost(conn, now)
            self._put_meta(conn, "next_id", next_id + ID_BLOCK)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._prune(conn)
        self._seq = _top_seq(conn)
        return init

    def _end_lost(self, conn: sqlite3.Connection, now: float) -> list[int]:
        """End as lost the tasks a daemon that died left alive: each ends at its last
        recorded time and gets a "lost" event, numbered after the history's last entry in
        the order of ids. Set-wise (a million tasks lost in an OOM kill: seconds, where a
        statement a task took most of a minute)."""
        lost = [row[0] for row in conn.execute("SELECT id FROM tasks WHERE ended IS NULL "
                                               "ORDER BY id")]
        if not lost:
            return lost
        top = _top_seq(conn)   # (after the last first start too, not only events)
        conn.execute("UPDATE tasks SET state = 'lost', error = ?, ended = coalesce((SELECT "
                     "max(e.time) FROM events e WHERE e.task = tasks.id), started, ?) "
                     "WHERE ended IS NULL", (LOST, now))
        conn.execute("INSERT INTO events (seq, time, task, job, event, data) SELECT ? + "
                     "row_number() OVER (ORDER BY id), ?, id, job, 'lost', ? FROM tasks "
                     "WHERE state = 'lost' AND ended_seq IS NULL",
                     (top, now, json.dumps({"error": LOST})))
        conn.execute("UPDATE tasks SET ended_seq = (SELECT max(seq) FROM events e WHERE "
                     "e.task = tasks.id) WHERE state = 'lost' AND ended_seq IS NULL")
        return lost

    @staticmethod
    def _put_meta(conn: sqlite3.Connection, key: str, value: Any) -> None:
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # ------------------------------------------------------------ the writer thread

    def start(self) -> None:
        """Start the writer thread (after ``open``)."""
        self._thread = threading.Thread(target=self._run, name="cosched state writer",
                                        daemon=True)
        self._thread.start()

    def _submit(self, op: tuple) -> None:
        urgent = op[-1] is not None   # a done callback: someone waits for it
        with self._mutex:
            self._queue.append(op)
            self._queued += 1
            if self._idle or urgent and self._lingering:
                self._cond.notify()
            self._urgent = self._urgent or urgent

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._idle = True
                    self._cond.wait()
                self._idle = False
                if not (self._urgent or self._closing) and self._queued < LINGER_OPS:
                    self._lingering = True
                    self._cond.wait(LINGER)
                    self._lingering = False
                batch, self._queue, self._queued = self._queue, deque(), 0
                self._urgent = False
                closing = self._closing and not batch
            if closing:
                return
            try:
                self._apply(batch)
            except Exception:  # noqa: BLE001 - a bug of ours must not end the writer
                log.exception("state database: a batch failed", operations=len(batch))
            del batch   # not held while the writer waits: its operations hold tasks

    def _apply(self, batch: deque[tuple]) -> None:
        """Run a batch: consecutive writes in one transaction (at most MAX_COMMIT_OPS, so
        that a backlog is committed in steps and its first waiters hear early), reads
        after what precedes them."""
        writes: list[tuple] = []
        counted = 0
        for op in batch:
            if op[0] == "read":
                self._commit(writes, counted)
                writes, counted = [], 0
                self._read(op[1], op[2])
                continue
            writes.append(op)
            counted += _count(op)
            if counted >= MAX_COMMIT_OPS:
                self._commit(writes, counted)
                writes, counted = [], 0
        self._commit(writes, counted)
        if self._since_prune >= self.prune_every:
            self._since_prune = 0
            self._guarded(self._prune, self._conn)

    def _commit(self, ops: list[tuple], counted: int) -> None:
        """Write ``ops`` (``counted`` operations: a run of starts counts each) in one
        transaction."""
        if not ops:
            return
        conn = self._conn
        waiters = [op[-1] for op in ops if op[-1] is not None]
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._write_all(conn, ops)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except Exception as e:  # noqa: BLE001 - sqlite3.Error, or a value it cannot bind
            self.failed_commits += 1
            log.error("state database: could not commit; these changes are lost",
                      path=str(self.path), error=str(e), operations=counted)
            for done in waiters:
                done(None, e)
            return
        self.commits += 1
        self.operations += counted
        for done in waiters:
            done(None, None)

    def _write_all(self, conn: sqlite3.Connection, ops: list[tuple]) -> None:
        """Apply a batch's writes. Rows of the history are gathered and written with one
        executemany per statement and FLUSH_ROWS rows (events get their seq here, so an
        end knows its own);
        a task that starts again after an end in the same batch flushes them first, so
        that the order of its rows holds."""
        states: dict[str, tuple] = {}
        rows = _Rows()
        for i, op in enumerate(ops):
            kind = op[0]
            if i & 255 == 255 or kind == "starts":   # (a run holds up to RUN_STARTS)
                time.sleep(0)   # let the event loop have the GIL: it never waits long for us
            if kind == "state":
                states[op[1]] = op[1:4]          # the last state of a key in the batch wins
            elif kind == "event":
                rows.events.append((self._new_seq(), *op[1:6]))
            elif kind == "start":
                self._add_start(conn, rows, op[1], op[2:-1])
            elif kind == "starts":
                row, arity, flat = op[1:4]
                for at in range(0, len(flat), arity):
                    self._add_start(conn, rows, row, flat[at:at + arity])
            elif kind == "end":
                tid, when, job, event, data, state, result, error, tb = op[1:10]
                seq = self._new_seq()
                rows.events.append((seq, when, tid, job, event, data))
                rows.ends.append((when, seq, state, result, error, tb, tid))
                rows.ended.add(tid)
            else:
                _WRITERS[kind](conn, *op[1:-1])
            if len(rows.events) >= FLUSH_ROWS:
                self._flush(conn, rows)
        self._flush(conn, rows)
        if states:
            conn.executemany("INSERT OR REPLACE INTO states (key, state, task, saved) "
                             "VALUES (?, ?, ?, ?)", [(*s, self.clock()) for s in states.values()])

    def _add_start(self, conn: sqlite3.Connection, rows: _Rows, row: Callable[..., tuple],
                   source: Any) -> None:
        try:
            made = row(*source)
            tid, _, job, _, _, started, restarts = made
        except Exception:  # noqa: BLE001 - one row lost, not the batch
            log.exception("state database: a task's start could not be recorded")
            return
        if tid in rows.ended:
            self._flush(conn, rows)
        if restarts:   # a later life: an event of its own
            rows.starts.append((*made, None))
            rows.events.append((self._new_seq(), started, tid, job, "started",
                                json.dumps({"restarts": restarts})))
        else:          # the first: its place among the events is kept in its row
            rows.starts.append((*made, self._new_seq()))
            self._since_prune += 1
        if len(rows.starts) >= FLUSH_ROWS:
            self._flush(conn, rows)

    def _new_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _flush(self, conn: sqlite3.Connection, rows: _Rows) -> None:
        if rows.starts:
            # (a row a step: statements of 4 to 64 rows wrote a start with 2,000 to 6,600
            # instructions fewer, but the connection keeps each statement it compiled,
            # 10-70 KB each: 0.04-0.3 KB a task of a daemon of 1,000)
            conn.executemany("INSERT INTO tasks (id, name, job, parent, path, started, state, "
                             "restarts, started_seq) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?) "
                             "ON CONFLICT (id) DO UPDATE SET ended = NULL, ended_seq = NULL, "
                             "state = 'running', restarts = excluded.restarts", rows.starts)
        if rows.events:
            conn.executemany("INSERT INTO events (seq, time, task, job, event, data) "
                             "VALUES (?, ?, ?, ?, ?, ?)", rows.events)
            self._since_prune += len(rows.events)
        if rows.ends:
            conn.executemany("UPDATE tasks SET ended = ?, ended_seq = ?, state = ?, result = ?, "
                             "error = ?, traceback = ? WHERE id = ?", rows.ends)
        rows.__init__()

    def _read(self, query: Callable[[sqlite3.Connection], Any], done: Done) -> None:
        try:
            result = query(self._conn)
        except Exception as e:  # noqa: BLE001 - the caller gets it, the thread goes on
            done(None, e)
            return
        done(result, None)

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - pruning is retried at the next chance
            log.error("state database: pruning the history failed", error=str(e))

    # ------------------------------------------------------------ retention

    def _prune(self, conn: sqlite3.Connection) -> None:
        """Drop the history's events (first starts too: their rows forget their seq) beyond
        max_rows or older than max_days, then ended tasks without events; each statement
        bounded to PRUNE_CHUNK rows (the rest waits for the next prune), so a commit never
        takes long."""
        floor = _top_seq(conn) - self.max_rows + 1   # the events below it go
        if self.max_days > 0:   # and those before the first one young enough (times follow
            old = self.clock() - self.max_days * 86400   # seqs; after a clock step back,
            floor = max(floor, _first_young(conn, old))  # max_rows prunes the rest)
        first = "(SELECT coalesce(min(seq), 1 << 62) FROM events)"
        statements = [
            ("DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE seq < ? "
             "ORDER BY seq LIMIT ?)", (floor, PRUNE_CHUNK)),
            ("UPDATE tasks SET started_seq = NULL WHERE id IN (SELECT id FROM tasks WHERE "
             "started_seq < ? ORDER BY started_seq LIMIT ?)", (floor, PRUNE_CHUNK)),
            (f"DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE ended_seq < {first} "
             "ORDER BY ended_seq LIMIT ?)", (PRUNE_CHUNK,))]
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in statements:
                conn.execute(sql, args)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------ operations (any thread)

    def put_state(self, key: str, text: str, task: int | None, done: Done | None = None) -> None:
        self._submit(("state", key, text, task, done))

    def task_started(self, tid: int, name: str, job: str, parent: int | None, path: str,
                     started: float, restarts: int) -> None:
        """A life of a task began: its first (``restarts`` 0: its row is written, and is
        its "started" event) or a later one (counted by ``restarts``: an event). A name
        '' is the task's job's name and its id, ``<job>.<id>``."""
        self._submit(("start", _as_is, (tid, name, job, parent, path, started, restarts), None))

    def task_started_from(self, row: Callable[..., tuple], *source: Any) -> None:
        """``task_started(*row(*source))``, with the row made in the writer thread. A burst
        of starts waits for the writer: consecutive ones with the same ``row`` and as many
        sources share one operation, a run of their sources laid flat (a pointer each,
        where an operation tuple of its own cost 104 bytes a start)."""
        self._queue_starts(row, len(source), source)

    def task_started_many(self, row: Callable[[Any], tuple], sources: list[Any]) -> None:
        """``task_started_from(row, source)`` of each of ``sources``, under one lock."""
        self._queue_starts(row, 1, sources)

    def _queue_starts(self, row: Callable[..., tuple], arity: int, flat: Sequence[Any]) -> None:
        """Queue the starts whose sources ``flat`` lays out ``arity`` at a time: into the
        last run if it has the same row and arity, then in runs of RUN_STARTS."""
        with self._mutex:
            queue = self._queue
            last = queue[-1] if queue else None
            size, first = RUN_STARTS * arity, 0
            if last is not None and last[0] == "starts" and last[1] is row and last[2] == arity:
                first = size - len(last[3])
                last[3].extend(flat[:first])
            for at in range(first, len(flat), size):
                queue.append(("starts", row, arity, list(flat[at:at + size]), None))
            self._queued += len(flat) // arity
            if self._idle:
                self._cond.notify()

    def event(self, when: float, task: int | None, job: str, kind: str,
              data: str | None, done: Done | None = None) -> None:
        self._submit(("event", when, task, job, kind, data, done))

    def task_ended(self, tid: int, when: float, job: str, kind: str, data: str,
                   state: str, result: str | None, error: str | None,
                   traceback: str | None) -> None:
        self._submit(("end", tid, when, job, kind, data, state, result, error, traceback, None))

    def interrupted(self, job: str, task: int | None, when: float) -> None:
        """``task`` None: the job's interruption has been dealt with (it was restarted)."""
        self._submit(("interrupted", job, task, when, None))

    def reserve_ids(self, below: int) -> None:
        """Ids below ``below`` may be handed out, also after a crash: the next start's
        ids begin at or above it."""
        self._submit(("meta", "next_id", below, None))

    def timer(self, job: str, last_due: float | None, last_run: float | None,
              last_task: int | None) -> None:
        self._submit(("timer", job, last_due, last_run, last_task, None))

    def read(self, query: Callable[[sqlite3.Connection], Any], done: Done) -> None:
        """Run ``query(connection)`` in the writer thread, after what is queued before it."""
        self._submit(("read", query, done))

    def barrier(self, done: Done) -> None:
        """``done`` is called once everything queued before it is committed."""
        self._submit(("meta", "barrier", None, done))

    def stats(self) -> dict:
        """For status: the file, commits so far, their operations, failures, the backlog."""
        return {"path": str(self.path), "commits": self.commits, "operations": self.operations,
                "failed_commits": self.failed_commits, "queued": self._queued}

    def close(self, timeout: float = 10.0) -> bool:
        """Commit what is queued, stop the thread and close the file; whether it finished
        within ``timeout`` (a stuck disk). Blocks: call it off the event loop, or at exit."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False
        self._release()
        return True


def _top_seq(conn: sqlite3.Connection) -> int:
    """The history's last seq: of an event, or of a first start kept in its tasks row."""
    return conn.execute("SELECT max((SELECT coalesce(max(seq), 0) FROM events), (SELECT "
                        "coalesce(max(started_seq), 0) FROM tasks WHERE started_seq IS NOT "
                        "NULL))").fetchone()[0]


def _first_young(conn: sqlite3.Connection, old: float) -> int:
    """The seq of the history's first event (or first start) at or after ``old``."""
    found = [row[0] for row in (
        conn.execute("SELECT seq FROM events WHERE time >= ? ORDER BY seq LIMIT 1",
                     (old,)).fetchone(),
        conn.execute("SELECT started_seq FROM tasks WHERE started_seq IS NOT NULL AND "
                     "started >= ? ORDER BY started_seq LIMIT 1", (old,)).fetchone()) if row]
    return min(found, default=1 << 62)


def _count(op: tuple) -> int:
    """Operations in ``op``: a run of starts counts each."""
    return len(op[3]) // op[2] if op[0] == "starts" else 1


def _as_is(row: tuple) -> tuple:
    return row


class _Rows:
    """History rows of a batch not written yet (see Store._write_all)."""

    __slots__ = ("starts", "events", "ends", "ended")

    def __init__(self) -> None:
        self.starts: list[tuple] = []
        self.events: list[tuple] = []
        self.ends: list[tuple] = []
        self.ended: set[int] = set()   # tasks with an end among them


def _interrupted(conn: sqlite3.Connection, job: str, task: int | None, when: float) -> None:
    if task is None:
        conn.execute("DELETE FROM interrupted WHERE job = ?", (job,))
    else:
        conn.execute("INSERT OR REPLACE INTO interrupted (job, task, time) VALUES (?, ?, ?)",
                     (job, task, when))


def _meta(conn: sqlite3.Connection, key: str, value: Any) -> None:
    if key != "barrier":
        Store._put_meta(conn, key, value)


def _timer(conn: sqlite3.Connection, job: str, due: float | None, run: float | None,
           task: int | None) -> None:
    conn.execute("INSERT INTO timers (job, last_due, last_run, last_task) VALUES (?, ?, ?, ?) "
                 "ON CONFLICT (job) DO UPDATE SET last_due = excluded.last_due, "
                 "last_run = coalesce(excluded.last_run, last_run), "
                 "last_task = coalesce(excluded.last_task, last_task)", (job, due, run, task))


_WRITERS: dict[str, Callable[..., None]] = {
    "interrupted": _interrupted, "meta": _meta, "timer": _timer,
}


# ---------------------------------------------------------------- queries (run by the writer)

def history_query(target: int | str | None, since: float | None,
                  limit: int) -> Callable[[sqlite3.Connection], dict]:
    """Events of a task (an id), of a job or task name, or of all; newest ``limit``, oldest
    first; ``more`` tells whether older ones matched too. First starts are read from their
    tasks rows (see MIGRATIONS[2]), each source newest first through an index."""
    events, starts = [], []   # (condition, args) of each scan: of events e; of tasks rows t
    if isinstance(target, int):
        events.append(("e.task = ?", [target]))
        starts.append(("t.id = ?", [target]))
    elif target is not None:   # a job's, and its named tasks' of other jobs: two scans of
        named, args = _named(target)   # each source, each newest first through an index
        events += [("e.job = ?", [target]), (f"e.task IN ({named}) AND e.job <> ?",
                                             [*args, target])]
        starts += [("t.job = ?", [target]), (f"t.id IN ({named}) AND t.job <> ?",
                                             [*args, target])]
    else:
        events.append(("1", []))
        starts.append(("1", []))
    if since is not None:   # (from the first entry at or after it: see _first_seq_at)
        events = [(f"{w} AND e.seq >= ? AND e.time >= ?", [*a, _FLOOR, since])
                  for w, a in events]
        starts = [(f"{w} AND t.started_seq >= ? AND t.started >= ?", [*a, _FLOOR, since])
                  for w, a in starts]
    parts = [(f"SELECT e.seq, e.time, e.task, {NAME}, e.job, e.event, e.data FROM events e "
              f"LEFT JOIN tasks t ON t.id = e.task WHERE {w} ORDER BY e.seq DESC LIMIT ?", a)
             for w, a in events]
    parts += [(f"SELECT t.started_seq, t.started, t.id, {NAME}, t.job, 'started', NULL FROM "
               f"tasks t WHERE t.started_seq IS NOT NULL AND {w} ORDER BY t.started_seq DESC "
               "LIMIT ?", a) for w, a in starts]
    sql = " UNION ALL ".join(f"SELECT * FROM ({part})" for part, _ in parts) + \
        " ORDER BY 1 DESC LIMIT ?"
    args = [a for _, part_args in parts for a in (*part_args, limit + 1)] + [limit + 1]

    def run(conn: sqlite3.Connection) -> dict:
        floor = _first_seq_at(conn, since) if since is not None else 0
        rows = conn.execute(sql, [floor if a is _FLOOR else a for a in args]).fetchall()
        events = [{"seq": seq, "time": when, "task": task, "name": name, "job": job,
                   "event": kind, **(json.loads(data) if data else {})}
                  for seq, when, task, name, job, kind, data in reversed(rows[:limit])]
        return {"events": events, "more": len(rows) > limit}
    return run


_FLOOR = object()   # in a query's arguments: the seq _first_seq_at finds when it runs


def _first_seq_at(conn: sqlite3.Connection, since: float) -> int:
    """The seq of the history's first entry (event or first start) at or after ``since``,
    by bisection over seqs: times follow seqs (after a clock step back, entries before
    the one found may be younger), and no index by time is kept, so a search by time alone
    read the whole history when few entries were young (0.7 s for a million)."""
    lo, hi = 0, _top_seq(conn) + 1   # entries below lo are older; hi: none, or young
    while lo < hi:
        mid = (lo + hi) // 2
        found = [row for row in (
            conn.execute("SELECT seq, time FROM events WHERE seq >= ? ORDER BY seq LIMIT 1",
                         (mid,)).fetchone(),
            conn.execute("SELECT started_seq, started FROM tasks WHERE started_seq >= ? "
                         "ORDER BY started_seq LIMIT 1", (mid,)).fetchone()) if row]
        if not found or min(found)[1] >= since:
            hi = mid
        else:
            lo = min(found)[0] + 1
    return lo


def _named(target: str) -> tuple[str, list]:
    """SQL of the ids of the tasks named ``target``, and its arguments: a name kept as ''
    is <job>.<id>."""
    by_name = "SELECT id FROM tasks WHERE name = ? AND name <> ''"   # (tasks_name's rows)
    job, _, tid = target.rpartition(".")
    if job and tid.isascii() and tid.isdigit() and len(tid) <= 18:
        return (f"{by_name} UNION ALL SELECT id FROM tasks WHERE id = ? AND name = '' AND "
                "job = ?", [target, int(tid), job])
    return by_name, [target]


def known_query(target: int | str) -> Callable[[sqlite3.Connection], bool]:
    """Whether the history has a task of that id, or a job or task of that name."""
    def run(conn: sqlite3.Connection) -> bool:
        if isinstance(target, int):
            row = conn.execute("SELECT 1 FROM tasks WHERE id = ?", (target,)).fetchone()
            return row is not None
        named, args = _named(target)
        return conn.execute(
            "SELECT 1 WHERE EXISTS (SELECT 1 FROM events WHERE job = ?) OR EXISTS (SELECT 1 "
            "FROM tasks WHERE job = ? AND started_seq IS NOT NULL) OR EXISTS "
            f"({named})", (target, target, *args)).fetchone() is not None
    return run


def task_query(ref: int | str) -> Callable[[sqlite3.Connection], dict | None]:
    """A recorded task by id, or the newest of that name, with its last suspension's or
    interruption's values; None if the history has none."""
    columns = ("id", "name", "job", "parent", "path", "started", "ended", "state", "restarts",
               "result", "error", "traceback")
    if isinstance(ref, int):
        by, args = "t.id = ?", [ref]
    else:   # the newest of that name
        named, args = _named(ref)
        by = f"t.id IN ({named}) ORDER BY t.id DESC LIMIT 1"
    select = ", ".join(NAME if c == "name" else f"t.{c}" for c in columns)

    def run(conn: sqlite3.Connection) -> dict | None:
        row = conn.execute(f"SELECT {select} FROM tasks t WHERE {by}", args).fetchone()
        if row is None:
            return None
        task = dict(zip(columns, row, strict=True))
        last = conn.execute("SELECT event, data FROM events WHERE task = ? AND event IN "
                            "('suspended', 'interrupted') ORDER BY seq DESC LIMIT 1",
                            (task["id"],)).fetchone()
        values = json.loads(last[1]).get("values") if last and last[1] else None
        task["yielded"] = values if task["state"] == "interrupted" else None
        if task["state"] == "finished" and task["result"] is None:   # kept with its event
            end = conn.execute("SELECT data FROM events WHERE task = ? AND event = 'finished' "
                               "ORDER BY seq DESC LIMIT 1", (task["id"],)).fetchone()
            task["result"] = json.loads(end[0]).get("result") if end and end[0] else None
        elif task["result"] is not None:
            task["result"] = json.loads(task["result"])
        return task
    return run
