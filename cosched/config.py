"""coschedd configuration: the schema, the TOML loader and the typed result.

SCHEMA is the one description of every key (default, doc, accepted values).
Each key can also be set from the environment as COSCHED_<SECTION>_<KEY>
(``cosched.envconfig``), which wins over the file.
Validation, the defaults and the shipped config/coschedd.toml (rendered by
`python -m cosched.config`) are all derived from it, so they cannot disagree.

The config file decides what the daemon runs and who may command it, so it is
read only from a descriptor that passed ``cosched.strictmodes`` (owned by root or
the reader's own user, writable by no one else), whatever ``strict_modes`` says:
a file anyone could write could also turn that switch off.
"""

from __future__ import annotations

import copy
import dataclasses
import grp
import json
import math
import os
import pwd
import re
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

from . import socketpath
from .envconfig import EnvError, overrides, variable
from .schedules import ScheduleError, check_cron, check_timezone, parse_every
from .strictmodes import Untrusted, read_trusted

REPO_CONFIG = Path(socketpath.REPO_CONFIG)
SYSTEM_CONFIG = Path(socketpath.SYSTEM_CONFIG)
SYSTEM_STATE_DIR = Path("/var/lib/cosched")
SOCKET_PATH_MAX = 107  # sizeof(sun_path) on Linux minus the terminating NUL
RESERVED_CONNECTIONS = 4  # of control.max_connections, kept for root and the daemon's user


class ConfigError(Exception):
    """The config file is missing, unreadable, not TOML, or does not fit SCHEMA."""


@dataclass(frozen=True, slots=True)
class Key:
    default: Any
    doc: str
    expect: str                    # what a valid value looks like, for errors and the docs
    accept: Callable[[Any], bool]  # type and range check of the TOML-decoded value
    convert: Callable[[Any], Any] = lambda v: v  # may raise ValueError(reason)


