"""The supervisor: each task's lifecycle, the restart policy, and the control backend.

A *task* is one instance of a job: its root coroutine (``coro.create(job.main)``)
driven by one trio task that is the coroutine's main. When the job yields (or
transfers to main) the task is *suspended at the daemon* with those values until
someone resumes it; returning means *finished*, raising means *failed* (the
restart policy decides what follows); *killed* means cancelled while running, or
closed while suspended, with its cleanup run either way.

Design principles
-----------------
- A job is untrusted. Whatever escapes its body (any ``BaseException``: a
  ``SystemExit``, a ``KeyboardInterrupt``, a ``trio.Cancelled`` of its own
  making, a ``BaseExceptionGroup``), at a step or in cleanup, ends that task
  and nothing else. The daemon's own signals never arrive as exceptions in
  tasks (they come through trio's signal receiver), so telling "the job raised
  it" from "the daemon stops" is a question of where, not of type: a
  cancellation is the daemon's only when the daemon's nursery is cancelled; one
  that comes from the task's kill (a scope spliced in, see ``cosched.cancels``)
  or from a scope the job left open ends that task.
- Kill and stop always finish: cleanup gets ``stop_timeout`` seconds, after
  which the task is *abandoned* (killed, in the registry) and its trio task is
  left to end when it can.
- An ended task keeps text, not objects: its error and traceback are formatted
  (bounded, guarded) and the frames are cleared, so a failed job's memory is
  freed at once.

Job code only ever runs in the task's own trio task (and, while a file loads, in
the loader under the step guard); the control server only calls the backend
methods below; the registry (``cosched.registry``) holds the tasks, the step
guard (``cosched.guard``) times and interrupts their steps, and
``cosched.reports`` renders them. The operator's surface lives beside it:
``cosched.tasklog`` (per-task log buffers, the stdout proxy) and
``cosched.eventfeed`` (event history) serve ``logs`` and ``events``;
``cosched.restarts`` and ``cosched.reconfig`` restart tasks on request and
reload the config; ``cosched.hooks`` runs ``on_failure``; ``cosched.whereis``
and ``cosched.tasktree`` answer ``show`` and ``tree``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import structlog
import trio

from . import __version__, cancels, coro, hooks, reconfig, reports, restarts, tasklog, tasktree, whereis
from . import log as logsetup
from ._coro import last_transfer_to_main, release_chain, resume_call, switches_of
from .config import Config, ConfigError, JobPolicy
from .eventfeed import EventLog
from .events import Events
from .gcpacer import GcPacer
from .guard import StepGuard, StepTimeout, TaskInterrupted
from .loader import Job, JobLoadError, job_files, load_job, signature
from .looplag import LoopLag
from .metrics import CONTENT_TYPE, Collector, JobTotals, switch_path
from .protocol import (
    BUSY,
    CONFIG_ERROR,
    JOB_DISABLED,
    NO_SUCH_JOB,
    NO_SUCH_TASK,
    NOT_ALIVE,
    NOT_SUSPENDED,
    Chunked,
    ControlError,
)
from .registry import Registry, Task
from .saferepr import describe_exception, safe_repr
from .task import Shared, TaskContext
from .tasklog import TaskLogs

__all__ = ["Supervisor", "Task"]

log = structlog.get_logger("cosched.supervisor")

MAX_TRACEBACK = 64 * 1024   # characters of a failed task's traceback kept
MAX_BACKOFF_DOUBLINGS = 64  # restart_delay * 2**n is capped long before this
STATUS_CHUNK = 500          # task rows rendered per piece of a long status answer
NAMED = 20                  # abandoned tasks named in the log one by one at a stop
STOP_BURST = 1000           # tasks being killed at once while the daemon stops
KILL_BURST = 50             # ... and when a task that ends has more children than this: a
                            # kill and its task's last step take ~0.2 ms of the loop (at 100
                            # a burst held it 22 ms)


class Supervisor:
    """Owns jobs and tasks; implements the control backend (status, show, resume, ...)."""

    def __init__(self, config: Config, *, log_sink: Any = None,
                 on_stuck: Callable[[int], None] = os._exit) -> None:
        self.config = config
        self.job_table: dict[str, dict[str, Any]] = {}   # name -> {"path", "job", "error", "signature"}
        self.reg = Registry()
        self.tasks = self.reg.tasks
        self.started = time.monotonic()
        self.nursery: trio.Nursery | None = None
        self.guard = StepGuard(tasklog.CURRENT_TASK, step_warning=config.step_warning,
                               on_stuck=on_stuck)
        self.threads = trio.CapacityLimiter(config.worker_threads)
        self.log_sink = log_sink
        self.events = Events()
        self.gc = GcPacer(self.reg.count_alive)
        self.loop = LoopLag()   # the event loop's stalls, whatever causes them
        self._child_policies: dict[str, JobPolicy] = {}   # cleared when the config changes
        self._shared: Shared | None = None   # (see _shared_with)
        self.overrides: dict[str, Any] = {}  # the command line's config overrides; a reload keeps them
        self.task_logs = TaskLogs(config.task_lines, lambda tid: self.reg.tasks.get(tid))
        self.event_log = EventLog(self.events, config.events_kept)
        self._parked: dict[int, tuple[Any, bool]] = {}  # id -> (coroutine a resume continues,
        #                                                 transferred?), while suspended
        self._restarting: dict[int, Any] = {}  # id -> policy of the next life, once asked
        self._gave_up: set[str] = set()  # jobs whose last top-level task hit its start limit
        self._stopping = False   # stop() began: it kills every task in bursts itself
        self._task_ended: trio.Event | None = None   # set when a task ends, while tasks are
                                                     # killed in bursts (shared by all waiters)
        self.durable = None   # cosched.recorder.Recorder: task.state and history on disk
        self.timers = None    # cosched.timers.Timers: starts timed jobs at their times
        self.process = psutil.Process()
        self.process.cpu_percent()  # prime: the next call reports usage since now
        self.totals = JobTotals()   # counters of the tasks that ended for good, per job
        self.collector = Collector(self, config.metrics_max_task_series)

    # ---------------------------------------------------------------- lifecycle

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Load the jobs folder, start what autostarts, and supervise until cancelled."""
        trio.lowlevel.add_instrument(self.guard)
        trio.lowlevel.add_instrument(self.loop)
        self.guard.start()
        self.task_logs.start()
        logsetup.set_capture(self.task_logs.capture)
        restore_output = tasklog.install(self.task_logs)
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                self.rescan()
                self.gc.freeze()   # the modules and jobs just loaded live as long as we do
                task_status.started()
                await trio.sleep_forever()
        finally:
            restore_output()
            logsetup.set_capture(None)
            self.events.flush()   # (first starts held back: heard before the end)
            self.event_log.close()
            trio.lowlevel.remove_instrument(self.guard)
            trio.lowlevel.remove_instrument(self.loop)
            self.guard.close()
            self.gc.close()
            figures = self.gc.report()
            long_pause = max(figures["longest_pause"]) > 0.1
            (log.warning if long_pause else log.info)(
                "supervisor stopped" + ("; the collector paused the loop for long" if long_pause
                                        else ""), gc=figures)

    async def stop(self, timeout: float) -> list[Task]:
        """Kill every task (cleanup runs) and wait for them, at most ``timeout`` seconds.
        Returns the tasks whose cleanup was abandoned."""
        self._stopping = True
        self.events.job("stopping", "*")   # what is alive now is interrupted, not killed
        self.guard.stopping(timeout)
        self.gc.stop()
        alive = sorted(self.reg.alive(), key=lambda t: t.id, reverse=True)  # children first
        with trio.move_on_after(timeout):
            await self._kill_in_bursts(alive)
        for t in alive:
            if not t.done and not t.kill_requested:
                self._request_kill(t)   # its turn never came: its trio task ends when it can
        left = [t for t in alive if not t.done]
        for i, t in enumerate(left):
            self._abandon(t, timeout, quiet=i >= NAMED)
        if len(left) > NAMED:   # one line for the rest: a million tasks are a million lines
            log.error("tasks abandoned", more=len(left) - NAMED,
                      error=f"cleanup did not finish within {timeout:g} s")
        return left

    async def _kill_in_bursts(self, tasks: list[Task], burst: int | None = None) -> None:
        """Kill ``tasks``, at most ``burst`` (STOP_BURST) at a time, and wait until they
        have ended.

        trio keeps a pending cancellation (about 2.5 KB: the exception, its traceback,
        the outcome) for every cancelled task until it runs, and runs them all in one
        pass of the loop: a million at once were 2.5 GB more and seconds without a
        look at the sockets. Children come before their parents (ids descending), so
        no parent's end cancels its children all at once either.
        """
        burst = burst or STOP_BURST
        pending = iter(tasks)
        in_flight: set[Task] = set()
        while True:
            in_flight = {t for t in in_flight if not t.done}
            for t in pending:
                if not t.done:
                    self._request_kill(t)
                    in_flight.add(t)
                if len(in_flight) >= burst:
                    break
            if not in_flight:
                return
            if self._task_ended is None or self._task_ended.is_set():
                self._task_ended = trio.Event()
            await self._task_ended.wait()

    # ---------------------------------------------------------------- jobs

    def rescan(self, retry_refused: bool = True) -> dict:
        """Bring the job table in line with the folder: load new and changed files, drop
        removed ones, and (a reload) try refused files again."""
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
        for path in files.values():
            self.sync_file(path, report if retry_refused else None)
        return report

    def sync_file(self, path: Path, report: dict | None = None) -> None:
        """(Re)load one job file if it is new or changed since it was last seen."""
        name = path.stem
        try:
            sig = signature(path.stat())
        except OSError:
            if name in self.job_table:
                self._remove_job(name)
                if report is not None:
                    report["removed"].append(name)
            return
        entry = self.job_table.get(name)
        if entry is not None and entry["signature"] == sig and entry["path"] == path and (
                entry["job"] is not None or report is None):
            return   # unchanged; a refused file is tried again by every rescan (a reload):
                     # what refused it may lie outside the file (a folder above, the config)
        job, error = self._load(name, path)
        self.job_table[name] = {"path": path, "job": job, "error": error, "signature": sig}
        if job is None:
            log.error("job failed to load", job=name, path=str(path), reason=error)
            self.events.job("job-refused", name, path=str(path), error=error)
            if report is not None:
                report["errors"].append({"job": name, "path": str(path), "error": error})
            return
        log.info("job loaded", job=name, path=str(path), reloaded=entry is not None)
        self.events.job("job-loaded", name, path=str(path), reloaded=entry is not None)
        if report is not None:
            report["loaded"].append(name)
        old = self.reg.roots_of(name)
        for t in old:
            self._request_kill(t)   # the old code's tasks give way to the new version
        if self._starts_on_load(name):
            self.nursery.start_soon(self._start_after, name, old)

    def _starts_on_load(self, name: str) -> bool:
        """Loading starts a task: autostart (a timed job waits for its time instead), or
        the daemon's last stop interrupted the job's task."""
        policy = self.config.job_policy(name)
        if not policy.enabled:
            return False
        interrupted = self.durable is not None and self.durable.take_interrupted(name)
        return interrupted or (policy.autostart and not policy.timed)

    def _load(self, name: str, path: Path) -> tuple[Job | None, str | None]:
        """Run a job file's top level under the step guard; (job, None) or (None, reason)."""
        loading = _Loading(name, self.config.job_policy(name))
        try:
            with self.guard.step_of(loading):
                return load_job(path), None
        except JobLoadError as e:
            return None, str(e)
        except BaseException as e:  # noqa: BLE001 - a job's top level never ends the daemon
            return None, f"{describe_exception(e)} while loading"

    async def _start_after(self, name: str, old: list[Task]) -> None:
        for t in old:
            await t.wait_ended()
        entry = self.job_table.get(name)
        if entry is not None and entry["job"] is not None:
            self.start_task(entry["job"])

    def _remove_job(self, name: str) -> None:
        for t in self.reg.roots_of(name):
            self._request_kill(t)
        del self.job_table[name]
        log.info("job removed", job=name)
        self.events.job("job-removed", name)
        self.task_logs.job_removed(name)

    # ---------------------------------------------------------------- tasks

    def start_task(self, job: Job, fn=None, args: tuple = (), parent: Task | None = None,
                   name: str | None = None, *, state: dict | None = None,
                   trigger: dict | None = None) -> Task:
        """A new task of ``job`` (``state``: its task.state; ``trigger``: its task.trigger)."""
        if parent is None:
            policy = self.config.job_policy(job.name)   # its own copy of the config table
            config = policy.config
            self._gave_up.discard(job.name)
        else:   # children share their parent's config table and one policy per job
            policy, config = self._child_policy(job.name), parent.ctx.config
        tid = self.reg.new_id()
        implied = None if name or parent is None else f"{parent.name}.{tid}"
        if implied is None:
            durable = self.durable.context_args(job.name, parent, name) if self.durable else {}
            checkpointer = durable.pop("checkpointer", None)
            name = self.reg.free_name(name or job.name)
        else:   # a child spawned without a name keeps no state in the database
            durable = {}
            checkpointer = self.durable.checkpointer if self.durable else None
            name = self.reg.free_implied(implied)
        if state is not None:   # a restart hands the task its own state
            durable["state"] = state
        shared = self._shared_with(checkpointer)
        if name is implied:   # neither record keeps it: both derive it from the parent's
            t = Task(tid, None, job, policy, fn or job.main, args, parent)
            t.ctx = TaskContext(parent.ctx, tid, _job_logger, config, trigger=trigger,
                                shared=shared, **durable) if trigger or durable else \
                TaskContext.child_of(parent.ctx, tid, _job_logger, config, shared)
        else:
            t = Task(tid, name, job, policy, fn or job.main, args, parent)
            t.ctx = TaskContext(name, tid, _job_logger, config, trigger=trigger, shared=shared,
                                **durable)
        self.reg.add(t)
        self.gc.task_started()
        self.nursery.start_soon(self._supervise, t, name=job.name)   # (trio's, for its repr)
        return t

    def _shared_with(self, checkpointer) -> Shared:
        """What every task's TaskContext shares (one object while the checkpointer is)."""
        shared = self._shared
        if shared is None or shared.checkpointer is not checkpointer:
            shared = self._shared = Shared(self._spawn, self.threads, checkpointer)
        return shared

    def _child_policy(self, job: str) -> JobPolicy:
        policy = self._child_policies.get(job)
        if policy is None:
            policy = dataclasses.replace(self.config.job_policy(job), restart="no")
            self._child_policies[job] = policy
        return policy

    def _spawn(self, parent_ctx: TaskContext, fn, args: tuple, name: str | None) -> TaskContext:
        parent = self.tasks[parent_ctx.id]
        if not parent.alive or parent.kill_requested:
            raise RuntimeError(f"task {parent.name} is ending; it cannot spawn")
        return self.start_task(parent.job, fn, args, parent, name).ctx

    async def _supervise(self, t: Task) -> None:
        """Run t, restarting it as its policy says, until it ends for good.

        A task parked in its body holds one frame of ours, this one: each life's
        drive loop is inline and awaits the chain driver itself (a million parked
        tasks pay for every frame); what runs only while the task is not in its
        body (parking, a restart delay) has its own methods.
        """
        self._adopt(t)
        try:
            while True:
                try:
                    call = self._begin_life(t)
                    while call is not None:
                        try:
                            call = await call
                        except Exception:  # a transferred-into chain raised into main
                            call = (False, sys.exception())
                        call = await self._continuation(t, call)
                except BaseException:  # noqa: BLE001 - see "Design principles" above
                    if self._stopping_daemon(t, sys.exception()):
                        raise   # the nursery takes it
                self._leave_scope(t)
                if not await self._next_life(t):
                    break
        except Exception:  # noqa: BLE001 - a bug of ours ends this task, not the daemon
            log.exception("supervising the task failed", task=t.name, id=t.id)
            t.state = "killed" if t.kill_requested else "failed"
            t.error = t.error or "internal error in coschedd (see its log)"
            self._life_ended(t)
        finally:
            self._finished(t)

    def _adopt(self, t: Task) -> None:
        """The first step of t's trio task: the daemon learns which trio task runs t."""
        t.trio_task = trio.lowlevel.current_task()
        self.guard.enter(t)  # this first step began before the guard knew the task
        tasklog.enter(t)     # what this trio task (and those it starts) prints is t's, and
                             # the guard finds t there

    def _begin_life(self, t: Task):
        """A life of t begins: the call that runs its body to its first suspension."""
        if t.policy.restart != "no":
            if t.starts is None:
                t.starts = deque()
            t.starts.append(time.monotonic())
        t.root = coro.create(t.fn)
        rare = t._rare is not None   # (a first life has none of its fields set: each read
        if rare:                     # of one is a property call, at every start)
            t.error = t.traceback = t.result = t.scope = None
        t.state = "running"
        if rare:
            self.events.task("started", t, restarts=t.restarts)
        else:   # (heard in a batch: see cosched.events)
            self.events.started(t)
        # A life runs inside a scope of its own only where trio cannot have one spliced
        # in when a kill comes (see cosched.cancels): a million parked tasks pay for it.
        # (Entered and left by hand: a `with` in _supervise would hold its __exit__.)
        if not cancels.SPLICE:
            t.scope = trio.CancelScope()
            t.scope.__enter__()
        if rare and t.kill_requested:   # killed before its first step
            self._cancel(t)
        return resume_call(t.root, (t.ctx, *t.args))

    def _stopping_daemon(self, t: Task, exc: BaseException) -> bool:
        """A life of t ended by exc: True if that is the daemon stopping (exc goes on to
        the nursery), else t's own end, taken care of here."""
        if _only_cancelled(exc) and trio.current_effective_deadline() == -math.inf:
            _clear_frames(exc)   # its traceback's cycles would outlive the task
            return not self._kill_caught(t, exc)
        self._contain(t, exc)
        return False

    async def _next_life(self, t: Task) -> bool:
        """A life of t is over: True if another follows (after its restart delay)."""
        if self._restart_now(t):
            return True
        delay = self._restart_delay(t)
        if t.abandoned:
            return False
        self._life_ended(t)
        if delay is None:
            return False
        t.state = "restarting"
        log.info("restarting task", task=t.name, id=t.id, delay=delay, after=t.error)
        self.events.task("restarting", t, delay=delay)
        with trio.CancelScope() as t.scope:
            await trio.sleep(delay)
        if self._restart_now(t):
            return True
        if t.kill_requested or t.scope.cancelled_caught:
            t.state = "killed"
            self._life_ended(t)
            return False
        t.restarts += 1
        return True

    def _restart_now(self, t: Task) -> bool:
        """A restart was asked for (``restart``, or a reload that changed its job's
        config): this life is over, its children go with it, the next begins at once."""
        if t.id not in self._restarting or t.abandoned:
            return False
        policy = self._restarting.pop(t.id)
        if t.state != "restarting":  # in its restart delay, its last life was announced
            self._life_ended(t)
        self._end_children(t)
        t.kill_requested = False
        t.restarts += 1
        if policy is not None:
            t.policy, t.ctx.config = policy, policy.config
        log.info("restarting task on request", task=t.name, id=t.id)
        self.events.task("restarting", t, delay=0, requested=True)
        return True

    def _finished(self, t: Task) -> None:
        # This last step ends after the task is unregistered: account for it here.
        t.busy += time.perf_counter() - self.guard.began
        t.steps += 1
        t.switches = switches_of(t.trio_task)
        release_chain()
        t.trio_task = t.root = None
        if t.abandoned:
            log.info("abandoned task has ended at last", task=t.name, id=t.id)
            return
        self._retire(t)

    def _life_ended(self, t: Task) -> None:
        if t.state == "finished":
            self.events.task("finished", t, result=t.result)
        else:
            self.events.task(t.state, t, error=t.error, traceback=t.traceback)

    def _retire(self, t: Task) -> None:
        """t has ended for good: wake whoever waits for it, forget old tasks, end its children."""
        t.yielded = None
        t.ctx._finish(t.state, t.result if t.state == "finished" else t.error)
        t.mark_done()
        if self._task_ended is not None:
            self._task_ended.set()
        self.totals.add(t)
        self.reg.retire(t)
        self.gc.task_ended()
        self._restarting.pop(t.id, None)
        self._end_children(t)
        self.task_logs.ended(t)
        hooks.on_failure(self, t)

    def _end_children(self, t: Task) -> None:
        """t has ended (or a life of it, restarted): so do its children; many of them in
        bursts, newest first, by a helper (100,000 kills at once held the loop for 8 s,
        and their last steps for 11 s more)."""
        children = list(t.children.values())
        if len(children) <= KILL_BURST or self._stopping:   # (a stop kills in bursts itself)
            for child in children:
                self._request_kill(child)
        else:
            children.reverse()
            self.nursery.start_soon(self._kill_in_bursts, children, KILL_BURST)

    def _abandon(self, t: Task, timeout: float, quiet: bool = False) -> None:
        """Cleanup overran: t ends in the registry now; its trio task ends when it can."""
        t.abandoned = True
        t.state = "killed"
        t.error = f"cleanup did not finish within {timeout:g} s"
        if not quiet:
            log.error("task abandoned", task=t.name, id=t.id, error=t.error)
        self._life_ended(t)
        self._retire(t)

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
            if t.parent is None:
                self._gave_up.add(t.job.name)
            return None
        doublings = min(t.restarts, MAX_BACKOFF_DOUBLINGS)  # 2 ** 1024 overflows a float
        return min(p.restart_delay * 2.0 ** doublings, p.restart_delay_max)

    async def _continuation(self, t: Task, got: tuple):
        """The root gave control back with ``got``: what to await to continue t, or None
        once this life is over. A yield (or a transfer to main) parks t at the daemon
        until it is resumed (then it continues) or killed (then its cleanup runs)."""
        if coro.status(t.root) == "dead" or not got[0]:
            self._ended(t, got)
            return None
        transfer = coro.status(t.root) != "suspended"
        target = last_transfer_to_main() if transfer else t.root
        if target is None:
            self._ended(t, (False, coro.CoroutineError("no suspended coroutine to continue")))
            return None
        self._parked[t.id] = (target, transfer)
        try:
            values = await self._park(t, got[1:])
        finally:
            del self._parked[t.id]
        if values is None:  # killed while suspended: run its cleanup
            await self._close(t, target)
            return None
        t.state = "running"
        if transfer:
            return _transfer_to(target, values)
        return resume_call(target, values) or coro.resume(target, *values)

    def _contain(self, t: Task, exc: BaseException) -> None:
        """A BaseException escaped the job: the task failed (or, if it was being killed,
        is killed with its cleanup's error)."""
        if isinstance(exc, trio.Cancelled) and not t.kill_requested:
            exc = _OwnCancelled(f"the job raised trio.Cancelled outside a cancelled scope: "
                                f"{describe_exception(exc)}").with_traceback(exc.__traceback__)
        self._ended(t, (False, exc))

    async def _park(self, t: Task, values: tuple) -> tuple | None:
        """Suspended at the daemon until resumed (returns the values) or killed (None)."""
        t.yielded = values
        t.state = "suspended"
        t.wake = trio.Event()
        t.signal_stop()
        log.info("task suspended", task=t.name, id=t.id, values=_short(values))
        self.events.task("suspended", t, values=list(values))
        with trio.CancelScope(shield=True):   # a kill arrives through `wake`, so cleanup can run
            await t.wake.wait()
        t.wake = None
        t.yielded = None
        if t.kill_requested:
            return None
        values, t.inbox = t.inbox, None
        return values

    async def _close(self, t: Task, target) -> None:
        co = target if coro.status(target) == "suspended" else t.root
        try:
            ok, *err = await coro.close(co) if coro.status(co) == "suspended" else (True,)
        except BaseException as exc:  # noqa: BLE001 - cleanup raising SystemExit & co.
            if isinstance(exc, trio.Cancelled):
                raise
            ok, err = False, [exc]
        t.state = "killed"
        if not ok:
            t.error = f"cleanup failed: {describe_exception(err[0])}"
            t.traceback = _format_traceback(err[0])
        log.info("task killed", task=t.name, id=t.id, cleanup="ok" if ok else t.error)

    def _ended(self, t: Task, got: tuple) -> None:
        if got[0]:
            t.state = "finished"
            t.result = reports.pack(got[1:])
            log.info("task finished", task=t.name, id=t.id, result=_short(got[1:]))
            return
        exc = got[1]
        if t.kill_requested or isinstance(exc, TaskInterrupted):
            # its cleanup raised: killed all the same, and not restarted
            t.state = "killed"
            t.error = (str(exc) if isinstance(exc, TaskInterrupted)
                       else f"cleanup raised {describe_exception(exc)}")
            t.traceback = _format_traceback(exc)
            log.info("task killed", task=t.name, id=t.id, error=t.error)
            return
        t.state = "failed"
        t.error = describe_exception(exc)
        t.traceback = _format_traceback(exc)
        level = log.error if not isinstance(exc, StepTimeout) else log.warning
        level("task failed", task=t.name, id=t.id, error=t.error)

    def _request_kill(self, t: Task) -> None:
        t.kill_requested = True
        if t.state == "suspended" and t.wake is not None:
            t.wake.set()
        else:
            self._cancel(t)

    def _cancel(self, t: Task) -> None:
        if t.scope is not None:   # its own scope, or one spliced in by an earlier kill
            t.scope.cancel()
        elif cancels.SPLICE and t.trio_task is not None:   # (not adopted: it begins killed)
            t.scope = cancels.cancel_task(t.trio_task)

    def _kill_caught(self, t: Task, exc: BaseException) -> bool:
        """A Cancelled reached t's root: True if it is t's kill or comes from a scope
        the job left open (t leaves them, and they take it), False if the daemon is
        stopping (it goes on to the nursery)."""
        scope, t.scope = t.scope, None
        if cancels.SPLICE:
            leaked = cancels.go_home(t.trio_task, scope)
            if trio.current_effective_deadline() == -math.inf:
                return False
            if leaked:
                self._left_open(t)
        elif scope is None or not scope.__exit__(type(exc), exc, exc.__traceback__):
            return False
        if t.state not in ("failed", "killed"):
            t.state = "killed"
            log.info("task killed", task=t.name, id=t.id)
        return True

    def _leave_scope(self, t: Task) -> None:
        """The life is over without a kill reaching its root: t leaves its scope (its
        own, or one a kill spliced in and the job swallowed), and any the job left open."""
        scope, t.scope = t.scope, None
        if cancels.SPLICE:
            if cancels.go_home(t.trio_task, scope):
                self._left_open(t)
        elif scope is not None:
            scope.__exit__(None, None, None)

    def _left_open(self, t: Task) -> None:
        """The job entered a cancel scope or nursery by hand and never left it (it is
        closed now): the life failed, whatever it returned."""
        t.state = "killed" if t.kill_requested else "failed"
        t.result = None
        t.error = ("the job left a trio cancel scope or nursery open (entered by hand, "
                   "never exited)")
        log.error("task left a cancel scope open", task=t.name, id=t.id)

    # ---------------------------------------------------------------- control backend

    def find(self, ref: str | int) -> Task:
        return self.reg.find(ref)

    def status(self, task: str | int | None = None, job: str | None = None,
               state: str | None = None, columns: list[str] | None = None,
               pages: bool = False, limit: int | None = None) -> dict | Chunked:
        """The daemon and its tasks (a job's, those in a state, or one; with ``columns``
        each an array of those fields; with ``limit`` the first that many, and how many
        matched in ``num_matching``); long lists are sent in chunks, or with ``pages``
        as a stream of pages (see protocol.Chunked)."""
        if job is not None and job not in self.job_table and not self.reg.count_listed_of(job):
            raise ControlError(NO_SUCH_JOB, f"no job {job!r} in {self.config.jobs_dir}")
        if task is not None:
            t = self.find(task)
            tasks: Iterator[Task | None] = iter([t] if (job is None or t.job.name == job) and (
                state is None or t.shown_state() == state) else [])
        else:
            tasks = self.reg.scan(job, state)   # (None: looked at, not taken)
        tail = {"job_errors": self._job_errors()}
        if limit is not None:
            tasks = _at_most(tasks, limit, tail)
        first = list(itertools.islice(tasks, STATUS_CHUNK + 1))
        head = {"daemon": self._daemon_info()}
        if len(first) <= STATUS_CHUNK:   # all looked at already
            return {**head, "tasks": reports.rows([t for t in first if t is not None], columns),
                    **tail}
        return Chunked(head, "tasks", itertools.chain(first, tasks),
                       lambda chunk: self._rows(chunk, columns), tail, STATUS_CHUNK, pages)

    def _rows(self, tasks: list[Task], columns: list[str] | None) -> list:
        """A chunk of a long status. Its first rendering leaves objects behind in each
        task (where it waits, a frame object): the collector pacer hears of them."""
        self.gc.rendering(len(tasks))
        return reports.rows(tasks, columns)

    async def show(self, task: str | int) -> dict:
        try:
            t = self.find(task)
        except ControlError as e:   # forgotten here; it may have ended before a restart
            if e.code != NO_SUCH_TASK or self.durable is None:
                raise
            recorded = await self.durable.task_record(task)
            if recorded is None:
                raise
            return recorded
        out = reports.show(t)
        parked, transferred = self._parked.get(t.id, (None, False))
        out.update(whereis.locate(t, parked, transferred) or {})
        out["trigger"] = t.ctx.trigger if t.ctx is not None else None
        return out

    async def history(self, target: str | int | None = None, since: float | None = None,
                      limit: int = 50) -> dict | Chunked:
        if self.durable is None:
            return {"events": [], "more": False, "recording": False}
        return await self.durable.history(target, since, limit)

    async def resume(self, task: str | int, values: list, timeout: float) -> dict:
        t = self.find(task)
        if t.state != "suspended" or t.kill_requested:
            state = "being killed" if t.kill_requested and t.alive else t.shown_state()
            raise ControlError(NOT_SUSPENDED, f"task {t.name} (#{t.id}) is {state}, not suspended")
        stopped = t.stop_event()
        t.inbox = tuple(values)
        t.state = "running"
        self.events.task("resumed", t, values=values)
        t.wake.set()
        with trio.move_on_after(timeout):
            await stopped.wait()
        return reports.outcome(t)

    async def kill(self, task: str | int) -> dict:
        t = self.find(task)
        if t.state == "killed" and t.kill_requested:  # killed already (also: by the stall desk)
            return {"task": reports.info(t), "already": True}
        if not t.alive:
            raise ControlError(NOT_ALIVE, f"task {t.name} (#{t.id}) has already ended: it "
                                          f"{_ended_how(t)}")
        self._request_kill(t)
        with trio.move_on_after(self.config.stop_timeout):
            await t.wait_ended()
        if not t.done:
            self._abandon(t, self.config.stop_timeout)
        return {"task": reports.info(t)}

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
        await _first_step_done()
        return {"task": reports.info(t)}

    async def reload(self) -> dict:
        """Re-read the config file (see cosched.reconfig) and rescan the jobs folder."""
        self._require_running()
        try:
            return await self.reload_all()
        except ConfigError as e:
            raise ControlError(CONFIG_ERROR, f"{e}; the configuration in force is unchanged") \
                from None

    def jobs(self) -> dict:
        rows = [reports.job_row(name, e, self.config.job_policy(name),
                                [t.id for t in self.reg.roots_of(name)],
                                self.reg.count_alive_of(name))
                for name, e in sorted(self.job_table.items())]
        for row in rows:
            if row["name"] in self._gave_up and row["state"] != "error":
                row["state"] = "failed (start limit)"
            if self.timers is not None:
                row.update(self.timers.describe(row["name"]))
        return {"jobs": rows}

    # ---------------------------------------------------------------- operator's surface
    # logs, events, tree, restart and the config reload; the work is done in
    # cosched.tasklog, eventfeed, whereis, reconfig and hooks.

    def _job_or_task(self, ref: str | int) -> tuple[str | None, Task | None]:
        """A job's name wins over a task's name (a job's first task has its name);
        a task is an id, or a name that is no job's."""
        if isinstance(ref, str) and ref in self.job_table:
            return ref, None
        return None, self.find(ref)

    def logs(self, task: str | int, lines: int = 10, follow: bool = False) -> Any:
        job, t = self._job_or_task(task)
        if job is not None and not follow:
            return self.task_logs.job_answer(job, lines)
        backlog = self.task_logs.job_records(job, lines) if job is not None else \
            self.task_logs.records([t.id], lines)
        if not follow:
            return {"records": backlog}
        stream = self.task_logs.follow(tid=None if t is None else t.id, job=job,
                                       backlog=backlog, queue=self.config.follow_queue)
        if t is not None and not t.alive:  # nothing more will come
            stream.feed.close({"ended": t.state, "error": t.error})
        return stream

    def event_history(self, lines: int = 10, follow: bool = False,
                      job: str | None = None) -> Any:
        if not follow:
            return self.event_log.answer(lines, job)
        return self.event_log.follow(lines, job, self.config.follow_queue)

    def tree(self, task: str | int | None = None, job: str | None = None) -> dict | Chunked:
        """Which task spawned which (see cosched.tasktree); a long answer in chunks."""
        if job is not None and job not in self.job_table:
            raise ControlError(NO_SUCH_JOB, f"no job {job!r} in {self.config.jobs_dir}")
        top = self.find(task) if task is not None else None
        children = tasktree.children_in(self.reg.ended_listed())
        rows = tasktree.walk(self.tasks, self.reg.scan(), children, top, job)
        first = list(itertools.islice(rows, STATUS_CHUNK + 1))
        if len(first) <= STATUS_CHUNK:   # all looked at already
            return {"tasks": [row for row in first if row is not None]}
        return Chunked({}, "tasks", itertools.chain(first, rows), lambda chunk: chunk, {},
                       STATUS_CHUNK)

    async def restart(self, task: str | int) -> dict:
        self._require_running()
        return await restarts.restart(self, *self._job_or_task(task))

    async def reload_all(self) -> dict:
        """Re-read the config file, put it in force, rescan the jobs folder; the report.
        Raises ConfigError (nothing changes) when the file is bad. Also SIGHUP's."""
        return await reconfig.reload(self)

    async def metrics(self) -> dict:
        """The Prometheus text exposition (cosched.metrics), rendered in chunks."""
        return {"text": await self.collector.render(trio.lowlevel.checkpoint),
                "content_type": CONTENT_TYPE}

    # ---------------------------------------------------------------- reports

    def _daemon_info(self) -> dict:
        p = self.process
        with p.oneshot():
            mem = p.memory_info().rss
            cpu = p.cpu_times()
            pct = p.cpu_percent()
        return {"pid": os.getpid(), "uptime": round(time.monotonic() - self.started, 3),
                "rss": mem, "cpu_time": round(cpu.user + cpu.system, 3), "cpu_percent": pct,
                "num_tasks": self.reg.count_alive(), "version": __version__,
                "jobs_dir": str(self.config.jobs_dir), "socket": str(self.config.socket),
                "dropped_log_lines": self.log_sink.dropped if self.log_sink is not None else 0,
                "gc": self.gc.report(), "loop": self.loop.report(), "switch_path": switch_path(),
                **({"state_db": self.durable.store.stats()} if self.durable else {})}

    def _job_errors(self) -> list[dict]:
        return [{"job": n, "path": str(e["path"]), "error": e["error"]}
                for n, e in sorted(self.job_table.items()) if e["error"]]


