"""The supervisor: the task registry, each task's lifecycle, restart policy and statistics.

A *task* is one instance of a job: its root coroutine (``coro.create(job.main)``)
driven by one trio task that is the coroutine's main. When the job yields (or
transfers to main) the task is *suspended at the daemon* with those values until
someone resumes it; returning means *finished*, raising means *failed* (the
restart policy decides what follows); *killed* means cancelled while running, or
closed while suspended, with its cleanup run either way.

Everything here runs in the daemon's trio run. Job code only ever runs in the
task's own trio task; the control server only calls the methods below. Busy time
and steps come from a trio Instrument, so jobs need no hooks.
"""

from __future__ import annotations

import linecache
import os
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any

import psutil
import structlog
import trio

from . import __version__, coro
from ._coro import last_transfer_to_main, stack_of, switches_of
from .config import Config, JobPolicy
from .loader import Job, JobLoadError, job_files, load_job, signature
from .protocol import (BUSY, ControlError, JOB_DISABLED, NO_SUCH_JOB, NO_SUCH_TASK, NOT_ALIVE,
                       NOT_SUSPENDED)
from .task import TaskContext

__all__ = ["Supervisor", "Task"]

log = structlog.get_logger("cosched.supervisor")

ALIVE = frozenset({"starting", "running", "waiting", "suspended", "restarting"})
ENDED_KEPT = 1000  # ended tasks kept for status; older ones are forgotten
_TRIO_DIR = os.path.dirname(trio.__file__)
_PKG_DIR = os.path.dirname(__file__)


class Task:
    """One job instance and everything operators may ask about it."""

    __slots__ = (
        "id", "name", "job", "policy", "ctx", "fn", "args", "parent", "children",
        "state",         # starting|running|suspended|restarting|finished|failed|killed ("waiting" is derived)
        "started_at", "born", "restarts", "starts",
        "busy", "steps", "longest_step", "step_began",
        "switches",      # coroutine switches in its trio task, taken from the chain when it ends
        "yielded",       # values of the latest suspension, while suspended
        "result", "error", "traceback",
        "root", "trio_task", "scope", "kill_requested",
        "inbox",         # values an operator resumed it with, until the task takes them
        "wake",          # set to hand `inbox` (or a kill) to a suspended task
        "stopped",       # set whenever the task suspends or ends; replaced after each
        "ended",         # set once, when the task has ended for good
    )

    def __init__(self, id: int, name: str, job: Job, policy: JobPolicy, fn, args: tuple,
                 parent: Task | None) -> None:
        self.id, self.name, self.job, self.policy = id, name, job, policy
        self.fn, self.args, self.parent, self.children = fn, args, parent, []
        self.ctx: TaskContext | None = None
        self.state = "starting"
        self.started_at = time.time()
        self.born = time.monotonic()
        self.restarts = 0
        self.starts: deque[float] = deque()
        self.busy = 0.0
        self.steps = 0
        self.longest_step = 0.0
        self.step_began = 0.0
        self.switches = 0
        self.yielded: tuple | None = None
        self.result = None
        self.error: str | None = None
        self.traceback: str | None = None
        self.root = None
        self.trio_task = None
        self.scope: trio.CancelScope | None = None
        self.kill_requested = False
        self.inbox: tuple | None = None
        self.wake = trio.Event()
        self.stopped = trio.Event()
        self.ended = trio.Event()

    @property
    def alive(self) -> bool:
        return self.state in ALIVE

    def shown_state(self) -> str:
        """running (runnable or stepping) vs waiting (blocked in the event loop) is read off trio."""
        if self.state == "running" and self.trio_task is not None:
            runnable = getattr(self.trio_task, "_next_send_fn", None) is not None
            return "running" if runnable else "waiting"
        return self.state

    def _signal_stop(self) -> None:
        self.stopped.set()
        self.stopped = trio.Event()


def _where(frames: list[tuple[str, int, str]]) -> str | None:
    """'trio.sleep at ticker.py:12' from a stack: the event-loop call and the job line that made it.

    trio's socket methods are generated wrappers with no telling name; for them the
    job's own line says more ('await sock.recv(1) at echo.py:30').
    """
    for i, (file, _line, func) in enumerate(frames):
        if file.startswith(_TRIO_DIR):
            caller = next((f for f in reversed(frames[:i]) if not f[0].startswith(_PKG_DIR)), None)
            if caller is None:
                return f"trio.{func.lstrip('_')}"
            what = f"trio.{func.lstrip('_')}"
            if "<locals>" in func:
                what = linecache.getline(caller[0], caller[1]).strip() or what
            return f"{what} at {os.path.basename(caller[0])}:{caller[1]}"
    return None


