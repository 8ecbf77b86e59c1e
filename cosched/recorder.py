"""The recorder: what the supervisor's lifecycle events mean for the state database.

It listens to ``cosched.events`` (so the supervisor only announces; it never
calls the database) and turns each event into queued store operations; the
store's writer thread does the I/O (``cosched.store``). On the event loop it
costs a tuple, a queue append and, for values, their JSON.

Durable ``task.state``
    The state of a job's tasks is kept under the job's name; a child spawned
    with ``name=`` keeps its own under ``<job>/<name>``; other children have
    none. A new task of the job (a new start, a timed run, the first task after
    the daemon restarts) starts with the last state saved, and ``task.restored``
    tells it so. The state is saved (encoded at that moment, committed right
    after, in the writer's next batch) whenever the task suspends at the
    daemon, ends (finished, failed, killed, interrupted) or restarts (committed
    within ``store.LINGER`` plus the commit's own time); and
    ``await task.checkpoint()`` returns only once it is committed and fsync'd.
    A state that cannot be encoded is logged (naming the key) at the implicit
    points, and raised as ``StateError`` by ``checkpoint``; the last good state
    stays saved.

History
    With ``history.record``: each task's start, suspensions and resumptions
    with their values, its end with result, error and traceback; job loads,
    refusals and removals; timed runs that were skipped or caught up.

Graceful stop
    Tasks alive when the daemon stops are recorded as *interrupted* (a
    suspended one with the values it was waiting with); their jobs are started
    again at the next start, from the saved state. A coroutine's frames cannot
    be saved: the new task begins at ``main`` and picks up from ``task.state``.

Task ids
    Ids are reserved ahead, in blocks committed before the ids are reached, so
    no id is handed out twice, even across a crash.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import structlog
import trio

from . import protocol
from .events import task_event
from .protocol import MAX_TASK_ID, NO_SUCH_TASK, ControlError
from .saferepr import safe_repr
from .statejson import StateError, decode_state, encode_state
from .store import ID_BLOCK, Initial, Store, history_query, known_query, task_query

__all__ = ["Recorder", "StateError"]

log = structlog.get_logger("cosched.recorder")

_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))   # ASCII: storable text
MAX_EVENT_DATA = 160 * 1024  # characters of one event's fields (values, traceback) kept
CHUNK = 1000                 # history events sent between two turns of the loop


class Recorder:
    """Subscribes to a Supervisor's events and keeps its durable state in a Store."""

    def __init__(self, store: Store, initial: Initial, sup: Any, *, history: bool) -> None:
        self.store, self.sup, self.recording = store, sup, history
        self.saved: dict[str, str] = dict(initial.states)   # key -> last state text queued
        self.interrupted: dict[str, int] = dict(initial.interrupted)  # job -> its task then
        self.timers = initial.timers
        self._ceiling = initial.next_id + ID_BLOCK   # ids below this are reserved on disk
        self._stopping: dict[int, list | None] = {}  # tasks alive at a stop -> yielded values
        self._wakeups = _Wakeups()
        self.checkpointer = self.checkpoint   # one bound method for every task, not one each
        self._handlers = {"suspended": self._suspended,
                          "resumed": self._resumed, "restarting": self._restarting,
                          "finished": self._ended, "failed": self._ended, "killed": self._ended,
                          "stopping": self._stop, "job-loaded": self._job,
                          "job-refused": self._job, "job-removed": self._job}
        sup.reg.next_id = max(sup.reg.next_id, initial.next_id)
        sup.durable = self
        self.unsubscribe = sup.events.listen(self.on_event, self.on_task, self.on_started)

    # ------------------------------------------------------------ task.state

    def context_args(self, job: str, parent: Any, name: str | None) -> dict:
        """TaskContext keywords of a new task: its state key, restored state, checkpoint."""
        key = job if parent is None else f"{job}/{name}" if name else None
        text = self.saved.get(key) if key is not None else None
        return {"state": decode_state(text) if text is not None else None,
                "restored": text is not None, "key": key, "checkpointer": self.checkpointer}

    async def checkpoint(self, ctx: Any) -> None:
        if ctx._key is None:
            raise StateError(f"task {ctx.name} (#{ctx.id}) has no durable state: a job's own "
                             "tasks have one, and children spawned with name=")
        text = encode_state(ctx.state)
        self.saved[ctx._key] = text
        waiter = _Waiter(self._wakeups)
        self.store.put_state(ctx._key, text, ctx.id, waiter.done)
        await waiter.wait(f"task.state of {ctx.name} (#{ctx.id})")

    def _save(self, t: Any) -> None:
        key = t.ctx._key if t.ctx is not None else None
        if key is None:
            return
        try:
            text = encode_state(t.ctx.state)
        except StateError as e:
            log.error("task.state not saved; the last good state stays", task=t.name, id=t.id,
                      job=t.job.name, error=str(e))
            return
        # unchanged states are not written again, unless a commit ever failed: then the
        # text last queued may not be on disk
        if self.saved.get(key) != text or self.store.failed_commits:
            self.saved[key] = text
            self.store.put_state(key, text, t.id)

    def take_interrupted(self, job: str) -> bool:
        """Whether a stop interrupted this job's task (once: the flag is cleared)."""
        if self.interrupted.pop(job, None) is None:
            return False
        self.store.interrupted(job, None, time.time())
        return True

    # ------------------------------------------------------------ events

    def on_task(self, when: float, kind: str, t: Any, fields: dict) -> None:
        """A task event: a start is taken as it is (a million children start at once),
        the others as the dict on_event takes."""
        if kind == "started":
            try:
                self._started(when, t, fields.get("restarts", 0))
            except Exception:  # noqa: BLE001 - as on_event
                log.exception("recording an event failed", event=kind, task=t.id)
        else:
            self.on_event(task_event(when, kind, t, fields))

    def on_event(self, e: dict) -> None:
        handler = self._handlers.get(e["event"])
        if handler is None:
            return
        try:
            handler(e)
        except Exception:  # noqa: BLE001 - raising would unsubscribe us: log, carry on
            log.exception("recording an event failed", event=e.get("event"), task=e.get("id"))

    def on_started(self, times: list[float], tasks: list[Any]) -> None:
        """First starts heard in a batch (``Events.flush``): queued as the tasks alone (a
        burst of a million waits for the writer: a pointer each)."""
        try:
            self._reserve(max(t.id for t in tasks))
            if self.recording:
                self.store.task_started_many(_first_start_row, tasks)
        except Exception:  # noqa: BLE001 - as on_event
            log.exception("recording first starts failed", tasks=len(tasks))

    def _reserve(self, tid: int) -> None:
        if tid >= self._ceiling - ID_BLOCK // 2:   # reserve the next block well before use
            self._ceiling = max(self._ceiling, tid) + ID_BLOCK
            self.store.reserve_ids(self._ceiling)

    def _started(self, when: float, t: Any, restarts: int) -> None:
        self._reserve(t.id)
        if not self.recording:
            return
        if restarts:
            self.store.task_started_from(_start_row, t, when, restarts)
        else:   # a first life: queued as the task alone (a burst of a million waits for
            self.store.task_started_from(_first_start_row, t)   # the writer: 40 B each fewer)

    def _suspended(self, e: dict) -> None:
        self._save(self.sup.tasks[e["id"]])
        if self.recording:
            self.store.event(e["time"], e["id"], e["job"], "suspended", _values(e["values"]))

    def _resumed(self, e: dict) -> None:
        if self.recording:
            self.store.event(e["time"], e["id"], e["job"], "resumed", _values(e["values"]))

    def _restarting(self, e: dict) -> None:
        self._save(self.sup.tasks[e["id"]])
        if self.recording:
            self.store.event(e["time"], e["id"], e["job"], "restarting",
                             json.dumps({"delay": e["delay"]}))

    def _ended(self, e: dict) -> None:
        t = self.sup.tasks[e["id"]]
        self._save(t)
        state, data = e["event"], {}
        if t.id in self._stopping:
            state, values = "interrupted", self._stopping.pop(t.id)
            if values is not None:
                data["values"] = values
            if t.parent is None:
                self.interrupted[t.job.name] = t.id
                self.store.interrupted(t.job.name, t.id, e["time"])
        if not self.recording:
            return
        error, tb = e.get("error"), e.get("traceback")
        if state == "finished":
            data["result"] = e["result"]   # (show of an old task reads it from this event)
        data.update({k: v for k, v in (("error", error), ("traceback", tb)) if v is not None})
        self.store.task_ended(t.id, e["time"], e["job"], state, _bounded(data), state, None,
                              _text(error), _text(tb))

    def _stop(self, e: dict) -> None:
        """The daemon stops: what is alive now is interrupted, not killed."""
        for t in self.sup.reg.alive():
            self._stopping[t.id] = list(t.yielded) if t.state == "suspended" and t.yielded \
                is not None else None

    def _job(self, e: dict) -> None:
        if self.recording and e["job"] != "*":
            fields = {k: _text(e[k]) for k in ("path", "error") if e.get(k) is not None}
            self.store.event(e["time"], None, e["job"], e["event"],
                             json.dumps(fields) if fields else None)

    def timer_event(self, job: str, kind: str, **fields: Any) -> None:
        """A timed job's time was skipped, queued or caught up (for the history)."""
        if self.recording:
            self.store.event(time.time(), None, job, kind, json.dumps(fields))

    # ------------------------------------------------------------ reads and closing

    async def read(self, query, what: str) -> Any:
        """``query(connection)`` in the writer thread, after everything queued so far."""
        self.sup.events.flush()   # (first starts held back are queued before it)
        waiter = _Waiter(self._wakeups)
        self.store.read(query, waiter.done)
        return await waiter.wait(what, "read")

    async def history(self, target: int | str | None, since: float | None,
                      limit: int) -> dict | protocol.Chunked:
        """Recorded events (see ``store.history_query``); refuses a target the history and
        the daemon have never heard of, so that a typo is not an empty answer."""
        if not self.recording:
            return {"events": [], "more": False, "recording": False}
        storable = not isinstance(target, str) or _text(target) is target  # (names are)
        found = await self.read(history_query(target, since, limit), "the history") \
            if storable else {"events": [], "more": False}
        if target is not None and not found["events"] and not self._knows(target):
            if not storable or not await self.read(known_query(target), "the history"):
                raise ControlError(NO_SUCH_TASK, f"no task or job {target!r} in the history "
                                                 "(see coschedctl jobs and status)")
        if len(found["events"]) <= CHUNK:
            return {**found, "recording": True}
        # Encoded at once, 100,000 events held the loop for half a second: a chunk at a
        # time (they were made in the writer's thread, off the loop)
        return protocol.Chunked({}, "events", found["events"], list,
                                {"more": found["more"], "recording": True}, size=CHUNK)

    def _knows(self, target: int | str) -> bool:
        """A job, or a task the registry lists, by id or by name: looked up, not
        searched for (the names of 100,000 tasks were 58 ms of the loop per typo)."""
        if target in self.sup.job_table:
            return True
        try:
            self.sup.find(target)
        except ControlError:
            return False
        return True

    async def task_record(self, ref: int | str) -> dict | None:
        """``show`` of a task that only the history still knows (it ended before a
        restart, or long ago): what was recorded, in the shape of a live task's show."""
        if not self.recording:
            return None
        if isinstance(ref, str) and ref.isascii() and ref.isdigit() and len(ref) <= 19:
            ref = int(ref)
            if ref > MAX_TASK_ID:   # (more than SQLite's integers hold: no task has it)
                return None
        elif isinstance(ref, str) and _text(ref) is not ref:   # text no stored name is
            return None
        row = await self.read(task_query(ref), "the history")
        if row is None:
            return None
        return {"id": row["id"], "name": row["name"], "job": row["job"], "state": row["state"],
                "waiting_on": None, "error": row["error"], "busy": None, "longest_step": None,
                "steps": None, "switches": None, "age": None, "started_at": row["started"],
                "ended_at": row["ended"], "restarts": row["restarts"], "yielded": row["yielded"],
                "stack": [], "traceback": row["traceback"], "parent": row["parent"],
                "children": [], "path": row["path"], "result": row["result"],
                "task_state": None, "recorded": True}

    async def close(self, timeout: float) -> bool:
        """Commit everything queued, then close the database (off the loop)."""
        self.sup.events.flush()
        waiter = _Waiter(self._wakeups)
        self.store.reserve_ids(self.sup.reg.next_id)   # exact: no block is skipped next start
        self.store.barrier(waiter.done)
        with trio.move_on_after(timeout):
            try:
                await waiter.wait("the last changes")
            except StateError as e:
                log.error("state database: the last changes were not saved", error=str(e))
        return await trio.to_thread.run_sync(self.store.close, 1.0)


