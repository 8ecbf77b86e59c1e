"""Reloading the config file: what a new ``Config`` changes, and what must wait for a restart.

``coschedctl reload`` and SIGHUP read ``coschedd.toml`` again (in a worker
thread: user and group names may be looked up over the network). A file that
fails to load or validate changes nothing: the error is the answer (or the log
line, for SIGHUP) and the config in force stays. A valid one is compared with
the config in force, field by field:

- *live* keys take effect at once: log level and format, step warnings, stop
  timeout, worker threads, connection limits and timeouts, buffer sizes, and
  every job policy (``[jobs]`` and ``[job.X]``);
- *restart-only* keys (``RESTART_ONLY``: the socket and its access, the folders,
  the request size, the watchdog) keep their old value and are reported as
  needing a restart of coschedd;
- the command line's overrides (``--socket``, ``--jobs-dir``, ``--log-level``,
  ``--log-format``) still win over the file.

Jobs: ``job_changes`` tells, per loaded job, what its tasks need when its merged
policy (``[jobs]`` defaults plus its ``[job.X]`` table) changed: a restart (the
new ``task.config`` and policy apply to the new life, see ``cosched.restarts``),
a stop (it became ``enabled = false``) or a start (it became enabled, or
autostarting, and nothing of it runs). Jobs whose policy did not change are not
touched. ``reload`` does it all for the supervisor, in this order: read and
check the file (off the event loop), put it in force, rescan the jobs folder
(files loaded now start under the new policies), then restart, stop or start
the other jobs whose policy changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import structlog
import trio

from . import log as logsetup
from . import restarts
from .config import Config, load_config
from .loader import set_strict_modes

__all__ = ["RESTART_ONLY", "LIVE", "Plan", "read", "plan", "job_changes", "reload"]

log = structlog.get_logger("cosched.reconfig")

# Config field -> the key in the file. A change of these is reported, not applied.
RESTART_ONLY = {
    "jobs_dir": "daemon.jobs_dir", "runtime_dir": "daemon.runtime_dir",
    "watchdog": "daemon.watchdog", "socket": "control.socket", "socket_mode": "control.mode",
    "read_users": "control.read_users", "read_group": "control.read_group",
    "control_users": "control.control_users", "control_group": "control.control_group",
    "max_request_bytes": "control.max_request_bytes",
}
# Config field -> the key in the file, for the keys that take effect at once.
LIVE = {
    "step_warning": "daemon.step_warning", "stop_timeout": "daemon.stop_timeout",
    "worker_threads": "daemon.worker_threads", "strict_modes": "daemon.strict_modes",
    "max_connections": "control.max_connections",
    "max_connections_per_user": "control.max_connections_per_user",
    "idle_timeout": "control.idle_timeout", "send_timeout": "control.send_timeout",
    "follow_queue": "control.follow_queue", "log_format": "log.format",
    "log_level": "log.level", "task_lines": "log.task_lines",
    "events_kept": "log.events_kept", "job_defaults": "jobs",
}
_IGNORED = {"path", "warnings", "jobs"}  # "jobs": compared per job, see job_changes


class Plan(NamedTuple):
    config: Config                # what to put in force: new values, old restart-only ones
    changed: list[str]            # keys that take effect now
    needs_restart: list[str]      # keys whose new value waits for a restart of coschedd


def read(path: Any, overrides: Mapping[str, Any]) -> Config:
    """The config file at ``path`` with the command line's overrides; ConfigError if bad."""
    return dataclasses.replace(load_config(path), **overrides)


def plan(old: Config, new: Config) -> Plan:
    changed, waiting, keep = [], [], {}
    for field in dataclasses.fields(Config):
        name = field.name
        if name in _IGNORED or getattr(old, name) == getattr(new, name):
            continue
        if name in RESTART_ONLY:
            waiting.append(RESTART_ONLY[name])
            keep[name] = getattr(old, name)
        else:
            changed.append(LIVE.get(name, name))
    changed += [f"job.{name}" for name in sorted(set(old.jobs) | set(new.jobs))
                if old.jobs.get(name) != new.jobs.get(name)]
    return Plan(dataclasses.replace(new, **keep), changed, waiting)


def job_changes(old: Config, new: Config, jobs: Iterable[str],
                running: Mapping[str, bool]) -> dict[str, str]:
    """What each job of ``jobs`` needs under the new config: "restart", "stop" or
    "start" (``running[name]``: whether a task of it is alive); unchanged jobs are left out."""
    out = {}
    for name in jobs:
        before, after = old.job_policy(name), new.job_policy(name)
        if before == after:
            continue
        if running.get(name):
            out[name] = "restart" if after.enabled else "stop"
        elif after.enabled and after.autostart and not (before.enabled and before.autostart):
            out[name] = "start"
    return out



async def reload(sup: Any) -> dict:
    """Reload the supervisor's config file and jobs folder; the report. Raises
    ConfigError (and changes nothing) when the file is bad."""
    report: dict[str, Any] = {"config": None}
    old = sup.config
    if old.path is not None:
        new = await trio.to_thread.run_sync(read, old.path, sup.overrides)
        p = plan(old, new)
        put_in_force(sup, p.config)
        report["config"] = {"path": str(old.path), "changed": p.changed,
                            "needs_restart": p.needs_restart}
    report.update(sup.rescan())
    report["errors"] = sup._job_errors()
    report.update(apply_job_changes(sup, old, set(report["loaded"])))
    log.info("reloaded", **report)
    sup.events.job("reload", "*", loaded=report["loaded"], removed=report["removed"],
                   restarted=report["restarted"])
    return report


def put_in_force(sup: Any, config: Config) -> None:
    """The new config, and its live settings where they are held."""
    old, sup.config = sup.config, config
    sup._child_policies.clear()   # children's policies are derived from the jobs' ones
    if (old.log_format, old.log_level) != (config.log_format, config.log_level):
        logsetup.reconfigure(config.log_format, config.log_level)
    sup.guard.step_warning = config.step_warning
    sup.threads.total_tokens = config.worker_threads
    set_strict_modes(config.strict_modes)
    sup.task_logs.resize(config.task_lines)
    sup.event_log.resize(config.events_kept)


def apply_job_changes(sup: Any, old: Config, reloaded: set[str]) -> dict:
    """Restart, stop or start the jobs whose policy changed (not those the rescan has
    just reloaded: their tasks started under the new policy already)."""
    names = [n for n, e in sup.job_table.items() if e["job"] is not None and n not in reloaded]
    running = {n: bool(sup.reg.roots_of(n)) for n in names}
    out: dict[str, list[str]] = {"restarted": [], "stopped": [], "started": []}
    policies = {}
    for name, what in sorted(job_changes(old, sup.config, names, running).items()):
        out[{"restart": "restarted", "stop": "stopped", "start": "started"}[what]].append(name)
        for t in sup.reg.roots_of(name):
            if what == "restart":
                policies[t.id] = sup.config.job_policy(name)
            else:
                sup._request_kill(t)
        if what == "start":
            sup.start_task(sup.job_table[name]["job"])
    if policies:
        sup.nursery.start_soon(restarts.restart_in_place, sup, policies)
    return out