def _job_logger(name: str, tid: int) -> Any:
    """The structlog logger of a task, bound on first use (see TaskContext.log)."""
    return structlog.get_logger("cosched.job").bind(task=name, id=tid)
async def _first_step_done() -> None:
    """Return once a task started just before has taken its first step: it runs in
    the scheduler's next batch, and so does our first checkpoint, in either order;
    our second checkpoint comes in the batch after."""
    await trio.lowlevel.checkpoint()
    await trio.lowlevel.checkpoint()


class _OwnCancelled(Exception):
    """Stands for a trio.Cancelled that a job raised itself (not a kill)."""


@dataclasses.dataclass
class _Loading:
    """What the step guard times while a job file's top level runs."""

    name: str
    policy: Any
    id: None = None


async def _transfer_to(target, values: tuple) -> tuple:
    """Continue a coroutine that transferred to main; its answer as resume would give it."""
    return (True, *reports.unpack(await coro.transfer(target, *values)))


def _only_cancelled(exc: BaseException) -> bool:
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_cancelled(e) for e in exc.exceptions)
    return False


def _clear_frames(exc: BaseException) -> None:
    if exc.__traceback__ is not None:
        traceback.clear_frames(exc.__traceback__)
    if isinstance(exc, BaseExceptionGroup):
        for e in exc.exceptions:
            _clear_frames(e)


