"""The step guard: per-task step accounting, and interruption of steps that run away.

Design principles
-----------------
- A *step* is one run of a task's trio task between two yields to the event
  loop. trio's Instrument hooks (``before_task_step``/``after_task_step``) time
  it without touching job code: busy time, step count, longest step.
- Cooperative code cannot be trusted to yield. A step that runs longer than its
  job's ``step_limit`` (a pure-Python loop, ``time.sleep``, a blocking
  ``recv``) is interrupted *in place*: a watchdog thread sends a signal to the
  main thread, whose handler raises ``StepTimeout`` inside the step. Blocking
  system calls return EINTR and the handler's exception propagates (PEP 475).
  The same path delivers a kill of a running-away task and the daemon's own
  SIGTERM/SIGINT/SIGHUP, which would otherwise wait for the step to end.
- The handler raises only where raising is safe: in job code, or in the
  standard library called from it, never inside trio or cosched themselves
  (their invariants would break). Elsewhere it declines and the watchdog
  retries a moment later, by when the step has usually reached job code again.
- Nothing runs while the daemon is idle. The watchdog thread parks in an
  untimed wait whenever the event loop sits in its I/O wait with no step
  running; ``after_io_wait`` wakes it. An idle daemon makes no system calls.
- What cannot be interrupted (a C call that never returns to Python) is
  detected: once a step exceeds ``step_limit`` plus ``STUCK_GRACE`` the
  watchdog logs the task and ends the process with ``EXIT_STUCK``, so the
  service manager restarts it (the event loop has stopped pinging the systemd
  watchdog long before). A stop whose event loop is stuck past its timeout
  ends the same way.
"""

from __future__ import annotations

import os
import signal
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import FrameType
from typing import Any

import structlog
import trio

__all__ = ["StepGuard", "StepTimeout", "TaskInterrupted", "EXIT_STUCK", "job_line"]

log = structlog.get_logger("cosched.guard")

EXIT_STUCK = 4       # the event loop is stuck in a step; the process ended itself
STUCK_GRACE = 5.0    # seconds past step_limit before a step is declared uninterruptible
RETRY = 0.05         # seconds before a declined interruption is tried again
PERIOD = 0.5         # seconds between the watchdog's looks while steps run
INTERRUPT_SIGNAL = signal.SIGRTMIN + 3 if hasattr(signal, "SIGRTMIN") else signal.SIGALRM

_INFRA = tuple(os.path.dirname(m.__file__) + os.sep for m in (trio,)) + (
    os.path.dirname(os.path.abspath(__file__)) + os.sep,)
_SITE = tuple({p for k in ("purelib", "platlib") if (p := sysconfig.get_paths().get(k))})
_STDLIB = tuple({p for k in ("stdlib", "platstdlib") if (p := sysconfig.get_paths().get(k))}) + (
    "<frozen",)


class StepTimeout(BaseException):
    """Raised inside a step that ran longer than its job's step_limit.

    A BaseException, like KeyboardInterrupt: it interrupts, and an
    ``except Exception`` in the job does not swallow it by accident.
    """


class TaskInterrupted(BaseException):
    """Raised inside a running step because its task is killed or the daemon stops."""


def _is_infra(filename: str) -> bool:
    return filename.startswith(_INFRA)


def _is_stdlib(filename: str) -> bool:
    """Library code that job code may call and that may be unwound: the standard library,
    and generated code ("<string>", "<attrs generated ...>"), which is judged by its caller."""
    if filename.startswith("<"):
        return True
    return filename.startswith(_STDLIB) and not filename.startswith(_SITE)


def _user_frame(frame: FrameType | None) -> FrameType | None:
    """The innermost frame of job code (or of a library it called) if it is reached
    before any frame of trio or cosched, walking outward from ``frame``; else None."""
    while frame is not None:
        name = frame.f_code.co_filename
        if _is_infra(name):
            return None
        if not _is_stdlib(name):
            return frame
        frame = frame.f_back
    return None


def job_line(frame: FrameType | None) -> str:
    """'ticker.py:12 in main' for a frame, '?' without one."""
    if frame is None:
        return "?"
    return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno} in {frame.f_code.co_name}"


class _Interrupt:
    """An interruption waiting to be raised in one particular step."""

    __slots__ = ("serial", "kind", "reason")

    def __init__(self, serial: int, kind: type[BaseException], reason: str) -> None:
        self.serial, self.kind, self.reason = serial, kind, reason