def _toml(v: Any) -> str:
    """A value spelled as in TOML, for the shipped file and for error messages."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(map(_toml, v)) + "]"
    return str(v)  # numbers; the empty table {} of job.<name>.config


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # bool is an int subclass


def _seconds(default: float, doc: str, *, positive: bool = False) -> Key:
    def accept(v: Any) -> bool:
        number = (_is_int(v) or isinstance(v, float)) and math.isfinite(v)
        return number and (v > 0 or v == 0 and not positive)
    return Key(default, doc, "a number > 0" if positive else "a number >= 0", accept, float)


def _int(default: int, doc: str, lo: int, hi: int) -> Key:
    return Key(default, doc, f"an integer from {lo} to {hi}", lambda v: _is_int(v) and lo <= v <= hi)


def _choice(default: str, doc: str, *choices: str) -> Key:
    return Key(default, doc, "one of " + ", ".join(map(_toml, choices)), lambda v: v in choices)


def _check_schedule(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def convert(v: Any) -> Any:
        try:
            return check(v)
        except ScheduleError as e:
            raise ValueError(str(e)) from None
    return convert


def _every(v: Any) -> float | None:
    return None if v == "" else _check_schedule(parse_every)(v)


def _typed(kind: type, expect: str) -> Callable[[Any, str], Key]:
    return lambda default, doc: Key(default, doc, expect, lambda v: isinstance(v, kind))


_bool, _str = _typed(bool, "true or false"), _typed(str, "a string")


def _mode(v: str) -> int:
    if int(v, 8) & 0o007:
        raise ValueError(f'{_toml(v)} grants access to other users; its last digit must be 0')
    return int(v, 8)


def _listen(v: str) -> tuple[str, int] | None:
    """"HOST:PORT" (HOST an IP address, IPv6 in brackets) as (host, port); "" as None."""
    if v == "":
        return None
    host, sep, port = v.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{_toml(v)}: write an IPv6 address in brackets, e.g. \"[::1]:9469\"")
    import ipaddress  # here: coschedctl reads this module for its socket and starts fast
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{_toml(v)}: expected HOST:PORT with HOST an IP address, e.g. "
                         '"127.0.0.1:9469"') from None
    if not (sep and port.isascii() and port.isdigit() and int(port) <= 65535):
        raise ValueError(f"{_toml(v)}: the port must be a number from 0 to 65535") from None
    return host, int(port)


def _is_id(v: Any) -> bool:
    return isinstance(v, str) and v != "" or _is_int(v) and v >= 0


def _resolver(kind: str, lookup: Callable[[str], int]) -> Callable[[str | int], int]:
    def resolve(v: str | int) -> int:
        if _is_int(v) or v.isascii() and v.isdigit():
            return int(v)  # numeric ids need no passwd/group entry (containers, LDAP outages)
        try:
            return lookup(v)
        except KeyError:
            raise ValueError(f"unknown {kind} {_toml(v)}") from None
    return resolve


_uid = _resolver("user", lambda name: pwd.getpwnam(name).pw_uid)
_gid = _resolver("group", lambda name: grp.getgrnam(name).gr_gid)


def _users(doc: str) -> Key:
    return Key([], doc, "a list of user names or uids",
               lambda v: isinstance(v, list) and all(map(_is_id, v)),
               lambda v: tuple(dict.fromkeys(map(_uid, v))))  # dedupe, keep order


def _group(doc: str) -> Key:
    return Key("", doc, "a group name or gid", lambda v: v == "" or _is_id(v),
               lambda v: None if v == "" else _gid(v))


SCHEMA: dict[str, dict[str, Key]] = {
    "daemon": {
        "jobs_dir": _str("../jobs", "Folder of job scripts. Relative paths, here and below, "
                         "are relative to this file's folder."),
        "runtime_dir": _str("", 'State and socket folder. "" means $RUNTIME_DIRECTORY (set by '
                            "systemd; the first one if several), else $XDG_RUNTIME_DIR/cosched, "
                            "else ../.run from this file's folder."),
        "state_dir": _str("", 'Folder of the state database (task.state, task history, timed '
                          'jobs\' last runs). "" means $STATE_DIRECTORY (set by systemd), else '
                          "/var/lib/cosched for root (except with the repository's own config, "
                          "as in make run), else $XDG_STATE_HOME/cosched, else ../.state from "
                          "this file's folder."),
        "step_warning": _seconds(0.5, "Seconds; a single task step running longer than this "
                                 "logs a warning. 0 disables the warning."),
        "stop_timeout": _seconds(10.0, "Seconds that SIGTERM, and coschedctl kill, give a "
                                 "task's cleanup; past them the task is abandoned (state "
                                 "killed) and the daemon goes on, or exits."),
        "worker_threads": _int(16, "Threads shared by all tasks for task.run_sync (blocking "
                               "calls); a call waits for a free one.", 1, 1024),
        "watchdog": _bool(True, "Ping the systemd watchdog when WATCHDOG_USEC is set."),
        "strict_modes": _bool(True, "Refuse job files, and a runtime folder, that anyone but "
                              "root and the daemon's user could change (the file, or a folder "
                              "or symlink on the way to it; see the README). false is for "
                              "development only: such job files then load with a warning. The "
                              "config file itself is checked either way."),
    },
    "control": {
        "socket": _str("", 'Path of the unix socket. "" means <runtime_dir>/coschedd.sock.'),
        "mode": Key("0660", "Permissions of the socket for its owner and group. Must grant "
                    "nothing to other users: the daemon itself opens the socket to others (and "
                    "their uid is then checked on every connection) only when read_users or "
                    "control_users list someone, or read_group and control_group differ.",
                    'an octal string like "0660"',
                    lambda v: isinstance(v, str) and bool(re.fullmatch(r"0?[0-7]{3}", v)), _mode),
        "read_users": _users("Users (names or uids) who may use the read commands: status, "
                             "show (without the job's config table), jobs, ping, metrics."),
        "read_group": _group('Members of this group (name or gid) may use the read commands; '
                             '"": none. The socket and its folder get this group when it is '
                             "the only group configured."),
        "control_users": _users("Users (names or uids) who may use every command, including "
                                "resume, kill, start and reload. Root and the daemon's own "
                                "user always may."),
        "control_group": _group('Members of this group (name or gid) may use every command; '
                                '"": none. Like read_group, it becomes the group of the socket '
                                "and its folder when it is the only group configured."),
        "max_request_bytes": _int(65536, "Longest request line accepted, in bytes.",
                                  256, 16777216),
        "max_connections": _int(64, "Connections open at once, all peers together; the last "
                                f"{RESERVED_CONNECTIONS} are kept for root and the daemon's "
                                "user.", 8, 65536),
        "max_connections_per_user": _int(8, "Connections one user (uid) may hold open at once; "
                                         "root and the daemon's user have no such quota. Must "
                                         "be below max_connections minus "
                                         f"{RESERVED_CONNECTIONS}.", 1, 65536),
        "idle_timeout": _seconds(60.0, "Seconds; a connection that sends no complete request "
                                 "for this long is closed.", positive=True),
        "send_timeout": _seconds(30.0, "Seconds; a client that does not take a response line "
                                 "(or, following logs or events, the next line) within this "
                                 "is disconnected.", positive=True),
        "follow_queue": _int(1000, "Lines a follower of logs or events (coschedctl logs -f, "
                             "events -f) may fall behind; past this, new lines are dropped "
                             "for it and it is told how many.", 10, 1_000_000),
    },
    "log": {
        "format": _choice("auto", '"console", "json" (one object per line), or "auto": console '
                          "on a tty, JSON otherwise.", "auto", "console", "json"),
        "level": _choice("info", "Lowest level logged.", "debug", "info", "warning", "error"),
        "stream": _choice("stderr", 'Where log lines go: "stderr", or "stdout" (containers, '
                          "whose engines collect a program's output).", "stderr", "stdout"),
        "task_lines": _int(200, "Records kept in memory per task for coschedctl logs: its log "
                           "lines at or above the level, and the lines its job prints (those "
                           "always). The oldest go first. 0 keeps none.", 0, 100_000),
        "events_kept": _int(1000, "State changes of tasks and jobs kept in memory for "
                            "coschedctl events (the newest; 0 keeps none).", 0, 1_000_000),
    },
    "history": {
        "record": _bool(True, "Record every task's start, suspensions, resumptions (with "
                        "values), end, result, error and traceback in the state database, for "
                        "coschedctl history and for show of tasks that ended before a restart. "
                        "task.state and timed jobs are kept either way."),
        "max_rows": _int(100_000, "Events of the history kept; older ones are pruned, with the "
                         "tasks that have none left.", 1000, 100_000_000),
        "max_age_days": _seconds(30.0, "Days; events older than this are pruned. 0 keeps "
                                 "them until max_rows pushes them out."),
    },
    "jobs": {
        "restart": _choice("on-failure", "When an ended task is started again: never, after it "
                           "failed, or after any end.", "no", "on-failure", "always"),
        "restart_delay": _seconds(1.0, "Seconds before the first restart; doubles with each "
                                  "further one."),
        "restart_delay_max": _seconds(30.0, "Seconds; cap of the doubling restart delay."),
        "start_limit_burst": _int(5, "More starts than this within start_limit_interval: give up "
                                  '(coschedctl jobs then says "failed (start limit)" until the '
                                  "job is started again).", 1, 1_000_000),
        "start_limit_interval": _seconds(60.0, "Seconds; the window of start_limit_burst.",
                                         positive=True),
        "autostart": _bool(True, "Start a task for the job when it is loaded."),
        "step_limit": _seconds(10.0, "Seconds one step of a task (the code between two "
                               "awaits) may run before the daemon interrupts it with "
                               "cosched.StepTimeout, which fails the task. Also bounds a job "
                               "file's top level. 0 disables the limit."),
        "on_failure": _str("", "Name of a job to start when a task of this job fails for good "
                           "(no restart follows: restart policy, or start limit), like "
                           "systemd's OnFailure=. The started task finds the failed one in "
                           "task.trigger. The handler job is started even with autostart or "
                           "enabled = false; a task started so never triggers a hook itself. "
                           '"": none.'),
        "overlap": _choice("skip", "A timed job whose time comes while its previous run is "
                           'still alive: "skip" this time, "queue" one run for when the '
                           'previous ends, or "allow" both at once.', "skip", "queue", "allow"),
        "catch_up": _bool(False, "A timed job whose time passed while the daemon was down "
                          "(known from the state database) runs once at start."),
        "timezone": Key("", 'Time zone of schedule (an IANA name like "Europe/Berlin"; "": '
                        "the system's local time).", "a time zone name",
                        lambda v: isinstance(v, str), _check_schedule(check_timezone)),
    },
}

SCHEMA["metrics"] = {
    "listen": Key("", 'Serve Prometheus metrics (GET /metrics) and health checks (GET /healthz, '
                  'GET /livez) over HTTP at "HOST:PORT"; HOST is an IP address (IPv6 in '
                  'brackets), port 0 picks a free port. "" serves none; coschedctl metrics '
                  "works either way. Keep it on loopback unless the network is trusted: the "
                  "metrics name every job and task.",
                  '"" or "HOST:PORT", e.g. "127.0.0.1:9469"', lambda v: isinstance(v, str),
                  _listen),
    "max_task_series": _int(500, "Alive tasks that get series of their own (busy seconds, "
                            "steps, switches, restarts), lowest ids first; per-job totals "
                            "cover every task regardless. Bounds what a scrape costs "
                            "Prometheus when there are many tasks.", 0, 1_000_000),
}

JOB_KEYS: dict[str, Key] = {  # what a [job.<name>] table may hold
    **SCHEMA["jobs"],
    "config": Key({}, "Any table; handed to the job as task.config.", "a table",
                  lambda v: isinstance(v, dict), copy.deepcopy),
    "enabled": _bool(True, "false: the job file is known but never started."),
    "schedule": Key("", 'Cron schedule ("*/5 * * * *": minute hour day-of-month month '
                    'day-of-week; or @hourly, @daily, ...): a task of the job starts at each '
                    'time. "": not timed. A timed job does not start at load (autostart is '
                    "not used); coschedctl start still starts it.", "a cron expression",
                    lambda v: isinstance(v, str),
                    _check_schedule(lambda v: v and check_cron(v))),
    "every": Key("", 'Start a task of the job every interval ("30s", "5m", "1h30m", or '
                 'seconds); the next time is one interval after the last run. "": not timed. '
                 "Not together with schedule.", "a duration > 0",
                 lambda v: isinstance(v, str) or _is_int(v) or isinstance(v, float), _every),
}


@dataclass(frozen=True, slots=True)
class JobPolicy:
    restart: str
    restart_delay: float
    restart_delay_max: float
    start_limit_burst: int
    start_limit_interval: float
    autostart: bool
    step_limit: float
    enabled: bool
    config: dict
    on_failure: str = ""  # a job to start when a top-level task fails for good (cosched.hooks)
    overlap: str = "skip"
    catch_up: bool = False
    timezone: str = ""
    schedule: str = ""            # cron expression; "" when not timed
    every: float | None = None    # seconds; None when not timed (never both set)

    @property
    def timed(self) -> bool:
        return bool(self.schedule) or self.every is not None


@dataclass(frozen=True, slots=True)
class Config:
    path: Path | None
    jobs_dir: Path
    runtime_dir: Path
    state_dir: Path
    socket: Path
    socket_mode: int
    read_users: tuple[int, ...]
    read_group: int | None
    control_users: tuple[int, ...]   # control implies read
    control_group: int | None
    max_request_bytes: int
    max_connections: int
    max_connections_per_user: int    # < max_connections - RESERVED_CONNECTIONS
    idle_timeout: float
    log_format: str
    log_level: str
    step_warning: float
    stop_timeout: float
    worker_threads: int
    watchdog: bool
    strict_modes: bool
    job_defaults: JobPolicy
    jobs: Mapping[str, JobPolicy]  # merged policies of the jobs that have a [job.<name>] table
    history: bool                  # [history] record
    history_rows: int
    history_days: float            # 0: no age limit
    warnings: tuple[str, ...] = ()  # for the daemon to log: old key names that were used
    log_stream: str = "stderr"
    metrics_listen: tuple[str, int] | None = None   # (IP address, port); None: no HTTP endpoint
    metrics_max_task_series: int = 500
    # The operator's surface (defaults as in SCHEMA): followers' send timeout and queue,
    # per-task log buffer size, event history size.
    send_timeout: float = 30.0
    follow_queue: int = 1000
    task_lines: int = 200
    events_kept: int = 1000

    def job_policy(self, name: str) -> JobPolicy:
        """job_defaults merged with [job.<name>]. config is copied per call so that a
        task changing its task.config cannot leak into its next start."""
        policy = self.jobs.get(name, self.job_defaults)
        return dataclasses.replace(policy, config=copy.deepcopy(policy.config))


def _check(dotted: str, key: Key, value: Any) -> Any:
    if not key.accept(value):
        raise ConfigError(f"{dotted}: expected {key.expect}, got {_toml(value)}")
    try:
        return key.convert(value)
    except ValueError as e:
        raise ConfigError(f"{dotted}: {e}") from None


# Old key names still read, as the new key they now mean.
ALIASES: dict[str, dict[str, str]] = {
    "control": {"allowed_users": "control_users", "allowed_group": "control_group"},
}


def _table(name: str, table: Any, keys: Mapping[str, Key], *, defaults: bool,
           aliases: Mapping[str, str] = {}) -> dict[str, Any]:
    """The validated values of one table; with defaults=True missing keys get theirs.
    A key given by an old name (``aliases``) is stored under its new name; errors
    name the key as the file spells it."""
    if not isinstance(table, dict):
        raise ConfigError(f"{name}: expected a table, got {_toml(table)}")
    given: dict[str, tuple[str, Any]] = {}
    for k, value in table.items():
        new = aliases.get(k, k)
        if new not in keys:
            raise ConfigError(f"unknown key {name}.{k}")
        if new != k and new in table:
            raise ConfigError(f"{name}.{k} is the old name of {name}.{new}; set only {name}.{new}")
        given[new] = (k, value)
    if defaults:
        given = {k: given.get(k, (k, key.default)) for k, key in keys.items()}
    return {k: _check(f"{name}.{spelled}", keys[k], v) for k, (spelled, v) in given.items()}


def _check_control(control: dict[str, Any]) -> None:
    """The rules between [control] keys."""
    room = control["max_connections"] - RESERVED_CONNECTIONS
    if control["max_connections_per_user"] >= room:
        raise ConfigError(
            f"control.max_connections_per_user: {control['max_connections_per_user']} must be "
            f"below control.max_connections ({control['max_connections']}) minus the "
            f"{RESERVED_CONNECTIONS} connections kept for root and the daemon's user")
    groups = {control["read_group"], control["control_group"]} - {None}
    if len(groups) == 1 and control["mode"] & 0o060 != 0o060:
        raise ConfigError(f'control.mode: "{control["mode"]:04o}" keeps out the group that '
                          'control.read_group or control.control_group lets in; give the group '
                          'read and write, e.g. "0660"')


def _alias_warnings(data: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(f"{name}.{old} is an old name; it is read as {name}.{new}"
                 for name, aliases in ALIASES.items() if isinstance(data.get(name), dict)
                 for old, new in aliases.items() if old in data[name])


def _path(base: Path, p: str | os.PathLike) -> Path:
    return Path(socketpath.resolve(base, p))  # normalise "..", but keep symlinks as given


def _state_dir(value: str, base: Path, environ: Mapping[str, str]) -> Path:
    if value:
        return _path(base, value)
    if systemd := environ.get("STATE_DIRECTORY"):
        return _path(base, systemd.split(":")[0])
    in_repository = base.resolve() == REPO_CONFIG.parent   # make run: no root needed
    if os.geteuid() == 0 and not in_repository:
        return SYSTEM_STATE_DIR
    if xdg := environ.get("XDG_STATE_HOME"):
        return _path(base, xdg) / "cosched"
    return _path(base, "../.state")


def _check_timing(jobs: Mapping[str, JobPolicy]) -> None:
    for name, policy in jobs.items():
        if policy.schedule and policy.every is not None:
            raise ConfigError(f"job.{name}: set schedule or every, not both")


def parse_config(data: Mapping[str, Any], base_dir: Path, *, path: Path | None = None,
                 environ: Mapping[str, str] = os.environ) -> Config:
    """Validate decoded TOML; relative paths resolve against base_dir."""
    for name, table in data.items():
        if name not in SCHEMA and name != "job":
            raise ConfigError(f"unknown {'table' if isinstance(table, dict) else 'key'} {name}")
    v = {name: _table(name, data.get(name, {}), keys, defaults=True,
                      aliases=ALIASES.get(name, {}))
         for name, keys in SCHEMA.items()}
    job_defaults = JobPolicy(**(_table("job", {}, JOB_KEYS, defaults=True) | v["jobs"]))
    if not isinstance(job_tables := data.get("job", {}), dict):
        raise ConfigError(f"job: expected [job.<name>] tables, got {_toml(job_tables)}")
    jobs = {name: dataclasses.replace(job_defaults, **_table(f"job.{name}", t, JOB_KEYS,
                                                             defaults=False))
            for name, t in job_tables.items()}
    daemon, control, log, history = v["daemon"], v["control"], v["log"], v["history"]
    _check_control(control)
    _check_timing(jobs)
    # the rules coschedctl follows too, reading only these two keys (cosched.socketpath)
    runtime_dir = Path(socketpath.runtime_dir(daemon["runtime_dir"], base_dir, environ))
    socket = Path(socketpath.socket_path(os.fspath(runtime_dir), control["socket"], base_dir))
    if len(os.fsencode(socket)) > SOCKET_PATH_MAX:  # bind() would fail much later, less clearly
        raise ConfigError(f"control.socket: {socket} is longer than the {SOCKET_PATH_MAX} bytes "
                          "a unix socket path may have")
    return Config(
        path=path, jobs_dir=_path(base_dir, daemon["jobs_dir"]), runtime_dir=runtime_dir,
        state_dir=_state_dir(daemon["state_dir"], base_dir, environ),
        socket=socket, socket_mode=control["mode"], read_users=control["read_users"],
        read_group=control["read_group"], control_users=control["control_users"],
        control_group=control["control_group"], max_request_bytes=control["max_request_bytes"],
        max_connections=control["max_connections"],
        max_connections_per_user=control["max_connections_per_user"],
        idle_timeout=control["idle_timeout"], send_timeout=control["send_timeout"],
        follow_queue=control["follow_queue"], log_format=log["format"], log_level=log["level"],
        task_lines=log["task_lines"], events_kept=log["events_kept"],
        step_warning=daemon["step_warning"], stop_timeout=daemon["stop_timeout"],
        worker_threads=daemon["worker_threads"],
        watchdog=daemon["watchdog"], strict_modes=daemon["strict_modes"],
        job_defaults=job_defaults, jobs=jobs, warnings=_alias_warnings(data),
        log_stream=log["stream"], metrics_listen=v["metrics"]["listen"],
        metrics_max_task_series=v["metrics"]["max_task_series"],
        history=history["record"], history_rows=history["max_rows"],
        history_days=history["max_age_days"])


def default_config_path(environ: Mapping[str, str] = os.environ) -> Path:
    """$COSCHED_CONFIG, else /etc/cosched/coschedd.toml if present, else the repo's copy."""
    return Path(socketpath.config_path(environ))


