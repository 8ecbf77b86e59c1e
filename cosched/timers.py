"""Timed jobs: start a task of a job at each time of its ``schedule`` or ``every``.

One trio task per timed job waits for the job's next due time with
``trio.sleep_until`` (a deadline in trio's timer heap: the event loop sleeps in
epoll until then, nothing polls) and starts a task of the job, as
``coschedctl start`` would. Due times are wall-clock times (``cosched.schedules``);
the deadline is the monotonic time that corresponds to one, and the wall clock
is read again on waking, so a clock that was set back makes the loop sleep on
rather than run early.

When a time comes while an earlier run of the job is still alive, ``overlap``
decides: ``skip`` this time, ``queue`` one run that starts when the alive ones
have ended (further times meanwhile join it), or ``allow`` a run alongside.

The last due time handled, the last run and its task are kept per job in the
state database. At start (and when a job file that was missing or refused is
loaded again), a due time that passed meanwhile is *missed*: with ``catch_up``
it runs once at once, otherwise it is only logged. A job seen for the first
time has missed nothing. The wall clock is injectable (``wall``) so that tests
can drive schedules on trio's MockClock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog
import trio

from .schedules import Schedule, schedule_of

__all__ = ["Timers"]

log = structlog.get_logger("cosched.timers")

EARLY = 0.001   # seconds: waking this close to a due time counts as on time


class Timers:
    """The timed jobs of a Supervisor; ``run`` them in a nursery."""

    def __init__(self, sup: Any, *, recorder: Any = None,
                 wall: Callable[[], float] = time.time) -> None:
        self.sup, self.recorder, self.wall = sup, recorder, wall
        # job -> [last due time handled, last run's start, its task id]; from the database
        self.last: dict[str, list] = {job: list(v) for job, v in
                                      (recorder.timers if recorder is not None else {}).items()}
        self.next: dict[str, float] = {}           # job -> its next due time
        self._scopes: dict[str, trio.CancelScope] = {}
        self._queued: set[str] = set()             # jobs with a run waiting (overlap = queue)
        self._nursery: trio.Nursery | None = None
        sup.timers = self

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Arm the loaded timed jobs, follow loads and removals, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            unsubscribe = self.sup.events.subscribe(self._on_event, tasks=False)
            try:
                for name in list(self.sup.job_table):
                    self._arm(name)
                task_status.started()
                await trio.sleep_forever()
            finally:
                unsubscribe()

    def describe(self, name: str) -> dict:
        """For ``coschedctl jobs``: the schedule, next and last run of a timed job."""
        schedule = schedule_of(self.sup.config.job_policy(name))
        if schedule is None:
            return {}
        last = self.last.get(name, [None, None, None])
        return {"schedule": schedule.describe(), "next_run": self.next.get(name),
                "last_run": last[1], "last_task": last[2]}

    # ------------------------------------------------------------ arming

    def _on_event(self, e: dict) -> None:
        try:
            if e["event"] == "job-loaded":
                self._arm(e["job"])
            elif e["event"] in ("job-removed", "job-refused"):
                self._disarm(e["job"])
        except Exception:  # noqa: BLE001 - raising would unsubscribe us: log, carry on
            log.exception("arming the timer of a job failed", job=e.get("job"))

    def _arm(self, name: str) -> None:
        self._disarm(name)
        entry = self.sup.job_table.get(name)
        policy = self.sup.config.job_policy(name)
        schedule = schedule_of(policy)
        if entry is None or entry["job"] is None or schedule is None or not policy.enabled:
            return
        scope = self._scopes[name] = trio.CancelScope()
        self._nursery.start_soon(self._loop, name, schedule, policy, scope,
                                 name=f"cosched timer {name}")

    def _disarm(self, name: str) -> None:
        scope = self._scopes.pop(name, None)
        if scope is not None:
            scope.cancel()
        self.next.pop(name, None)

    # ------------------------------------------------------------ the wait

    async def _loop(self, name: str, schedule: Schedule, policy: Any,
                    scope: trio.CancelScope) -> None:
        with scope:
            async with trio.open_nursery() as runs:   # queued runs end with the job's timer
                due = self._first_due(name, schedule, policy, runs)
                while True:
                    self.next[name] = due
                    await self._sleep_until(due)
                    self._fire(name, policy, due, runs)
                    due = schedule.next_after(due)
                    now = self.wall()
                    if due <= now:   # the loop fell behind (a long stall): skip to the future
                        due = schedule.next_after(now)

    def _first_due(self, name: str, schedule: Schedule, policy: Any,
                   runs: trio.Nursery) -> float:
        now = self.wall()
        last_due = self.last.get(name, [None])[0]
        if last_due is None:   # never seen: nothing was missed; remember from when
            self._record(name, due=now)
            return schedule.next_after(now)
        missed = schedule.missed(last_due, now)
        if missed is None:
            return schedule.next_after(last_due)
        if policy.catch_up:
            log.info("catching up a run missed while the job could not run", job=name,
                     due=_iso(missed))
            self._fire(name, policy, missed, runs, caught_up=True)
        else:
            log.info("runs were missed while the job could not run; catch_up is off",
                     job=name, since=_iso(last_due))
            self._record(name, due=now)
        return schedule.next_after(now)

    async def _sleep_until(self, due: float) -> None:
        while (delay := due - self.wall()) > EARLY:
            await trio.sleep_until(trio.current_time() + delay)

    # ------------------------------------------------------------ a due time

    def _fire(self, name: str, policy: Any, due: float, runs: trio.Nursery,
              caught_up: bool = False) -> None:
        self._record(name, due=due)
        entry = self.sup.job_table.get(name)
        if entry is None or entry["job"] is None:
            return
        alive = self.sup.reg.roots_of(name)
        if alive and policy.overlap == "skip":
            ids = [t.id for t in alive]
            log.info("timed run skipped: the previous run is still alive", job=name, tasks=ids)
            self._note(name, "run-skipped", due=due, alive=ids)
            return
        if alive and policy.overlap == "queue":
            if name not in self._queued:
                self._queued.add(name)
                runs.start_soon(self._start_when_done, name)
                self._note(name, "run-queued", due=due, alive=[t.id for t in alive])
            return
        self._start(name, caught_up=caught_up, due=due)

    async def _start_when_done(self, name: str) -> None:
        try:
            while alive := self.sup.reg.roots_of(name):
                await alive[0].wait_ended()
        finally:
            self._queued.discard(name)
        self._start(name)

    def _start(self, name: str, *, caught_up: bool = False, due: float | None = None) -> None:
        entry = self.sup.job_table.get(name)
        if entry is None or entry["job"] is None:
            return
        t = self.sup.start_task(entry["job"])
        log.info("timed run started", job=name, task=t.name, id=t.id, caught_up=caught_up)
        if caught_up:
            self._note(name, "run-caught-up", due=due, run=t.id)
        self._record(name, run=self.wall(), task=t.id)

    def _record(self, name: str, *, due: float | None = None, run: float | None = None,
                task: int | None = None) -> None:
        last = self.last.setdefault(name, [None, None, None])
        if due is not None:
            last[0] = due
        if run is not None:
            last[1], last[2] = run, task
        if self.recorder is not None:
            self.recorder.store.timer(name, *last)

    def _note(self, name: str, kind: str, **fields: Any) -> None:
        if self.recorder is not None:
            self.recorder.timer_event(name, kind, **fields)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))