class StepGuard(trio.abc.Instrument):
    """Times every step of the daemon's tasks and interrupts those that run away.

    ``owner`` is the context variable that holds, in a daemon task's trio task, its
    Task object (which carries ``trio_task``, ``busy``, ``steps``, ``longest_step``
    and ``policy.step_limit``): the Task is found in the trio task's own context, with
    no table beside it (a million parked tasks pay for every entry); trio tasks a job
    starts itself share the variable but are not the Task's ``trio_task``, and are not
    timed. The step running began at ``began``.
    """

    def __init__(self, owner: ContextVar, *, step_warning: float,
                 on_stuck: Callable[[int], None] = os._exit) -> None:
        self._owner = owner
        self.step_warning = step_warning
        self.stall = step_warning or 0.5   # a step this long stalls the loop: signals interrupt it
        self._on_stuck = on_stuck
        # The step now running, and a counter that tells its steps apart. Written only
        # by the event loop's thread; read by the watchdog and the signal handlers.
        self.current: Any = None
        self.serial = 0
        self.began = 0.0
        self._interrupt: _Interrupt | None = None   # what the next handler call should raise
        self._kill: Any = None                      # a Task whose running step must end
        self._stop_reason: str | None = None        # SIGTERM/SIGINT seen while a step stalled
        self._stop_deadline: float | None = None    # past it, a stop that hangs ends the process
        self._hup = False                           # SIGHUP seen while a step ran
        # Watchdog state, under _cond. `waiting`: the loop is in its I/O wait.
        self._cond = threading.Condition(threading.RLock())  # RLock: handlers may notify
        self.waiting = False
        self._parked = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self._main_ident = threading.main_thread().ident
        self._old_handlers: dict[int, Any] = {}
        self.desk: Any = None   # a cosched.stalldesk.StallDesk, once the control socket is up
        self.forked_child = False   # set in a process a job forked (cosched.forks): never
                                    # let it return to the copy of the daemon's loop

    # ---------------------------------------------------------------- set-up

    def start(self) -> None:
        """Install the signal handlers and start the watchdog (inside trio). Signals reach
        only the main thread: run elsewhere (an embedding, a test), steps are timed but
        never interrupted."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._old_handlers[INTERRUPT_SIGNAL] = signal.signal(INTERRUPT_SIGNAL, self._on_interrupt)
        self._thread = threading.Thread(target=self._watch, name="cosched step guard",
                                        daemon=True)
        self._thread.start()

    def wrap_daemon_signals(self, signums: tuple[int, ...]) -> None:
        """Chain our handler before trio's for the daemon's own signals (call inside
        trio.open_signal_receiver): they must reach a step that never yields."""
        for signum in signums:
            trio_handler = signal.getsignal(signum)
            self._old_handlers.setdefault(signum, trio_handler)
            signal.signal(signum, self._daemon_signal_handler(signum, trio_handler))

    def close(self) -> None:
        for signum, handler in self._old_handlers.items():
            try:
                signal.signal(signum, handler)
            except (TypeError, ValueError):  # handler None (set from C) or not main thread
                pass
        self._old_handlers.clear()
        with self._cond:
            self._closing = True
            self._cond.notify()

    # ---------------------------------------------------------------- instrument hooks

    def before_task_step(self, task) -> None:
        t = task.context.get(self._owner)
        if t is not None and t.trio_task is task:   # enter(t), inline: at every step
            self.serial += 1
            self.began = time.perf_counter()
            self.current = t

    def enter(self, t: Any) -> None:
        """A step of t begins (also called by a task's first step, which began before
        the task was registered)."""
        self.serial += 1
        self.began = time.perf_counter()
        self.current = t

    def after_task_step(self, task) -> None:
        if self.forked_child:
            os._exit(0)
        self.current = None   # always: a task's last step ends after it let go of its trio task
        t = task.context.get(self._owner)
        if t is None or t.trio_task is not task:
            return
        dt = time.perf_counter() - self.began   # steps do not nest: began is t's
        t.busy = busy = t.busy + dt
        t.steps += 1
        if dt > t.longest_step:   # after one step, one float for both (a parked task
            t.longest_step = busy if busy == dt else dt   # has taken one: 24 bytes each)
        if self.step_warning and dt > self.step_warning:
            log.warning("long step blocks the event loop", task=t.name, id=t.id,
                        seconds=round(dt, 4))

    @contextmanager
    def step_of(self, owner: Any) -> Iterator[None]:
        """Guard code the loop runs for ``owner`` outside its own trio task (a job
        file's top level, run while loading it) like a step of ``owner``."""
        outer = self.current, self.began
        self.serial += 1
        self.began = time.perf_counter()
        self.current = owner
        try:
            yield
        finally:
            self.serial += 1
            self.current, self.began = outer

    def before_io_wait(self, timeout: float) -> None:
        if self.forked_child:
            os._exit(0)
        self.waiting = True

    def after_io_wait(self, timeout: float) -> None:
        with self._cond:  # uncontended: no system call
            self.waiting = False
            if self._parked:
                self._cond.notify()

    # ---------------------------------------------------------------- requests from the loop

    def kill_running(self, task: Any) -> None:
        """``task`` is being killed; if a step of it runs away, end that step too."""
        task.kill_requested = True
        self._kill = task
        self._poke()

    def stopping(self, timeout: float) -> None:
        """The daemon is stopping: past ``timeout`` (plus a margin) a hung stop ends the process."""
        self._stop_deadline = time.monotonic() + timeout + 2.0
        self._poke()

    def _poke(self) -> None:
        with self._cond:
            self._cond.notify()

    # ---------------------------------------------------------------- signal handlers (main thread)

    def _daemon_signal_handler(self, signum: int, trio_handler: Any) -> Callable:
        name = signal.Signals(signum).name

        def handler(sig: int, frame: FrameType | None) -> None:
            if callable(trio_handler):
                trio_handler(sig, frame)   # the daemon's signal loop sees it once the loop runs
            if self.current is None:
                return
            if signum == signal.SIGHUP:
                self._hup = True
            else:
                self._stop_reason = f"the daemon received {name}"
            self._poke()
            self._raise_if_stalled(frame)
        return handler

    def _raise_if_stalled(self, frame: FrameType | None) -> None:
        due = self._due()
        if due is not None and _user_frame(frame) is not None:
            self._clear_requests()
            raise due[0](due[1])

    def _due(self) -> tuple[type[BaseException], str] | None:
        """What the running step must raise now, if a kill or a signal asks for it: a
        kill or a stop interrupts the task (it ends killed), a reload fails it."""
        t = self.current
        if t is None:
            return None
        elapsed = time.perf_counter() - self.began
        if self._kill is t:
            return TaskInterrupted, "killed while its step was running"
        if elapsed < self.stall:
            return None
        if self._stop_reason:
            return TaskInterrupted, f"{self._stop_reason} while its step had run {elapsed:.1f}s"
        if self._hup:
            return StepTimeout, f"its step blocked a reload (SIGHUP) for {elapsed:.1f}s"
        return None

    def _clear_requests(self) -> None:
        self._kill = None
        self._hup = False

    def _on_interrupt(self, signum: int, frame: FrameType | None) -> None:
        req = self._interrupt
        if req is None or req.serial != self.serial or self.current is None:
            return
        user = _user_frame(frame)
        if user is None:
            return  # inside trio or cosched: the watchdog asks again shortly
        self._interrupt = None
        self._clear_requests()
        raise req.kind(f"{req.reason}; it was at {job_line(user)}")

    # ---------------------------------------------------------------- the watchdog thread

    def _watch(self) -> None:
        while True:
            with self._cond:
                if self._closing:
                    return
                if self.waiting and self.current is None and self._stop_deadline is None:
                    self._parked = True           # idle: sleep until after_io_wait
                    self._cond.wait()
                    self._parked = False
                    continue
                timeout = self._next_look()
                stalled = self.current if self._at_desk() else None
                if stalled is None:
                    self._cond.wait(timeout)
            try:
                if stalled is not None:   # the loop cannot take connections: we do
                    self.desk.serve_once(timeout, stalled, self.kill_running)
                self._look()
            except Exception:  # noqa: BLE001 - the watchdog must outlive its own bugs
                log.exception("step guard failed")

    def _at_desk(self) -> bool:
        return (self.desk is not None and self.current is not None
                and time.perf_counter() - self.began >= self.stall)

    def _next_look(self) -> float:
        t = self.current
        if t is None:
            return PERIOD
        elapsed = time.perf_counter() - self.began
        due = [PERIOD]
        limit = t.policy.step_limit
        if limit:
            due.append(limit - elapsed if elapsed < limit else RETRY)
        if self._kill is t or self._stop_reason or self._hup:
            due.append(max(self.stall - elapsed, RETRY))
        return max(min(due), 0.005)

    def _look(self) -> None:
        """Decide, from the watchdog thread, whether the running step must be interrupted."""
        if self._stop_deadline is not None and time.monotonic() > self._stop_deadline:
            self._give_up(EXIT_STUCK, "the stop did not finish in time")
            return
        t, serial = self.current, self.serial
        if t is None:
            return
        elapsed = time.perf_counter() - self.began
        limit = t.policy.step_limit
        if limit and elapsed > limit + STUCK_GRACE:
            self._give_up(EXIT_STUCK, f"task {t.name} (#{t.id}) is stuck in a step for "
                                      f"{elapsed:.1f}s (step_limit {limit:g}s) and cannot be "
                                      "interrupted")
            return
        due = self._due()
        if due is not None:
            self._request(serial, *due)
        elif limit and elapsed > limit:
            self._request(serial, StepTimeout, f"step ran longer than step_limit ({limit:g}s)")

    def _request(self, serial: int, kind: type[BaseException], reason: str) -> None:
        self._interrupt = _Interrupt(serial, kind, reason)
        try:
            signal.pthread_kill(self._main_ident, INTERRUPT_SIGNAL)
        except (OSError, ValueError):  # the main thread is gone: the process is ending
            pass

    def _give_up(self, code: int, why: str) -> None:
        t = self.current
        log.critical("coschedd is ending itself", reason=why,
                     task=None if t is None else t.name, id=None if t is None else t.id,
                     exit_code=code)
        sys.stderr.flush()
        self._on_stuck(code)