def _format_traceback(exc: BaseException) -> str:
    """The traceback as text, bounded; the frames are cleared so their locals are freed."""
    try:
        text = "".join(traceback.format_exception(exc))
    except BaseException:  # noqa: BLE001 - a hostile exception object
        text = f"{describe_exception(exc)}\n(traceback unavailable)\n"
    _clear_frames(exc)
    if len(text) > MAX_TRACEBACK:
        text = text[: MAX_TRACEBACK // 2] + "\n[... traceback shortened ...]\n" + text[-MAX_TRACEBACK // 2:]
    return text


def _ended_how(t: Task) -> str:
    return {"finished": "finished", "failed": "failed", "killed": "was killed"}.get(t.state, t.state)


def _short(values: tuple) -> str:
    return safe_repr(values[0] if len(values) == 1 else values, 200)


def _at_most(tasks: Iterator[Task | None], limit: int,
             tail: dict) -> Iterator[Task | None]:
    """``tasks`` with those past the first ``limit`` taken ones turned into None (looked
    at, not taken: counted, never rendered); when all are looked at, ``num_matching``
    in ``tail`` says how many there were. A status limited to 20 of a million tasks
    renders 20 rows and counts the rest a chunk at a time."""
    taken = 0
    for t in tasks:
        if t is not None:
            taken += 1
            if taken > limit:
                t = None
        yield t
    tail["num_matching"] = taken