class _StepClock(trio.abc.Instrument):
    """Busy time, steps and longest step per task, from trio's step hooks."""

    def __init__(self, sup: Supervisor) -> None:
        self.by_trio = sup.by_trio
        self.warn_after = sup.config.step_warning

    def before_task_step(self, task) -> None:
        t = self.by_trio.get(task)
        if t is not None:
            t.step_began = time.perf_counter()

    def after_task_step(self, task) -> None:
        t = self.by_trio.get(task)
        if t is None:
            return
        dt = time.perf_counter() - t.step_began
        t.busy += dt
        t.steps += 1
        if dt > t.longest_step:
            t.longest_step = dt
        if self.warn_after and dt > self.warn_after:
            log.warning("long step blocks the event loop", task=t.name, id=t.id, seconds=round(dt, 4))


class Supervisor:
    """Owns jobs and tasks; implements the control backend (status, show, resume, ...)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.job_table: dict[str, dict[str, Any]] = {}   # name -> {"path", "job", "error", "signature"}
        self.tasks: dict[int, Task] = {}
        self.live_names: set[str] = set()       # names of alive tasks (names are unique among them)
        self.ended: deque[int] = deque()        # ids of ended tasks still listed, oldest first
        self.by_trio: dict[Any, Task] = {}
        self.next_id = 1
        self.started = time.monotonic()
        self.nursery: trio.Nursery | None = None
        self.clock = _StepClock(self)
        self.process = psutil.Process()
        self.process.cpu_percent()  # prime: the next call reports usage since now

    # ---------------------------------------------------------------- lifecycle

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Load the jobs folder, start what autostarts, and supervise until cancelled."""
        trio.lowlevel.add_instrument(self.clock)
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                self.rescan()
                task_status.started()
                await trio.sleep_forever()
        finally:
            trio.lowlevel.remove_instrument(self.clock)

    async def stop(self, timeout: float) -> None:
        """Kill every task (cleanup runs) and wait for them, at most ``timeout`` seconds."""
        alive = [t for t in self.tasks.values() if t.alive]
        for t in alive:
            self._request_kill(t)
        with trio.move_on_after(timeout):
            for t in alive:
                await t.ended.wait()
        left = [t.name for t in alive if t.alive]
        if left:
            log.warning("tasks did not finish their cleanup in time", tasks=left, timeout=timeout)

    # ---------------------------------------------------------------- jobs

    def rescan(self) -> dict:
        """Bring the job table in line with the folder: load new and changed files, drop removed ones."""
        folder = self.config.jobs_dir
        try:
            files = job_files(folder)
        except OSError as e:
            log.error("cannot read the jobs folder", folder=str(folder), error=str(e))
            files = {}
        report = {"loaded": [], "removed": [], "errors": []}
        for name in [n for n in self.job_table if n not in files]:
            self._remove_job(name)
            report["removed"].append(name)
        for name, path in files.items():
            self.sync_file(path, report)
        return report

    def sync_file(self, path: Path, report: dict | None = None) -> None:
        """(Re)load one job file if it is new or changed since it was last seen."""
        name = path.stem
        try:
            sig = signature(path.stat())
        except FileNotFoundError:
            if name in self.job_table:
                self._remove_job(name)
                if report is not None:
                    report["removed"].append(name)
            return
        entry = self.job_table.get(name)
        if entry is not None and entry["signature"] == sig and entry["path"] == path:
            return
        try:
            job = load_job(path)
        except JobLoadError as e:
            self.job_table[name] = {"path": path, "job": None, "error": str(e), "signature": sig}
            log.error("job failed to load", job=name, path=str(path), reason=str(e))
            if report is not None:
                report["errors"].append({"job": name, "path": str(path), "error": str(e)})
            return
        self.job_table[name] = {"path": path, "job": job, "error": None, "signature": sig}
        log.info("job loaded", job=name, path=str(path), reloaded=entry is not None)
        if report is not None:
            report["loaded"].append(name)
        old = self._tasks_of(name)
        for t in old:
            self._request_kill(t)   # the old code's tasks give way to the new version
        policy = self.config.job_policy(name)
        if policy.enabled and policy.autostart:
            self.nursery.start_soon(self._start_after, name, old)

    async def _start_after(self, name: str, old: list[Task]) -> None:
        for t in old:
            await t.ended.wait()
        entry = self.job_table.get(name)
        if entry is not None and entry["job"] is not None:
            self.start_task(entry["job"])

    def _remove_job(self, name: str) -> None:
        for t in self._tasks_of(name):
            self._request_kill(t)
        del self.job_table[name]
        log.info("job removed", job=name)

    def _tasks_of(self, job: str) -> list[Task]:
        return [t for t in self.tasks.values() if t.job.name == job and t.alive and t.parent is None]

    # ---------------------------------------------------------------- tasks

    def start_task(self, job: Job, fn=None, args: tuple = (), parent: Task | None = None,
                   name: str | None = None) -> Task:
        policy = self.config.job_policy(job.name)
        if parent is not None:
            policy = policy.__class__(**{**_fields(policy), "restart": "no"})
        tid = self.next_id
        self.next_id += 1
        name = name or self._free_name(job.name if parent is None else f"{parent.name}.{tid}")
        t = Task(tid, name, job, policy, fn or job.main, args, parent)
        t.ctx = TaskContext(name, tid, structlog.get_logger("cosched.job").bind(task=name, id=tid),
                            policy.config, spawner=self._spawn)
        self.tasks[tid] = t
        self.live_names.add(name)
        if parent is not None:
            parent.children.append(t)
        self.nursery.start_soon(self._supervise, t, name=f"cosched task {name}")
        return t

    def _free_name(self, base: str) -> str:
        if base not in self.live_names:
            return base
        n = 2
        while f"{base}.{n}" in self.live_names:
            n += 1
        return f"{base}.{n}"

    def _spawn(self, parent_ctx: TaskContext, fn, args: tuple, name: str | None) -> TaskContext:
        parent = self.tasks[parent_ctx.id]
        return self.start_task(parent.job, fn, args, parent, name and self._free_name(name)).ctx

    def _forget_old(self, t: Task) -> None:
        """t has ended: keep it listed, forgetting the oldest ended tasks beyond ENDED_KEPT."""
        self.live_names.discard(t.name)
        self.ended.append(t.id)
        while len(self.ended) > ENDED_KEPT:
            self.tasks.pop(self.ended.popleft(), None)

    async def _supervise(self, t: Task) -> None:
        """Run t, restarting it as its policy says, until it ends for good."""
        t.trio_task = trio.lowlevel.current_task()
        t.step_began = time.perf_counter()  # this first step began before the clock knew the task
        self.by_trio[t.trio_task] = t
        try:
            while True:
                t.starts.append(time.monotonic())
                await self._run_once(t)
                delay = self._restart_delay(t)
                if delay is None:
                    break
                t.state = "restarting"
                log.info("restarting task", task=t.name, id=t.id, delay=delay, after=t.error)
                with trio.CancelScope() as t.scope:
                    await trio.sleep(delay)
                if t.kill_requested or t.scope.cancelled_caught:
                    t.state = "killed"
                    break
                t.restarts += 1
        finally:
            # This last step ends after the task is unregistered: account for it here.
            t.busy += time.perf_counter() - t.step_began
            t.steps += 1
            t.switches = switches_of(t.trio_task)
            del self.by_trio[t.trio_task]
            t.trio_task = None
            t.yielded = None
            t.ctx._finish(t.state, t.result if t.state == "finished" else t.error)
            t.ended.set()
            t._signal_stop()
            self._forget_old(t)
            for child in t.children:
                if child.alive:
                    self._request_kill(child)

    def _restart_delay(self, t: Task) -> float | None:
        p = t.policy
        if t.state == "killed" or p.restart == "no" or (p.restart == "on-failure" and t.state != "failed"):
            return None
        now = time.monotonic()
        while t.starts and now - t.starts[0] > p.start_limit_interval:
            t.starts.popleft()
        if len(t.starts) >= p.start_limit_burst:
            limit = f"start limit hit ({p.start_limit_burst} starts in {p.start_limit_interval:g}s)"
            t.error = limit if t.error is None else f"{t.error}; {limit}"
            log.error("task hit its start limit; not restarting", task=t.name, id=t.id)
            return None
        return min(p.restart_delay * 2 ** t.restarts, p.restart_delay_max)

    async def _run_once(self, t: Task) -> None:
        """One life of t: drive its root coroutine, parking it whenever it yields to the daemon."""
        t.root = coro.create(t.fn)
        t.error = t.traceback = t.result = None
        t.state = "running"
        target, values, transfer = t.root, (t.ctx, *t.args), False
        with trio.CancelScope() as t.scope:
            while True:
                try:
                    if transfer:
                        got = (True, *_unpack(await coro.transfer(target, *values)))
                    else:
                        got = await coro.resume(target, *values)
                except Exception as e:  # a transferred-into chain raised into main
                    got = (False, e)
                if coro.status(t.root) == "dead" or not got[0]:
                    self._ended(t, got)
                    return
                # Suspended at the daemon: the root yielded, or some coroutine transferred to main.
                transfer = coro.status(t.root) != "suspended"
                target = last_transfer_to_main() if transfer else t.root
                if target is None:
                    self._ended(t, (False, coro.CoroutineError("no suspended coroutine to continue")))
                    return
                values = await self._park(t, got[1:])
                if values is None:  # killed while suspended: run its cleanup
                    await self._close(t, target)
                    return
                t.state = "running"
        if t.scope.cancelled_caught:
            t.state = "killed"
            log.info("task killed", task=t.name, id=t.id)

    async def _park(self, t: Task, values: tuple) -> tuple | None:
        """Suspended at the daemon until resumed (returns the values) or killed (None)."""
        t.yielded = values
        t.state = "suspended"
        t._signal_stop()
        log.info("task suspended", task=t.name, id=t.id, values=_short(values))
        with trio.CancelScope(shield=True):   # a kill arrives through `wake`, so cleanup can run
            await t.wake.wait()
        t.wake = trio.Event()
        t.yielded = None
        if t.kill_requested:
            return None
        values, t.inbox = t.inbox, None
        return values

    async def _close(self, t: Task, target) -> None:
        co = target if coro.status(target) == "suspended" else t.root
        ok, *err = await coro.close(co) if coro.status(co) == "suspended" else (True,)
        t.state = "killed"
        if not ok:
            t.error = f"cleanup failed: {err[0]!r}"
        log.info("task killed", task=t.name, id=t.id, cleanup="ok" if ok else t.error)

    def _ended(self, t: Task, got: tuple) -> None:
        if got[0]:
            t.state = "finished"
            t.result = _pack(got[1:])
            log.info("task finished", task=t.name, id=t.id, result=_short(got[1:]))
        else:
            exc = got[1]
            t.state = "failed"
            t.error = f"{type(exc).__name__}: {exc}"
            t.traceback = "".join(traceback.format_exception(exc))
            log.error("task failed", task=t.name, id=t.id, error=t.error)

    def _request_kill(self, t: Task) -> None:
        t.kill_requested = True
        if t.state == "suspended":
            t.wake.set()
        elif t.scope is not None:
            t.scope.cancel()

    # ---------------------------------------------------------------- control backend

    def find(self, ref: str | int) -> Task:
        # Only ASCII digits make an id ("²".isdigit() is true, int("²") fails), and no
        # more of them than an id can have: int() never converts thousands of digits.
        if isinstance(ref, int) or (ref.isascii() and ref.isdigit() and len(ref) <= 19):
            t = self.tasks.get(int(ref))
            if t is not None:
                return t
        named = [t for t in self.tasks.values() if t.name == ref]
        if not named:
            raise ControlError(NO_SUCH_TASK, f"no task {ref!r} (see coschedctl status)")
        live = [t for t in named if t.alive]
        return (live or named)[-1]

    def status(self, task: str | int | None = None, job: str | None = None,
               state: str | None = None) -> dict:
        tasks = [self.find(task)] if task is not None else list(self.tasks.values())
        if job is not None:
            if job not in self.job_table and not any(t.job.name == job for t in tasks):
                raise ControlError(NO_SUCH_JOB, f"no job {job!r} in {self.config.jobs_dir}")
            tasks = [t for t in tasks if t.job.name == job]
        infos = [self.info(t) for t in tasks]
        if state is not None:
            infos = [i for i in infos if i["state"] == state]
        return {"daemon": self._daemon_info(), "tasks": infos, "job_errors": self._job_errors()}

    def show(self, task: str | int) -> dict:
        t = self.find(task)
        info = self.info(t)
        info.update(
            stack=[{"file": f, "line": n, "function": fn} for f, n, fn in self._stack(t)],
            traceback=t.traceback, longest_step=t.longest_step, started_at=t.started_at,
            config=t.policy.config, parent=t.parent.id if t.parent else None,
            children=[c.id for c in t.children], path=str(t.job.path),
            result=t.result if t.state == "finished" else None, task_state=t.ctx.state)
        return info

    async def resume(self, task: str | int, values: list, timeout: float) -> dict:
        t = self.find(task)
        if t.state != "suspended":
            raise ControlError(NOT_SUSPENDED, f"task {t.name} (#{t.id}) is {t.shown_state()}, not suspended")
        stopped = t.stopped
        t.inbox = tuple(values)
        t.state = "running"
        t.wake.set()
        with trio.move_on_after(timeout):
            await stopped.wait()
        return self._outcome(t)

    async def kill(self, task: str | int) -> dict:
        t = self.find(task)
        if not t.alive:
            raise ControlError(NOT_ALIVE, f"task {t.name} (#{t.id}) has already {t.state}")
        self._request_kill(t)
        with trio.move_on_after(self.config.stop_timeout):
            await t.ended.wait()
        return {"task": self.info(t)}

    def _require_running(self) -> None:
        if self.nursery is None:
            raise ControlError(BUSY, "coschedd is still starting; try again")

    async def start(self, job: str, force: bool = False) -> dict:
        self._require_running()
        entry = self.job_table.get(job)
        if entry is None:
            raise ControlError(NO_SUCH_JOB, f"no job {job!r} in {self.config.jobs_dir}")
        if entry["job"] is None:
            raise ControlError(NO_SUCH_JOB, f"job {job!r} failed to load: {entry['error']}")
        if not force and not self.config.job_policy(job).enabled:
            raise ControlError(JOB_DISABLED, f"job {job!r} is disabled (enabled = false in its "
                                             "[job] table); start it with --force to run it "
                                             "anyway")
        t = self.start_task(entry["job"])
        await trio.lowlevel.checkpoint()  # let it take its first step before we report it
        return {"task": self.info(t)}

    async def reload(self) -> dict:
        self._require_running()
        report = self.rescan()
        report["errors"] = self._job_errors()
        return report

    def jobs(self) -> dict:
        out = []
        for name, e in sorted(self.job_table.items()):
            policy = self.config.job_policy(name)
            state = "error" if e["job"] is None else "loaded" if policy.enabled else "disabled"
            out.append({"name": name, "path": str(e["path"]), "state": state, "error": e["error"],
                        "tasks": [t.id for t in self.tasks.values() if t.job.name == name and t.alive]})
        return {"jobs": out}

    # ---------------------------------------------------------------- reports

    def info(self, t: Task) -> dict:
        state = t.shown_state()
        return {
            "id": t.id, "name": t.name, "job": t.job.name, "state": state,
            "waiting_on": _where(self._stack(t)) if state == "waiting" else None,
            "busy": round(t.busy, 6), "steps": t.steps,
            "switches": switches_of(t.trio_task) if t.trio_task is not None else t.switches,
            "age": round(time.monotonic() - t.born, 3), "restarts": t.restarts,
            "yielded": list(t.yielded) if t.yielded is not None else None,
            "error": t.error,
        }

    def _outcome(self, t: Task) -> dict:
        state = t.shown_state()
        outcome = {"suspended": "yielded", "finished": "finished", "failed": "failed",
                   "killed": "killed"}.get(state, "running")
        values = list(t.yielded) if state == "suspended" else (
            list(_unpack(t.result)) if state == "finished" else None)
        return {"task": self.info(t), "outcome": outcome, "values": values, "error": t.error}

    def _stack(self, t: Task) -> list[tuple[str, int, str]]:
        if t.trio_task is None:
            return []
        frames = stack_of(t.trio_task.coro)
        return [f for f in frames if not f[0].startswith(_PKG_DIR)] or frames

    def _daemon_info(self) -> dict:
        p = self.process
        with p.oneshot():
            mem = p.memory_info().rss
            cpu = p.cpu_times()
            pct = p.cpu_percent()
        return {"pid": os.getpid(), "uptime": round(time.monotonic() - self.started, 3),
                "rss": mem, "cpu_time": round(cpu.user + cpu.system, 3), "cpu_percent": pct,
                "num_tasks": sum(t.alive for t in self.tasks.values()), "version": __version__,
                "jobs_dir": str(self.config.jobs_dir), "socket": str(self.config.socket)}

    def _job_errors(self) -> list[dict]:
        return [{"job": n, "path": str(e["path"]), "error": e["error"]}
                for n, e in sorted(self.job_table.items()) if e["error"]]


def _fields(policy: JobPolicy) -> dict:
    return {f: getattr(policy, f) for f in policy.__dataclass_fields__}


def _pack(vals: tuple):
    return None if not vals else vals[0] if len(vals) == 1 else vals


def _unpack(v) -> tuple:
    return () if v is None else v if type(v) is tuple else (v,)


def _short(values: tuple, limit: int = 200) -> str:
    text = repr(values[0] if len(values) == 1 else values)
    return text if len(text) <= limit else text[: limit - 3] + "..."