def load_config(path: str | os.PathLike | None = None,
                environ: Mapping[str, str] = os.environ) -> Config:
    """Read, check (see the module docstring) and validate the config file."""
    path = Path(os.path.abspath(default_config_path(environ) if path is None else path))
    try:
        raw, _, _ = read_trusted(path)
        data = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except Untrusted as e:
        raise ConfigError(f"{path}: refusing the config file: {e}") from None
    except ValueError as e:  # TOMLDecodeError ends in "(at line L, column C)"; or bad UTF-8
        raise ConfigError(f"{path}: {e}") from None
    data, notes = _with_environment(data, environ)
    config = parse_config(data, path.parent, path=path, environ=environ)
    return dataclasses.replace(config, warnings=config.warnings + notes) if notes else config


def _with_environment(data: dict[str, Any], environ: Mapping[str, str]
                      ) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The file's tables with COSCHED_<SECTION>_<KEY> variables laid over them
    (cosched.envconfig); a bad value is an error that names the variable."""
    try:
        env, notes = overrides(SCHEMA, environ)
    except EnvError as e:
        raise ConfigError(str(e)) from None
    for section, values in env.items():
        for key, value in values.items():
            _check(variable(section, key), SCHEMA[section][key], value)
        if isinstance(data.get(section, {}), dict):
            data = {**data, section: {**data.get(section, {}), **values}}
    return data, tuple(notes)


def _key_doc(key: Key) -> list[str]:
    wrap = lambda text: textwrap.wrap(text, 78, initial_indent="# ", subsequent_indent="# ")
    return wrap(key.doc) + wrap(f"Expected: {key.expect}. Default: {_toml(key.default)}.")


def default_toml() -> str:
    """The text of the shipped config/coschedd.toml: every key at its default, documented."""
    out = ["# coschedd configuration. Every key is optional; the values below are the defaults.",
           "# Generated from cosched.config.SCHEMA:",
           "#   python -m cosched.config > config/coschedd.toml",
           "# Each key can also be set in the environment as COSCHED_<SECTION>_<KEY>,",
           "# e.g. COSCHED_LOG_FORMAT=json or COSCHED_METRICS_LISTEN=127.0.0.1:9469;",
           "# a variable wins over this file."]
    for section, keys in SCHEMA.items():
        out += ["", f"[{section}]"]
        for k, key in keys.items():
            out += ["", *_key_doc(key), f"{k} = {_toml(key.default)}"]
        for old, new in ALIASES.get(section, {}).items():
            out += ["", f"# {old}: the old name of {new}, still read as {new}."]
    out += ["", "# Per-job overrides, one table per job: any key of [jobs] (the defaults for",
            "# every job), plus the keys below.",
            "#", "# [job.example]"]
    for k, key in JOB_KEYS.items():
        if k not in SCHEMA["jobs"]:
            out += [*_key_doc(key), f"# {k} = {_toml(key.default)}", "#"]
    return "\n".join(out[:-1]) + "\n"


if __name__ == "__main__":
    print(default_toml(), end="")
