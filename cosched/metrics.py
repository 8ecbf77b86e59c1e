"""Prometheus metrics of the daemon, in the text exposition format (version 0.0.4).

``Collector.render`` produces what ``coschedctl metrics`` prints (for
node_exporter's textfile collector) and what ``GET /metrics`` serves
(``cosched.httpserve``). The text format is written here rather than through
prometheus-client: it is a few lines of code, it needs no registry of metric
objects to keep in step with the supervisor, and the rendering can hand the
event loop back every ``CHUNK`` tasks, so a scrape of a daemon with a million
tasks never stalls the other tasks or a health check.

What is exported:

- per job and per task state, how many tasks are listed (``cosched_tasks``);
  whether each job file loaded (``cosched_job_loaded``);
- per job, counters over every task the job ever ran (busy seconds, steps,
  coroutine switches, restarts, tasks started); the ended tasks' share is kept
  in ``JobTotals`` when a task ends for good, so the counters never go down
  when the registry forgets old tasks;
- per alive task, the same counters, for at most ``max_task_series`` tasks
  (lowest ids first): cardinality stays bounded however many tasks run, and
  ``cosched_task_series_omitted`` says how many were left out;
- the daemon: CPU seconds, resident memory, start time, uptime, open control
  connections, dropped log lines, the event loop's longest stall and how many
  stalls of 20 ms or more it had (``cosched.looplag``), and which switch path
  runs (C or Python).

Label values come from job authors (job and task names): they are escaped for
terminals first (``cosched.terminal``) and then for the text format, so the
exposition holds no control characters at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from . import __version__
from .protocol import TASK_STATES
from .terminal import escape

__all__ = ["Collector", "JobTotals", "CONTENT_TYPE", "switch_path"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CHUNK = 500  # tasks rendered between two checkpoints of the event loop


def switch_path() -> str:
    """"c" when the C switch path (cosched._speedups) runs, else "python"."""
    from . import _coro
    return "c" if _coro._speedups is not None else "python"


@dataclass(slots=True)
class Counts:
    """The counters of one job (or one task): monotonic while the daemon runs."""

    busy: float = 0.0
    steps: int = 0
    switches: int = 0
    restarts: int = 0
    started: int = 0

    def add(self, t: Any, switches: int) -> None:
        self.busy += t.busy
        self.steps += t.steps
        self.switches += switches
        self.restarts += t.restarts
        self.started += 1


class JobTotals:
    """The counters of the tasks that have ended for good, per job. The supervisor adds
    each task once, when it retires it; the collector adds the alive tasks at each scrape."""

    __slots__ = ("_jobs",)

    def __init__(self) -> None:
        self._jobs: dict[str, Counts] = {}

    def add(self, t: Any) -> None:
        counts = self._jobs.get(t.job.name)
        if counts is None:
            counts = self._jobs[t.job.name] = Counts()
        counts.add(t, t.switches)

    def snapshot(self) -> dict[str, Counts]:
        return {job: Counts(c.busy, c.steps, c.switches, c.restarts, c.started)
                for job, c in self._jobs.items()}


# -- the text format --------------------------------------------------------------

def label_value(text: str) -> str:
    """A label value: terminal-safe, then escaped as the text format wants."""
    return escape(str(text)).replace("\\", "\\\\").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, Any]]) -> str:
    inner = ",".join(f'{k}="{label_value(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


def _number(v: float | int) -> str:
    return repr(float(v)) if isinstance(v, float) else str(int(v))


class Family:
    """One metric family: its HELP and TYPE lines, then its samples."""

    __slots__ = ("name", "kind", "help", "lines")

    def __init__(self, name: str, kind: str, help: str) -> None:
        self.name, self.kind, self.help = name, kind, help
        self.lines: list[str] = []

    def add(self, value: float | int, **labels: Any) -> None:
        self.lines.append(f"{self.name}{_labels(labels.items())} {_number(value)}")

    def text(self) -> str:
        head = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        return "\n".join(head + self.lines) + "\n"


# -- the collector ----------------------------------------------------------------

_TASK_COUNTERS = (
    ("busy_seconds_total", "Seconds spent running steps", "busy"),
    ("steps_total", "Steps run (code between two awaits)", "steps"),
    ("switches_total", "Coroutine switches", "switches"),
    ("restarts_total", "Restarts after the task ended", "restarts"),
)


class Collector:
    """Renders the exposition from a Supervisor (``sup``): its registry, job table,
    process handle, log sink and ``JobTotals``. ``connections`` tells how many control
    connections are open (the daemon sets it once the control server runs)."""

    def __init__(self, sup: Any, max_task_series: int,
                 connections: Callable[[], int] = lambda: 0) -> None:
        self.sup = sup
        self.max_task_series = max_task_series
        self.connections = connections

    async def render(self, checkpoint: Callable[[], Any] | None = None) -> str:
        """The whole exposition. ``checkpoint`` (trio.lowlevel.checkpoint in the
        daemon) is awaited every CHUNK tasks; the tasks are walked in id order, as
        status does, not copied first (a million were 30 ms of the loop): one that
        changes meanwhile is counted as it is when reached."""
        from ._coro import switches_of
        tasks = self.sup.reg.scan()   # (None: an id no longer listed)
        by_state: dict[tuple[str, str], int] = {}
        jobs = self.sup.totals.snapshot()
        # The tasks come by id (the registry adds them in id order): the first alive
        # ones are those with series of their own, the rest are only counted (sorting
        # 100,000 of them held the loop for tens of milliseconds).
        shown: list[tuple[Any, int]] = []
        alive = 0
        for i, t in enumerate(tasks):
            if checkpoint is not None and i and i % CHUNK == 0:
                await checkpoint()
            if t is None:
                continue
            key = (t.job.name, t.shown_state())
            by_state[key] = by_state.get(key, 0) + 1
            if t.alive:
                switches = switches_of(t.trio_task) if t.trio_task is not None else t.switches
                counts = jobs.get(t.job.name)
                if counts is None:
                    counts = jobs[t.job.name] = Counts()
                counts.add(t, switches)
                alive += 1
                if len(shown) < self.max_task_series:
                    shown.append((t, switches))
        families = [*self._daemon(), *self._jobs(jobs, by_state)]
        if checkpoint is not None:
            await checkpoint()
        families += self._tasks(shown, alive - len(shown))
        return "".join(f.text() for f in families)

    def _daemon(self) -> list[Family]:
        sup, p = self.sup, self.sup.process
        with p.oneshot():
            cpu, rss = p.cpu_times(), p.memory_info().rss
        info = Family("cosched_info", "gauge", "Version of coschedd and the coroutine switch "
                      "path in use (c or python)")
        info.add(1, version=__version__, switch_path=switch_path())
        out = [info]
        for name, kind, help, value in (
            ("cosched_process_cpu_seconds_total", "counter",
             "CPU time of the daemon process (user and system)", cpu.user + cpu.system),
            ("cosched_process_resident_memory_bytes", "gauge",
             "Resident memory of the daemon process", rss),
            ("cosched_start_time_seconds", "gauge", "When the daemon started (Unix time)",
             time.time() - (time.monotonic() - sup.started)),
            ("cosched_uptime_seconds", "gauge", "Seconds since the daemon started",
             time.monotonic() - sup.started),
            ("cosched_control_connections", "gauge", "Open control socket connections",
             self.connections()),
            ("cosched_log_lines_dropped_total", "counter",
             "Log lines lost because the log output was full or failed",
             sup.log_sink.dropped if sup.log_sink is not None else 0),
            ("cosched_loop_longest_batch_seconds", "gauge",
             "Longest run of the event loop between two I/O waits (a stall everyone felt)",
             sup.loop.longest),
            ("cosched_loop_long_batches_total", "counter",
             "Runs of the event loop between two I/O waits of 20 ms or more", sup.loop.long),
        ):
            family = Family(name, kind, help)
            family.add(value)
            out.append(family)
        return out

    def _jobs(self, jobs: dict[str, Counts], by_state: dict[tuple[str, str], int]
              ) -> list[Family]:
        names = sorted(set(self.sup.job_table) | set(jobs) | {j for j, _ in by_state})
        loaded = Family("cosched_job_loaded", "gauge",
                        "1 if the job file loaded, 0 if it failed to load")
        for name, entry in sorted(self.sup.job_table.items()):
            loaded.add(0 if entry["job"] is None else 1, job=name)
        tasks = Family("cosched_tasks", "gauge", "Tasks listed, by job and state")
        for name in names:
            for state in TASK_STATES:
                tasks.add(by_state.get((name, state), 0), job=name, state=state)
        out = [loaded, tasks]
        started = Family("cosched_job_tasks_started_total", "counter",
                         "Tasks the job has started (restarts not counted)")
        for suffix, help, field in _TASK_COUNTERS:
            family = Family(f"cosched_job_{suffix}", "counter", f"{help}, all tasks of the job")
            for name in names:
                family.add(getattr(jobs.get(name, Counts()), field), job=name)
            out.append(family)
        for name in names:
            started.add(jobs.get(name, Counts()).started, job=name)
        out.append(started)
        return out

    def _tasks(self, shown: list[tuple[Any, int]], omitted: int) -> list[Family]:
        out = []
        for suffix, help, field in _TASK_COUNTERS:
            family = Family(f"cosched_task_{suffix}", "counter", f"{help}, one alive task")
            for t, switches in shown:
                value = switches if field == "switches" else getattr(t, field)
                family.add(value, job=t.job.name, task=t.name, id=t.id)
            out.append(family)
        left_out = Family("cosched_task_series_omitted", "gauge",
                          "Alive tasks without series of their own (metrics.max_task_series)")
        left_out.add(omitted)
        out.append(left_out)
        return out
