"""Per-task log buffers: each task's last log records and the lines its job prints.

``coschedctl logs TASK|JOB [-f]`` reads from here. Two sources feed a task's
buffer:

- its structlog records: ``cosched.log`` hands every record that passes the
  level to ``TaskLogs.capture``, which files it under the record's ``id`` (a
  task's logger is bound to it; the supervisor's records about a task carry it
  too);
- what its job writes to ``sys.stdout``/``sys.stderr`` (``print``). While the
  daemon runs, both are ``OutputProxy`` objects. Each trio task runs in its own
  ``contextvars`` context, and the supervisor sets ``CURRENT_TASK`` in the
  context of each task's trio task (``enter``), which the tasks a job starts
  inherit, and so do its worker threads. So the proxy knows which task writes;
  text written outside any task (the daemon, libraries) goes to the stream the
  proxy replaced, so the daemon's own stdout and stderr keep working. Printed
  text is cut into lines (a line longer than ``MAX_TEXT`` is cut into pieces),
  kept in the buffer whatever the log level, and also logged (level info, with
  ``stream``) so that it reaches the journal.

Design principles
-----------------
- Bounded: a buffer keeps the newest ``size`` records (``log.task_lines``), a
  record at most ``MAX_TEXT`` characters per text, and buffers of ended tasks
  are forgotten like the registry forgets the tasks (``ENDED_KEPT``). A task
  that never logs or prints has no buffer.
- Free while nobody follows: a record costs one tuple appended to a deque and
  its task's id moved to the end of its job's index of buffers (the order they
  were last written in, which lets ``logs JOB -n N`` read only the buffers that
  can hold the newest N); the fan-out to followers (``cosched.feeds.Feed``)
  happens only when the follower tables are not empty.
- Loop-only state: records made in another thread (a job's worker thread, the
  step guard's watchdog) are handed to the event loop with
  ``TrioToken.run_sync_soon`` before they touch any buffer or follower.
"""

from __future__ import annotations

import contextvars
import itertools
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import trio

from .feeds import Feed, Stream
from .protocol import Chunked
from .registry import ENDED_KEPT
from .saferepr import safe_repr

__all__ = ["TaskLogs", "OutputProxy", "CURRENT_TASK", "enter", "MAX_TEXT"]

MAX_TEXT = 4096  # characters kept of a printed line, a message or a field value

# The task whose trio task (or worker thread) is running; None in the daemon's own code.
CURRENT_TASK: contextvars.ContextVar[Any] = contextvars.ContextVar("cosched_task", default=None)

_PLAIN = (str, int, float, bool, type(None))
_NOT_FIELDS = frozenset({"event", "level", "timestamp", "task", "id", "_printed"})

# One record: (unix time, source "log"|"stdout"|"stderr", level or None, message,
# fields dict or None). Tuples, not dicts: a buffer holds many.
Record = tuple[float, str, Any, str, Any]


def enter(task: Any) -> None:
    """Mark the calling trio task (and what it starts) as running ``task``."""
    CURRENT_TASK.set(task)


def _text(value: Any) -> str:
    text = value if type(value) is str else safe_repr(value, MAX_TEXT)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 3] + "..."


def _fields(event_dict: dict) -> dict | None:
    fields = {k: (v if type(v) in _PLAIN and type(v) is not str else _text(v))
              for k, v in event_dict.items() if k not in _NOT_FIELDS}
    return fields or None


CHUNK = 1000   # buffers looked at, or records sent, between two turns of the loop


class _Buffer:
    """The records of one task."""

    __slots__ = ("name", "job", "records")

    def __init__(self, name: str, job: str, size: int) -> None:
        self.name, self.job = name, job
        self.records: deque[Record] = deque(maxlen=size)