class _Wakeups:
    """Hands waiters from the writer thread to the event loop: one run_sync_soon per
    burst of commits, however many checkpoints they answer."""

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._lock = threading.Lock()
        self._ready: list[_Waiter] = []

    def post(self, waiter: _Waiter) -> None:   # any thread
        with self._lock:
            first = not self._ready
            self._ready.append(waiter)
        if first:
            try:
                self._token.run_sync_soon(self._deliver)
            except trio.RunFinishedError:
                pass

    def _deliver(self) -> None:   # the event loop
        with self._lock:
            ready, self._ready = self._ready, []
        for waiter in ready:
            waiter.event.set()


class _Waiter:
    __slots__ = ("wakeups", "event", "result", "error")

    def __init__(self, wakeups: _Wakeups) -> None:
        self.wakeups = wakeups
        self.event = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def done(self, result: Any, error: BaseException | None) -> None:   # the writer thread
        self.result, self.error = result, error
        self.wakeups.post(self)

    async def wait(self, what: str, doing: str = "save") -> Any:
        await self.event.wait()
        if self.error is not None:
            where = "in" if doing == "save" else "from"
            raise StateError(f"could not {doing} {what} {where} the state database: "
                             f"{self.error}")
        return self.result


def _start_row(t: Any, when: float, restarts: int) -> tuple:
    """A task's row in the history (made in the writer thread: these fields never change).
    A task named <job>.<id> is stored with the name '' (its name is not made for it)."""
    name = t.own_name()
    return (t.id, _text(name) if name is not None else "", t.job.name,
            t.parent.id if t.parent is not None else None, _text(str(t.job.path)), when,
            restarts)


def _first_start_row(t: Any) -> tuple:
    """``_start_row`` of a task's first life: it started when it was made."""
    return _start_row(t, t.started_at, 0)


def _text(value: str | None) -> str | None:
    """A string SQLite can store (text from jobs may hold lone surrogates)."""
    if value is None or value.isascii():
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _values(values: list) -> str:
    return _bounded({"values": values})


def _bounded(data: dict) -> str | None:
    """JSON of an event's fields (values from jobs made JSON by the protocol's guarded
    encoder), at most MAX_EVENT_DATA characters: longer values are summarised."""
    if not data:
        return None
    try:
        text = _ENCODER.encode(data)
    except (TypeError, ValueError, RecursionError):   # values JSON cannot hold: the
        text = protocol.encode(data)[:-1].decode("utf-8")   # protocol's guarded encoder
    if len(text) <= MAX_EVENT_DATA:
        return text
    short = {k: (v if k in ("error", "traceback") else safe_repr(v, 1000))
             for k, v in data.items()}
    return protocol.encode({**short, "shortened": True})[:-1].decode("utf-8")