class TaskLogs:
    """Every task's buffer, by task id, and who follows which task or job."""

    def __init__(self, size: int, lookup: Callable[[int], Any]) -> None:
        self.size = size
        self._lookup = lookup                      # task id -> Task, or None
        self._buffers: dict[int, _Buffer] = {}
        self._ended: deque[int] = deque()          # ids of ended tasks with a buffer, oldest first
        self._partial: dict[tuple[int, str], str] = {}  # (id, stream) -> text after the last newline
        self._by_task: dict[int, set[Feed]] = {}   # no empty sets: tested for truth per record
        self._by_job: dict[str, set[Feed]] = {}
        # job -> ids of its tasks that have a buffer, least recently written first: a
        # job's newest records are in the buffers written last (see job_records)
        self._written: dict[str, dict[int, None]] = {}
        self._loop_thread: int | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    def start(self) -> None:
        """Called on the event loop: records from other threads are passed to it."""
        self._loop_thread = threading.get_ident()
        self._token = trio.lowlevel.current_trio_token()

    def resize(self, size: int) -> None:
        """A new task_lines (each reload passes it: unchanged, nothing is done, as
        rebuilding 100,000 buffers held the loop for 50 ms)."""
        if size == self.size:
            return
        self.size = size
        for buf in self._buffers.values():
            buf.records = deque(buf.records, maxlen=size)

    # ---------------------------------------------------------------- sources

    def capture(self, event_dict: dict) -> None:
        """The log's capture hook: file a structlog record under its task id."""
        if event_dict.pop("_printed", False):
            return  # printed text being logged: it is in the buffer already
        tid = event_dict.get("id")
        if type(tid) is int:
            self.add(tid, (time.time(), "log", event_dict.get("level"),
                           _text(event_dict.get("event")), _fields(event_dict)))

    def write(self, task: Any, stream: str, text: str) -> None:
        """Text a task wrote to ``stream``; complete lines become records."""
        if not self._on_loop(self.write, task, stream, text):
            return
        key = (task.id, stream)
        lines = (self._partial.pop(key, "") + text).split("\n")
        rest = lines.pop()
        if len(rest) > MAX_TEXT:  # no newline in sight: write out whole pieces, keep the tail
            cut = len(rest) - len(rest) % MAX_TEXT
            lines.append(rest[:cut])
            rest = rest[cut:]
        if rest:
            self._partial[key] = rest
        for line in lines:
            for start in range(0, max(len(line), 1), MAX_TEXT):  # a long line in pieces
                self._printed(task, stream, line[start:start + MAX_TEXT])

    def _printed(self, task: Any, stream: str, line: str) -> None:
        line = line[:MAX_TEXT]
        self.add(task.id, (time.time(), stream, None, line, None))
        if task.ctx is not None:
            task.ctx.log.info(line, stream=stream, _printed=True)

    def add(self, tid: int, record: Record) -> None:
        """Append a record to a task's buffer and hand it to the followers."""
        if not self._on_loop(self.add, tid, record):
            return
        buf = self._buffers.get(tid)
        if buf is None:
            if not self.size and not self._by_task and not self._by_job:
                return
            t = self._lookup(tid)
            if t is None:
                return
            buf = self._buffers[tid] = _Buffer(t.name, t.job.name, self.size)
        buf.records.append(record)
        written = self._written.get(buf.job)
        if written is None:
            written = self._written[buf.job] = {}
        else:
            written.pop(tid, None)
        written[tid] = None
        if self._by_task or self._by_job:
            self._fan_out(tid, buf, record)

    def _on_loop(self, fn: Callable[..., None], *args: Any) -> bool:
        """True on the event loop's thread; else pass the call to the loop and say False."""
        if self._loop_thread is None or threading.get_ident() == self._loop_thread:
            return True
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            pass  # the daemon is gone; so is anyone who could read the record
        return False

    def _fan_out(self, tid: int, buf: _Buffer, record: Record) -> None:
        item = _item(tid, buf, record)
        for feed in self._by_task.get(tid, ()):
            feed.put(item)
        for feed in self._by_job.get(buf.job, ()):
            feed.put(item)

    # ---------------------------------------------------------------- lifecycle

    def ended(self, t: Any) -> None:
        """t has ended for good: its unfinished lines are written out, its followers
        told; its buffer is kept as long as the registry keeps the task."""
        for stream in ("stdout", "stderr"):
            rest = self._partial.pop((t.id, stream), None)
            if rest:
                self._printed(t, stream, rest)
        for feed in self._by_task.pop(t.id, ()):
            feed.close({"ended": t.state, "error": t.error})
        if t.id in self._buffers:
            self._ended.append(t.id)
            while len(self._ended) > ENDED_KEPT:
                self._forget(self._ended.popleft())

    def _forget(self, tid: int) -> None:
        buf = self._buffers.pop(tid, None)
        written = self._written.get(buf.job) if buf is not None else None
        if written is not None:
            written.pop(tid, None)
            if not written:
                del self._written[buf.job]

    def close(self) -> None:
        """The daemon stops: end every follower's stream."""
        for table in (self._by_task, self._by_job):
            for feeds in list(table.values()):
                for feed in feeds:
                    feed.close({"ended": "coschedd is stopping"})

    def job_removed(self, job: str) -> None:
        for feed in self._by_job.pop(job, ()):
            feed.close({"ended": "job removed", "job": job})

    # ---------------------------------------------------------------- readers

    def records(self, tids: list[int], lines: int) -> list[dict]:
        """The last ``lines`` records of these tasks together, oldest first."""
        if not lines:
            return []
        found = []
        for tid in tids:
            buf = self._buffers.get(tid)
            if buf is not None:
                found += [(r, tid, buf) for r in list(buf.records)[-lines:]]
        found.sort(key=_when)  # stable: a task's records keep their order
        return _items(found[-lines:])

    def job_records(self, job: str, lines: int) -> list[dict]:
        """The last ``lines`` records of a job's tasks together, oldest first."""
        return _items([found for found in self.search(job, lines) if found is not None])

    def job_answer(self, job: str, lines: int) -> Chunked:
        """``{"records": job_records(job, lines)}``, searched for and sent a chunk at a
        time (a job of 100,000 tasks that printed is 100,000 buffers to look at)."""
        return Chunked({}, "records", self.search(job, lines), _items, {}, size=CHUNK)

    def search(self, job: str, lines: int) -> Iterator[tuple[Record, int, _Buffer] | None]:
        """``job_records`` as (record, task id, buffer), after a None for each buffer
        looked at: a caller may let the loop run between any two.

        The buffers written last are looked at first, and the search stops at a buffer
        whose newest record is older than the ``lines`` newest found (the records of
        the buffers written before it are older still, as long as the wall clock that
        times them is not set back): ``logs`` of a job whose 100,000 tasks each printed
        a line read every buffer (540 ms with the loop held) for ten lines; now it
        reads a few dozen."""
        found: list[tuple[Record, int, _Buffer]] = []
        cutoff = -math.inf   # a time no record of the answer is older than, once known
        for tid in self._written_last(job) if lines else ():
            buf = self._buffers.get(tid)   # (forgotten meanwhile: looked at, not taken)
            if buf is not None and buf.records:
                if buf.records[-1][0] < cutoff:
                    break   # nor are those of the buffers written before it
                records = buf.records
                found += [(r, tid, buf) for r in itertools.islice(
                    records, max(0, len(records) - lines), None)]
                if len(found) >= 2 * lines:
                    found.sort(key=_when)   # stable: a task's records keep their order
                    del found[:-lines]
                    cutoff = found[0][0][0]
            yield None
        found.sort(key=_when)
        yield from found[-lines:] if lines else ()

    def _written_last(self, job: str) -> Iterator[int]:
        """The ids of a job's buffers, written last first: the first CHUNK read from the
        index itself (a short search ends there, nothing copied: a million ids were
        40 ms), the others from a copy taken then (the search lets the loop run, and
        the index may change meanwhile: those already given are not given again)."""
        written = self._written.get(job, {})
        newest = list(itertools.islice(reversed(written), CHUNK))
        yield from newest
        if len(newest) == CHUNK:
            given = set(newest)
            yield from (tid for tid in list(reversed(written)) if tid not in given)

    def follow(self, *, tid: int | None = None, job: str | None = None, backlog: list[dict],
               queue: int) -> Stream:
        """A stream of the backlog, then the new records of a task or of a job."""
        feed = Feed(queue)
        table, key = (self._by_task, tid) if job is None else (self._by_job, job)
        table.setdefault(key, set()).add(feed)

        def forget() -> None:
            feeds = table.get(key)
            if feeds is not None:
                feeds.discard(feed)
                if not feeds:
                    del table[key]
        return Stream(feed, backlog, close=forget)


def _when(found: tuple[Record, int, _Buffer]) -> float:
    return found[0][0]


def _items(found: list[tuple[Record, int, _Buffer]]) -> list[dict]:
    return [_item(tid, buf, r) for r, tid, buf in found]


def _item(tid: int, buf: _Buffer, record: Record) -> dict:
    when, source, level, message, fields = record
    return {"time": when, "task": buf.name, "id": tid, "job": buf.job, "source": source,
            "level": level, "message": message, "fields": fields}


class OutputProxy:
    """Stands in for sys.stdout or sys.stderr: what a task writes goes to its buffer
    (see the module docstring); anything else to the stream it replaced."""

    def __init__(self, stream: Any, name: str, logs: TaskLogs) -> None:
        self._stream = stream
        self._name = name
        self._logs = logs

    @property
    def replaced(self) -> Any:
        return self._stream

    def write(self, text: str) -> int:
        task = CURRENT_TASK.get()
        if task is None or getattr(_inside, "write", False) or _from_logger():
            # Not a task's; or a log line rendered to this stream (a structlog logger
            # writing to stdout holds a lock that filing the text would take again):
            # to the real stream, not round again.
            return self._stream.write(text)
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        _inside.write = True
        try:
            self._logs.write(task, self._name, text)
        finally:
            _inside.write = False
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if CURRENT_TASK.get() is None:
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


_inside = threading.local()  # .write: a proxy is filing a task's text on this thread


def _from_logger() -> bool:
    """Whether the text comes from structlog's own output (print or write, two frames up)."""
    try:
        caller = sys._getframe(2)
    except ValueError:  # called from the bottom of a stack: not by a logger
        return False
    return caller.f_globals.get("__name__", "").startswith("structlog")


def install(logs: TaskLogs) -> Callable[[], None]:
    """Put proxies in place of sys.stdout and sys.stderr; returns the undo."""
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = OutputProxy(out, "stdout", logs), OutputProxy(err, "stderr", logs)

    def undo() -> None:
        if isinstance(sys.stdout, OutputProxy) and sys.stdout._logs is logs:
            sys.stdout = out
        if isinstance(sys.stderr, OutputProxy) and sys.stderr._logs is logs:
            sys.stderr = err
    return undo
