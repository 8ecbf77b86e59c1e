"""usage: coschedctl [-H [USER@]HOST] [--socket PATH] [--json] [--timeout SECONDS] COMMAND [ARG...]

Control a running coschedd through its unix socket, on this host or over SSH.

Commands:
  status [TASK] [--job JOB] [--state STATE] [--sort FIELD] [--reverse] [--limit N]
                          the daemon (pid, uptime, memory, CPU), a table of the
                          tasks, and the jobs that failed to load; or one task;
                          --job and --state keep the tasks of one job, or in one
                          state (starting, running, waiting, suspended,
                          restarting, finished, failed, killed); --sort orders
                          the tasks by id, name, job or state, or largest first
                          by busy, steps, switches, age or restarts; --reverse
                          the other way; --limit: only the first N (also with
                          --json; sorting is done by coschedctl, --limit alone
                          by the daemon)
  show TASK               one task in detail: state, yielded values, stack, traceback
  resume TASK [VALUE...]  resume a suspended task with values and wait until it
                          yields, ends, or the daemon stops waiting (5 seconds
                          before --timeout, at most half of it earlier). Each VALUE
                          is parsed as JSON, else taken as a string:
                          resume t 1 '"x"' abc '{"a":1}' sends [1, "x", "abc", {"a": 1}]
  kill TASK               cancel a task
  start [--force] JOB     start a new task for a job and show it after its first
                          step; --force starts even a job whose config says
                          enabled = false
  restart TASK|JOB        kill a task (its cleanup runs) and start it again with
                          the same task.state; a job: each of its tasks, or a
                          new one if none runs
  reload                  re-read the config file and rescan the jobs folder;
                          jobs whose config changed are restarted, a broken
                          config file is refused and the old one stays
  jobs                    list the jobs and their state, each with its top-level
                          tasks and how many tasks they spawned; for timed jobs
                          also the schedule, the next run and the last one
  logs TASK|JOB [-n N] [-f]
                          the last N (default 10) log records and printed lines
                          of a task, or of every task of a job; -f: then new
                          ones as they come, until the task ends (or Ctrl-C)
  events [-n N] [-f] [--job JOB]
                          the last N (default 10) state changes of tasks and
                          jobs; -f: then new ones as they happen, until Ctrl-C
  tree [TASK] [--job JOB] the tasks under the tasks that spawned them
  top                     a live view of the tasks, busiest first, and the
                          daemon's CPU, memory and uptime; q or Ctrl-C quits.
                          Not on a terminal: one table, then exit
  history [JOB|TASK] [--since T] [--limit N]
                          what the daemon recorded (it survives restarts): each
                          task's start, suspensions and resumptions with their
                          values, its end with result or error and traceback;
                          of one job or task, or of all. The newest N events
                          (default 50), oldest first. T is a time (2024-05-01,
                          "2024-05-01 12:30", seconds since the epoch) or an age
                          (30s, 15m, 2h, 7d: that long ago)
  ping                    check that the daemon answers
  metrics                 Prometheus metrics in the text format, e.g. for
                          node_exporter's textfile collector (write, then rename):
                          coschedctl metrics > DIR/cosched.prom.tmp &&
                          mv DIR/cosched.prom.tmp DIR/cosched.prom

TASK is a task id (a number) or a task name. Where TASK|JOB is taken, a job's
name means the job (its first task has the same name: use its id for it alone).

Some commands need control access (resume, kill, start, restart, reload), the
others read access; the daemon's control.* config keys say who has which.

Options (before or after the command):
  -H, --host [USER@]HOST  run the command on HOST: ssh HOST coschedctl --json ...,
                          like systemctl -H; the answer is printed here. ssh is
                          $COSCHED_SSH (default "ssh"), never asks (BatchMode),
                          and coschedctl must be on HOST's PATH (or set
                          $COSCHED_REMOTE_COSCHEDCTL); --socket then names HOST's
                          socket
  --socket PATH           the daemon's socket; default $COSCHED_SOCKET, else the
                          socket of the default configuration, else
                          $XDG_RUNTIME_DIR/cosched/coschedd.sock
  --json                  print the daemon's raw result as JSON (a followed
                          stream: one JSON object per line); an error also as
                          {"ok": false, "error": {"code": ..., "message": ...}}
                          on stdout
  --timeout SECONDS       how long to wait to connect and for the answer (default 35,
                          at most 86400); a followed stream then runs until it ends
  --version               print coschedctl's version
  -h, --help              show this text

Exit status:
  0  done (also: a followed stream ended, or Ctrl-C)
  1  the daemon refused the request; "coschedctl: CODE: MESSAGE" is printed
  2  usage error (--json: code "usage")
  3  the daemon cannot be reached (--json: code "unreachable"; with -H also:
     the host, by ssh, or coschedctl on it)

Text from the daemon (task and file names, values, errors) is printed with
control characters escaped (\\n, \\x1b, ...) and bytes that are not UTF-8 as
\\xNN; --json prints exact JSON, escaping such characters as \\uNNNN.
"""

from __future__ import annotations

import _socket
import argparse
import gc
import itertools
import json
import os
import re
import struct
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from . import __version__, fastjson, protocol
from .protocol import ControlError
from .terminal import escape, escape_json, escape_lines

# typing costs a small coschedctl command 4-5 ms to import (cosched.records)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NamedTuple
else:
    from .records import NamedTuple

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

DEFAULT_TIMEOUT = 35.0
MAX_TIMEOUT = protocol.MAX_WAIT  # so that resume_wait() stays within what the daemon accepts
RESUME_MARGIN = 5.0  # the daemon stops waiting on a resume this long before we do
USAGE = __doc__.splitlines()[0].removeprefix("usage: ")


class Unreachable(Exception):
    """The daemon could not be connected to, or gave no (readable) answer."""


# -- where the daemon is ----------------------------------------------------------

def default_socket_path(environ: dict[str, str] | None = None) -> str:
    """$COSCHED_SOCKET, else the socket of the default configuration (only the keys
    that place it are read: cosched.socketpath), else $XDG_RUNTIME_DIR/cosched/coschedd.sock."""
    env = os.environ if environ is None else environ
    if env.get("COSCHED_SOCKET"):
        return env["COSCHED_SOCKET"]
    try:
        from .socketpath import from_config
        return from_config(env)
    except Exception:
        runtime = env.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
        return os.path.join(runtime, "cosched", "coschedd.sock")


# -- the client -------------------------------------------------------------------
# The C module _socket, not socket: socket.py builds its enums at import, which costs
# a small command more than its whole conversation with the daemon.

_CHUNK = 1 << 20   # bytes per recv: a status of 100,000 tasks is some 40 MB


def call(path: str, cmd: str, args: dict[str, Any], timeout: float) -> Any:
    """Send one request and return its result. Raises ``ControlError`` when the daemon
    answers with an error and ``Unreachable`` when it cannot be asked."""
    return decode(call_line(path, cmd, args, timeout))


def call_line(path: str, cmd: str, args: dict[str, Any], timeout: float) -> bytes:
    """Send one request and return its answer line, undecoded. Raises ``Unreachable``."""
    deadline = time.monotonic() + timeout
    with _asking(path, cmd, args, timeout, deadline) as sock:
        return _read_line(sock, deadline)


@contextmanager
def _asking(path: str, cmd: str, args: dict[str, Any], timeout: float,
            deadline: float) -> Iterator[_socket.socket]:
    """A connection on which the request was sent; what goes wrong with it, there or
    while the caller reads the answer, is raised as ``Unreachable``."""
    sock = None
    try:
        sock = _connected(path, timeout)
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        _send_request(sock, protocol.encode(protocol.make_request(1, cmd, args)))
        yield sock
    except TimeoutError:
        raise Unreachable(f"no answer within {timeout:g}s") from None
    except OSError as exc:
        raise Unreachable(exc.strerror or str(exc)) from None
    finally:
        if sock is not None:
            sock.close()


def decode(line: bytes) -> Any:
    """The result of an answer line; raises ``ControlError`` for an error answer and
    ``Unreachable`` for one that is not a response."""
    try:
        return protocol.decode_response(line, fastjson.loads).result
    except (ValueError, RecursionError) as exc:
        raise Unreachable(f"unreadable answer: {exc}") from None


def follow(path: str, cmd: str, args: dict[str, Any], timeout: float,
           on_item: Callable[[Any], None]) -> Any:
    """Send a request answered by a stream; call ``on_item`` with each item as it comes
    and return the final result. ``timeout`` bounds the connection and the first line;
    then lines may be as far apart as the followed thing is quiet. Raises like ``call``."""
    first_line_by = time.monotonic() + timeout
    with _asking(path, cmd, args, timeout, first_line_by) as sock:
        reader = _Lines(sock)
        deadline: float | None = first_line_by
        while True:
            line = reader.next(deadline)
            deadline = None  # the first line came: from now on, wait as long as it takes
            try:
                response = protocol.decode_response(line, fastjson.loads)
            except (ValueError, RecursionError) as exc:
                raise Unreachable(f"unreadable answer: {exc}") from None
            if not response.item:
                return response.result
            on_item(response.result)


class _Lines:
    """Response lines from a socket, one at a time."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.scanned = 0  # buf[:scanned] holds no newline: a long line is searched once

    def next(self, deadline: float | None) -> bytes:
        while (end := self.buf.find(b"\n", self.scanned)) < 0:
            self.scanned = len(self.buf)
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                self.sock.settimeout(remaining)
            else:
                self.sock.settimeout(None)
            data = self.sock.recv(_CHUNK)
            if not data:
                raise Unreachable("the daemon closed the connection")
            self.buf += data
        line = bytes(self.buf[:end])
        del self.buf[:end + 1]
        self.scanned = 0
        return line


def _connected(path: str, timeout: float) -> _socket.socket:
    """A socket connected to the daemon: through its private socket beside ``path``
    when we may (root, the daemon's user: no one else can fill that one's queue),
    else through ``path``."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        _connect(sock, protocol.private_path(path), timeout)
        return sock
    except OSError:   # none there, not ours to use (EACCES), or a stale file
        sock.close()
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        _connect(sock, path, timeout)
    except BaseException:
        sock.close()
        raise
    return sock


def _connect(sock: _socket.socket, path: str, timeout: float) -> None:
    """Connect, waiting while the daemon's listen queue is full. A non-blocking (or
    timed) connect to a unix socket fails at once with EAGAIN then, so a burst of
    connections from anyone would make us fail; a blocking one sleeps in the kernel
    until there is room, for at most SO_SNDTIMEO."""
    usec = max(1, int(min(timeout, MAX_TIMEOUT) * 1e6))  # a zero timeval would mean forever
    sock.settimeout(None)
    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDTIMEO,
                    struct.pack("@ll", usec // 1_000_000, usec % 1_000_000))
    try:
        sock.connect(path)
    except BlockingIOError:
        raise Unreachable(f"its listen queue stayed full for {timeout:g}s") from None


def _send_request(sock: _socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the daemon may have answered and hung up already (busy, forbidden)


def _read_line(sock: _socket.socket, deadline: float) -> bytes:
    """The first line, without its newline; each piece is searched once (a long
    answer comes in hundreds of pieces)."""
    pieces = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        data = sock.recv(_CHUNK)
        if not data:
            raise Unreachable("the daemon closed the connection without answering")
        end = data.find(b"\n")
        if end >= 0:
            pieces.append(data[:end])
            return b"".join(pieces)
        pieces.append(data)


# -- argument parsing -------------------------------------------------------------

def task_arg(text: str) -> int | str:
    """A TASK: a number is an id (ASCII digits, up to the largest id), anything else a name."""
    if re.fullmatch(r"[0-9]{1,19}", text) and int(text) <= protocol.MAX_TASK_ID:
        return int(text)
    return text


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def value_arg(text: str) -> Any:
    """A resume VALUE: JSON if it parses (NaN and Infinity excepted), else the string."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except ValueError:
        return text


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(
            f"not a positive number of seconds up to {MAX_TIMEOUT:g}: {text!r}")
    return value


_AGE = r"(\d+(?:\.\d+)?)([smhdw])"
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def since_arg(text: str) -> float:
    """--since: an age ("15m": that long ago), seconds since the epoch, or an ISO date/time
    (local time unless it says otherwise); as seconds since the epoch."""
    value = text.strip()
    if m := re.fullmatch(_AGE, value):
        return max(0.0, time.time() - float(m[1]) * _AGE_UNITS[m[2]])
    try:
        seconds = float(value)
    except ValueError:
        from datetime import datetime  # only here: keep the start-up short
        try:
            seconds = datetime.fromisoformat(value).timestamp()
        except (ValueError, OverflowError, OSError):
            raise argparse.ArgumentTypeError(
                f"not a time or an age: {text!r} (e.g. 2024-05-01, \"2024-05-01 12:30\", "
                "1714557600, or 30s, 15m, 2h, 7d)") from None
    if not 0 <= seconds <= protocol.MAX_TIME:
        raise argparse.ArgumentTypeError(f"not a time after 1970: {text!r}")
    return seconds


def _limit(text: str) -> int:
    if re.fullmatch(r"[0-9]{1,7}", text) and 1 <= int(text) <= protocol.MAX_HISTORY:
        return int(text)
    raise argparse.ArgumentTypeError(f"not a number of events from 1 to {protocol.MAX_HISTORY}: "
                                     f"{text!r}")


def resume_wait(timeout: float) -> float:
    """How long the daemon waits on a resume, so that its answer arrives within ours."""
    return max(timeout - RESUME_MARGIN, timeout / 2)


# -- rendering --------------------------------------------------------------------

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def fmt_duration(seconds: Any) -> str:
    """0.2ms, 350ms, 1.2s, 3m04s, 2h05m, 3d04h; '-' for a missing value."""
    kind = type(seconds)
    if (kind is not float and kind is not int or seconds != seconds) and not _is_number(seconds):
        return _text(seconds)  # (the exact types first: a table calls this for every row)
    if seconds < 0.0095:
        return "0s" if seconds == 0 else f"{seconds * 1000:.1f}ms"
    if round(seconds, 3) < 1:
        return f"{seconds * 1000:.0f}ms"
    if round(seconds, 1) < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _durations(values: list[Any]) -> list[str]:
    """fmt_duration of each value, each distinct number formatted once (the ages of
    tasks started together repeat, and so do short busy times). Only when every value
    is a number or null: True == 1 would share 1's entry."""
    if set(map(type, values)) <= {float, int, type(None)}:
        texts = {v: fmt_duration(v) for v in dict.fromkeys(values)}
        return list(map(texts.__getitem__, values))
    return [fmt_duration(v) for v in values]


def fmt_bytes(count: Any) -> str:
    """512 B, 12.3 MiB, ..."""
    if not _is_number(count):
        return _text(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


# Every renderer below prints what the daemon sent only through _text, fmt_json and
# the fmt_* helpers, which escape it for the terminal (cosched.terminal).

def fmt_json(value: Any) -> str:
    return escape_json(json.dumps(value, ensure_ascii=False, default=str))


def _text(value: Any) -> str:
    return "-" if value is None else escape(str(value))


def _json_or_dash(value: Any) -> str:
    return "-" if value is None else fmt_json(value)


def _plain(value: Any) -> str:
    """Strings as they are (escaped), other values as JSON, '-' for null."""
    return _text(value) if isinstance(value, str) else _json_or_dash(value)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    columns = ([_cells(list(col)) for col in zip(*rows, strict=True)] if rows
               else [[] for _ in headers])
    return table_of_columns(headers, columns)


def _cells(values: list[Any]) -> list[str]:
    """_text of each value, with one check for all of them when they are printable
    ASCII (nearly always: then none needs escaping)."""
    cells = list(map(str, values))
    if None in values:
        cells = ["-" if v is None else c for v, c in zip(values, cells, strict=True)]
    joined = "".join(cells)
    if joined.isascii() and joined.isprintable():
        return cells
    return [escape(c) for c in cells]


def table_of_columns(headers: list[str], columns: list[list[str]]) -> str:
    """``table`` of columns of cells that are safe to print already: cells are padded a
    column at a time and each row is one join (a str.format per row parsed its
    template every time: 100,000 rows took 0.21 s, now 0.13 s)."""
    widths = [max(len(h), max(map(len, col), default=0))
              for h, col in zip(headers, columns, strict=True)]
    padded = [list(map(str.ljust, col, itertools.repeat(w)))
              for col, w in zip(columns[:-1], widths, strict=False)]
    rows = map("  ".join, zip(*padded, columns[-1], strict=True)) if columns else iter(())
    heading = "  ".join([*map(str.ljust, headers[:-1], widths), *headers[-1:]])
    return "\n".join([heading.rstrip(), *map(str.rstrip, rows)])


def _job_errors(errors: list[dict]) -> list[str]:
    return [f"  {_text(e.get('job'))} ({_text(e.get('path'))}): {_text(e.get('error'))}"
            for e in errors]


def render_status(result: dict, table: TaskTable | None = None) -> str:
    """The status text; ``table``: the tasks' table made already (from pages), else
    made here from the result's tasks."""
    d = result.get("daemon") or {}
    cpu = fmt_duration(d.get("cpu_time"))
    if _is_number(d.get("cpu_percent")):
        cpu += f" ({d['cpu_percent']:.1f}%)"
    if table is None:
        table = TaskTable()
        table.add(result.get("tasks") or [])
    lines = [
        f"coschedd {_text(d.get('version'))}  pid {_text(d.get('pid'))}  "
        f"up {fmt_duration(d.get('uptime'))}  mem {fmt_bytes(d.get('rss'))}  cpu {cpu}  "
        f"tasks {_text(d.get('num_tasks'))} alive, {table.count} listed",
        f"jobs {_text(d.get('jobs_dir'))}  socket {_text(d.get('socket'))}"
        f"  switch path {_text(d.get('switch_path'))}",
        "",
        table.text() if table.count else "no tasks to list",
    ]
    errors = result.get("job_errors") or []
    if errors:
        lines += ["", "job errors:", *_job_errors(errors)]
    return "\n".join(lines)


# The table's columns: asked for as arrays (status "columns"), read back by position.
_TABLE_FIELDS = ("id", "name", "state", "waiting_on", "busy", "steps", "age")


class TaskTable:
    """The tasks' table, its cells made a column at a time as rows come (a status may
    list a million; a paged one brings them 500 at a time, and their cells are made
    while the daemon makes the next page). Rows are arrays of _TABLE_FIELDS (or
    objects, as --json, a view and older daemons get)."""

    HEADERS = ["ID", "NAME", "STATE", "WAITING-ON", "BUSY", "STEPS", "AGE"]
    _MAKERS = (_cells, _cells, _cells, _cells, _durations, _cells, _durations)

    def __init__(self) -> None:
        self.columns: list[list[str]] = [[] for _ in _TABLE_FIELDS]   # cells, safe to print
        self.count = 0   # rows added

    def add(self, tasks: list) -> None:
        if not tasks:
            return
        if isinstance(tasks[0], dict):
            columns = [[t.get(key) for t in tasks] for key in _TABLE_FIELDS]
        else:
            columns = [list(col) for col in zip(*tasks, strict=True)]
            if len(columns) != len(_TABLE_FIELDS):
                raise ValueError("rows of another width than the columns asked for")
        for cells, make, values in zip(self.columns, self._MAKERS, columns, strict=True):
            cells += make(values)
        self.count += len(tasks)

    def text(self) -> str:
        return table_of_columns(self.HEADERS, self.columns)


def _started_at(value: Any) -> str:
    from datetime import datetime  # only show needs it: keep the start-up short
    try:
        return datetime.fromtimestamp(value).isoformat(sep=" ", timespec="seconds")
    except (TypeError, ValueError, OverflowError, OSError):  # not a number, or out of range
        return _text(value)


def _frame_text(frame: Any) -> str:
    if not isinstance(frame, dict):
        return _text(frame)
    return f"{_text(frame.get('file'))}:{_text(frame.get('line'))} in {_text(frame.get('function'))}"


_SHOW_FIELDS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("id", "id", _text), ("name", "name", _text), ("job", "job", _text),
    ("state", "state", _text), ("waiting on", "waiting_on", _text),
    ("at", "at", _frame_text), ("error", "error", _text),
    ("busy", "busy", fmt_duration), ("longest step", "longest_step", fmt_duration),
    ("steps", "steps", _text), ("switches", "switches", _text), ("age", "age", fmt_duration),
    ("started at", "started_at", _started_at), ("restarts", "restarts", _text),
    ("config", "config", fmt_json), ("yielded", "yielded", _json_or_dash),
]


def render_show(result: dict) -> str:
    lines = [f"{label}: {fmt(result.get(key))}" for label, key, fmt in _SHOW_FIELDS]
    known = {key for _, key, _ in _SHOW_FIELDS} | {"stack", "traceback"}
    lines += [f"{_text(key).replace('_', ' ')}: "    # fields added later; *_at are times
              f"{_started_at(value) if key.endswith('_at') else _plain(value)}"
              for key, value in result.items() if key not in known]
    stack = result.get("stack") or []
    lines.append("stack:" if stack else "stack: -")
    lines += [f"  {_text(f.get('file'))}:{_text(f.get('line'))} {_text(f.get('function'))}"
              for f in stack]
    traceback = result.get("traceback")
    lines.append("traceback:" if traceback else "traceback: -")
    if traceback:
        text = escape_lines(str(traceback).rstrip("\n"))  # keeps its own line breaks only
        lines += ["  " + line for line in text.split("\n")]
    return "\n".join(lines)


def render_resume(result: dict) -> str:
    outcome = result.get("outcome")
    if outcome == "yielded":
        return f"yielded: {fmt_json(result.get('values') or [])}"
    if outcome == "finished":  # its result, as show prints it: one value as itself
        values = result.get("values") or []
        return f"finished: {fmt_json(values[0] if len(values) == 1 else values or None)}"
    if outcome == "failed":
        return f"failed: {_text(result.get('error'))}"
    if outcome == "running":
        return "still running"
    return f"{_text(outcome)}: {fmt_json(result)}"


def _task_line(verb: str, result: dict) -> str:
    task = result.get("task") or {}
    return (f"{verb} task {_text(task.get('id'))} ({_text(task.get('name'))}, "
            f"job {_text(task.get('job'))}): {_text(task.get('state'))}")


def render_kill(result: dict) -> str:
    if result.get("already"):
        task = result.get("task") or {}
        return (f"task {_text(task.get('id'))} ({_text(task.get('name'))}, job "
                f"{_text(task.get('job'))}) was already killed")
    return _task_line("killed", result)


def render_restart(result: dict) -> str:
    verb = "started" if result.get("started") else "restarted"
    tasks = result.get("tasks") or ([result["task"]] if result.get("task") else [])
    return "\n".join(_task_line(verb, {"task": t}) for t in tasks) or "nothing to restart"


def render_reload(result: dict) -> str:
    lines = []
    config = result.get("config")
    if isinstance(config, dict):
        lines += [f"config: {_text(config.get('path'))}",
                  f"config changed: {', '.join(map(_text, config.get('changed') or [])) or '-'}"]
        if config.get("needs_restart"):
            lines.append("config needing a restart of coschedd (old value in force): "
                         + ", ".join(map(_text, config["needs_restart"])))
    lines += [f"{key}: {', '.join(map(_text, result.get(key) or [])) or '-'}"
              for key in ("loaded", "removed", "restarted", "stopped", "started")
              if key in ("loaded", "removed") or result.get(key)]
    errors = result.get("errors") or []
    if errors:
        lines += ["errors:", *_job_errors(errors)]
    return "\n".join(lines)


def _job_tasks(job: dict) -> str:
    """Its top-level tasks' ids, and how many tasks they spawned that are alive."""
    ids = job.get("tasks") or []
    alive = job.get("num_tasks")   # (an older daemon sends no count)
    text = ",".join(map(_text, ids)) or "-"
    spawned = alive - len(ids) if type(alive) is int else 0
    return f"{text} (+{spawned} spawned)" if spawned > 0 else text


def render_jobs(result: dict) -> str:
    jobs = result.get("jobs") or []
    timed = any(j.get("schedule") for j in jobs)   # the timing columns only when needed
    lines = [table(["NAME", "STATE", "TASKS"] + ["SCHEDULE", "NEXT", "LAST"] * timed + ["PATH"],
                   [[j.get("name"), j.get("state"),
                     _job_tasks(j),
                     *([j.get("schedule"), _when(j.get("next_run")), _when(j.get("last_run"))]
                       if timed else []), j.get("path")]
                    for j in jobs])]
    failed = [j for j in jobs if j.get("error")]
    if failed:
        lines += ["", "errors:", *[f"  {_text(j.get('name'))}: {_text(j.get('error'))}"
                                   for j in failed]]
    return "\n".join(lines)


def render_metrics(result: dict) -> str:
    """The exposition as it came: it holds no control characters (cosched.metrics),
    and escape_lines keeps it so should a daemon send any."""
    return escape_lines(str(result.get("text", "")).rstrip("\n"))


def _when(value: Any) -> str:
    return "-" if value is None else _started_at(value)


def _event_detail(e: dict) -> str:
    """What an event carries, in one line: values, result, error, delay, ..."""
    parts = []
    if "values" in e:
        parts.append(" ".join(fmt_json(v) for v in e["values"] or []) or "(no values)")
    if "result" in e:
        parts.append(f"result {fmt_json(e['result'])}")
    if e.get("error") is not None:
        parts.append(_text(e["error"]))
    for key in ("delay", "restarts", "due", "alive", "run", "path"):
        if key in e:
            value = _when(e[key]) if key == "due" else e[key]
            parts.append(f"{key} {_plain(value)}")
    return "; ".join(parts)


def render_history(result: dict) -> str:
    if result.get("recording") is False:
        return "history is not recorded (history.record = false in the daemon's config)"
    events = result.get("events") or []
    if not events:
        return "no events recorded"
    lines = table(["TIME", "TASK", "NAME", "JOB", "EVENT", "DETAIL"],
                  [[_when(e.get("time")), e.get("task"), e.get("name"), e.get("job"),
                    e.get("event"), _event_detail(e) or None] for e in events]).split("\n")
    out = [lines[0]]
    for line, e in zip(lines[1:], events, strict=True):
        out.append(line)
        if e.get("traceback"):
            out += ["    " + row for row in escape_lines(str(e["traceback"]).rstrip("\n")).split("\n")]
    if result.get("more"):
        out.append("(older events were recorded too: raise --limit, or use --since)")
    return "\n".join(out)


def render_ping(result: dict) -> str:
    return f"pong from coschedd pid {_text(result.get('pid'))}"


def _clock(value: Any) -> str:
    from datetime import datetime  # only a few commands need it: keep the start-up short
    try:
        return datetime.fromtimestamp(value).isoformat(sep=" ", timespec="milliseconds")
    except (TypeError, ValueError, OverflowError, OSError):
        return _text(value)


def _pairs(fields: Any) -> str:
    if not isinstance(fields, dict) or not fields:
        return ""
    return "".join(f" {_text(k)}={_plain(v)}" for k, v in fields.items() if v is not None)


def render_record(r: dict) -> str:
    """One log record or printed line: time, task[id], level or stream, message, fields."""
    if "dropped" in r and len(r) == 1:
        return f"-- {_text(r['dropped'])} lines dropped: coschedctl fell behind --"
    kind = r.get("level") or r.get("source")
    return (f"{_clock(r.get('time'))} {_text(r.get('task'))}[{_text(r.get('id'))}] "
            f"{_text(kind)}: {_text(r.get('message'))}{_pairs(r.get('fields'))}")


_EVENT_KEYS = ("time", "event", "task", "id", "job", "state")


def render_event(e: dict) -> str:
    """One state change: time, event, task[id] (or the job), state, other fields."""
    if "dropped" in e and len(e) == 1:
        return f"-- {_text(e['dropped'])} events dropped: coschedctl fell behind --"
    who = (f"{_text(e.get('task'))}[{_text(e.get('id'))}] job {_text(e.get('job'))}"
           if "task" in e else f"job {_text(e.get('job'))}")
    state = f" {_text(e['state'])}" if e.get("state") else ""
    rest = {k: v for k, v in e.items() if k not in _EVENT_KEYS}
    return f"{_clock(e.get('time'))} {_text(e.get('event'))} {who}{state}{_pairs(rest)}"


def render_logs(result: dict) -> str:
    records = result.get("records") or []
    return "\n".join(map(render_record, records)) if records else "no log records"


def render_events(result: dict) -> str:
    events = result.get("events") or []
    return "\n".join(map(render_event, events)) if events else "no events"


def render_ended(result: Any) -> str | None:
    """The last line of a followed stream: why it ended (None: the client ended it)."""
    if not isinstance(result, dict) or "ended" not in result:
        return None
    error = f": {_text(result['error'])}" if result.get("error") else ""
    return f"-- ended: {_text(result['ended'])}{error} --"


def render_tree(result: dict) -> str:
    """Each task under its parent, ASCII branches: |-- for a child, `-- for the last one."""
    rows = result.get("tasks") or []
    if not rows:
        return "no tasks"
    depths = [r.get("depth") if isinstance(r.get("depth"), int) else 0 for r in rows]
    last, later = [False] * len(rows), set()  # later: depths that have a later sibling
    for i in reversed(range(len(rows))):
        last[i] = depths[i] not in later
        later = {d for d in later if d < depths[i]} | {depths[i]}
    lines, more = [], []  # more[k]: a sibling follows at depth k + 1 (draw "|")
    for r, depth, is_last in zip(rows, depths, last, strict=True):
        del more[max(depth - 1, 0):]
        prefix = "".join("|   " if m else "    " for m in more)
        if depth:
            prefix += "`-- " if is_last else "|-- "
            more.append(not is_last)
        lines.append(f"{prefix}{_text(r.get('id'))} {_text(r.get('name'))} "
                     f"(job {_text(r.get('job'))}) {_text(r.get('state'))}")
    return "\n".join(lines)


# -- the command table ------------------------------------------------------------

class Cmd(NamedTuple):
    """One coschedctl command: its arguments (argparse keywords), how to turn the parsed
    arguments into the request's args, how to print the result; ``stream``: how to
    print each item when the request follows (``follows`` tells from the arguments);
    ``run``: a command that does its own talking (top); ``local_help`` for commands
    the protocol does not have."""

    name: str
    args: tuple[tuple[str, dict], ...]
    build: Callable[[argparse.Namespace], dict]
    render: Callable[[Any], str]
    stream: Callable[[Any], str] | None = None
    run: Callable[[argparse.Namespace, str], int] | None = None
    local_help: str = ""
    method: str | None = None  # the protocol command, when not ``name``
    # What of the result to print, decided here (status --sort/--limit): None to print
    # it as it came, else a function of the result giving (the result to print, a note
    # for humans under it).
    view: Callable[[argparse.Namespace], Callable[[Any], tuple[Any, str]] | None] | None = None

    @property
    def help(self) -> str:
        spec = protocol.COMMANDS.get(self.method or self.name)
        return spec.help if spec is not None else self.local_help

    def follows(self, ns: argparse.Namespace) -> bool:
        return self.stream is not None and bool(getattr(ns, "follow", False))


def _count(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,7}", text) or int(text) > protocol.MAX_LINES:
        raise argparse.ArgumentTypeError(f"not a number from 0 to {protocol.MAX_LINES}: {text!r}")
    return int(text)


def _run_top(ns: argparse.Namespace, path: str) -> int:
    from . import top  # the screen library is loaded only for this command
    return top.main(path, ns.timeout, as_json=ns.json)


# status --sort FIELD: True for the fields listed largest first (busiest, oldest, ...).
SORT_FIELDS = {"id": False, "name": False, "job": False, "state": False, "busy": True,
               "steps": True, "switches": True, "age": True, "restarts": True}
MAX_ROWS = 999_999_999


def _rows(text: str) -> int:
    if re.fullmatch(r"[0-9]{1,9}", text) and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"not a number of tasks from 1 to {MAX_ROWS}: {text!r}")


def _sort_key(field: str) -> Callable[[Any], Any]:
    """Numbers by value, other fields as text; a task without the field sorts last."""
    if field in ("name", "job", "state"):
        return lambda t: (t.get(field) is None, str(t.get(field)))
    missing = -float("inf") if SORT_FIELDS[field] else float("inf")
    return lambda t: v if type(v := t.get(field)) is int or type(v) is float else missing


def _status_view(ns: argparse.Namespace) -> Callable[[Any], tuple[Any, str]] | None:
    """status --sort, --reverse and --limit, done here: the daemon sends every task
    (but for --limit alone, which it does itself: see _status_args)."""
    if ns.sort is None and ns.rows is None and not ns.reverse:
        return None

    def view(result: Any) -> tuple[Any, str]:
        tasks = result.get("tasks") or []
        if ns.sort is not None:
            tasks = sorted(tasks, key=_sort_key(ns.sort), reverse=SORT_FIELDS[ns.sort] != ns.reverse)
        elif ns.reverse:
            tasks = tasks[::-1]
        shown = tasks[:ns.rows]
        matching = result.get("num_matching")   # the daemon cut the list: how many it had
        if type(matching) is not int or matching < len(tasks):
            matching = len(tasks)
        note = (f"\n({len(shown)} of {matching} tasks listed: --limit {ns.rows})"
                if len(shown) < matching else "")
        return {**result, "tasks": shown}, note
    return view


def _status_args(ns: argparse.Namespace) -> dict:
    args = {k: v for k in ("task", "job", "state") if (v := getattr(ns, k)) is not None}
    if _status_view(ns) is None:
        if not ns.json:   # the table: a row is an array of its cells
            args["columns"] = list(_TABLE_FIELDS)
        args["pages"] = True   # see _paged
    elif ns.rows is not None and ns.sort is None and not ns.reverse:
        args["limit"] = ns.rows   # the first N by id: the daemon renders those alone
    return args


_TASK = ("task", {"type": task_arg, "metavar": "TASK"})
_TASK_OR_JOB = ("task", {"type": task_arg, "metavar": "TASK|JOB"})
_LINES = ("-n", {"dest": "lines", "type": _count, "default": 10, "metavar": "N"})
_FOLLOW = ("-f", {"dest": "follow", "action": "store_true"})

COMMANDS: tuple[Cmd, ...] = (
    Cmd("status", (("task", {"type": task_arg, "metavar": "TASK", "nargs": "?"}),
                   ("--job", {"metavar": "JOB"}),
                   ("--state", {"metavar": "STATE", "choices": protocol.TASK_STATES}),
                   ("--sort", {"metavar": "FIELD", "choices": tuple(SORT_FIELDS)}),
                   ("--reverse", {"action": "store_true"}),
                   ("--limit", {"dest": "rows", "type": _rows, "metavar": "N"})),
        _status_args, render_status, view=_status_view),
    Cmd("show", (_TASK,), lambda ns: {"task": ns.task}, render_show),
    Cmd("resume", (_TASK, ("values", {"type": value_arg, "metavar": "VALUE", "nargs": "*",
                                      "default": []})),
        lambda ns: {"task": ns.task, "values": ns.values, "timeout": resume_wait(ns.timeout)},
        render_resume),
    Cmd("kill", (_TASK,), lambda ns: {"task": ns.task}, render_kill),
    Cmd("start", (("--force", {"action": "store_true"}), ("job", {"metavar": "JOB"})),
        lambda ns: {"job": ns.job, **({"force": True} if ns.force else {})},
        lambda r: _task_line("started", r)),
    Cmd("restart", (_TASK_OR_JOB,), lambda ns: {"task": ns.task}, render_restart),
    Cmd("reload", (), lambda ns: {}, render_reload),
    Cmd("jobs", (), lambda ns: {}, render_jobs),
    Cmd("logs", (_TASK_OR_JOB, _LINES, _FOLLOW),
        lambda ns: {"task": ns.task, "lines": ns.lines, "follow": ns.follow},
        render_logs, stream=render_record),
    Cmd("events", (_LINES, _FOLLOW, ("--job", {"metavar": "JOB"})),
        lambda ns: {"lines": ns.lines, "follow": ns.follow,
                    **({"job": ns.job} if ns.job is not None else {})},
        render_events, stream=render_event),
    Cmd("tree", (("task", {"type": task_arg, "metavar": "TASK", "nargs": "?"}),
                 ("--job", {"metavar": "JOB"})),
        lambda ns: {k: v for k in ("task", "job") if (v := getattr(ns, k)) is not None},
        render_tree),
    Cmd("top", (), lambda ns: {}, str, run=_run_top,
        local_help="A live view of the tasks, busiest first; q quits."),
    Cmd("history", (("target", {"type": task_arg, "metavar": "JOB|TASK", "nargs": "?"}),
                    ("--since", {"type": since_arg, "metavar": "T"}),
                    ("--limit", {"type": _limit, "metavar": "N", "default": 50})),
        lambda ns: {"limit": ns.limit, **{k: v for k in ("target", "since")
                                          if (v := getattr(ns, k)) is not None}},
        render_history),
    Cmd("ping", (), lambda ns: {}, render_ping),
    Cmd("metrics", (), lambda ns: {}, render_metrics),
)
_BY_NAME = {cmd.name: cmd for cmd in COMMANDS}


class _PrintDoc(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(__doc__, end="")
        parser.exit(EXIT_OK)


def _host_arg(text: str) -> str:
    from .remote import check_host
    try:
        return check_host(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _Parser(argparse.ArgumentParser):
    """Remembers its last usage error, for --json."""

    last_error: str | None = None

    def error(self, message: str) -> None:
        _Parser.last_error = message
        super().error(message)


class _Trial(Exception):
    """A parser of one command could not parse the arguments: ask the whole parser."""


class _TrialParser(_Parser):
    def error(self, message: str) -> None:
        raise _Trial(message)


def _columns() -> int:
    """The terminal's width for argparse's messages, as shutil.get_terminal_size finds it
    (argparse asks shutil at every add_argument; importing shutil costs milliseconds)."""
    global _COLUMNS
    if _COLUMNS is None:
        try:
            _COLUMNS = int(os.environ.get("COLUMNS", "0"))
        except ValueError:
            _COLUMNS = 0
        if _COLUMNS <= 0:
            try:
                _COLUMNS = os.get_terminal_size(sys.__stdout__.fileno()).columns
            except (AttributeError, ValueError, OSError):
                _COLUMNS = 0
        _COLUMNS = _COLUMNS or 80
    return _COLUMNS


_COLUMNS: int | None = None


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(prog, width=_columns())


def _add_global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The global options; on the subcommands (``suppress``) they override only when given."""
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value
    parser.add_argument("-H", "--host", metavar="[USER@]HOST", type=_host_arg,
                        default=default(None),
                        help="run the command on HOST over ssh (ssh HOST coschedctl --json "
                             "...), like systemctl -H; the answer is printed here")
    parser.add_argument("--socket", metavar="PATH", default=default(None),
                        help="the daemon's socket; default $COSCHED_SOCKET, else the socket "
                             "of the default configuration")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print the daemon's result as JSON")
    parser.add_argument("--timeout", metavar="SECONDS", type=_positive_seconds,
                        default=default(DEFAULT_TIMEOUT),
                        help=f"how long to wait to connect and for the answer (default "
                             f"{DEFAULT_TIMEOUT:g}, at most {MAX_TIMEOUT:g})")
    parser.add_argument("-h", "--help", action=_PrintDoc, help="show the help text")
    if not suppress:
        parser.add_argument("--version", action="version", version=f"coschedctl {__version__}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; or (``only``) of that one alone ("": of none),
    which raises _Trial on any error: a fraction of the work (see _parse)."""
    cls = _Parser if only is None else _TrialParser
    parser = cls(prog="coschedctl", usage=USAGE, add_help=False, formatter_class=_formatter)
    _add_global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", prog="coschedctl")
    for cmd in COMMANDS:
        if only is not None and cmd.name != only:
            continue
        p = sub.add_parser(cmd.name, help=cmd.help, add_help=False, formatter_class=_formatter)
        _add_global_options(p, suppress=True)
        for name, kwargs in cmd.args:
            p.add_argument(name, **kwargs)
    return parser


# -- main -------------------------------------------------------------------------

# -- shell completion -------------------------------------------------------------

def _complete_from(cmd: str, key: str) -> Callable[..., list[str]]:
    """An argcomplete completer: the names (and ids) the daemon lists for ``cmd``."""
    def complete(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
        if getattr(parsed_args, "host", None):
            return []   # no ssh round trip on every tab
        path = getattr(parsed_args, "socket", None) or default_socket_path()
        try:
            rows = call(path, cmd, {}, 2.0).get(key) or []
        except (Unreachable, ControlError, AttributeError):
            return []
        words = [str(r.get("name")) for r in rows] + (
            [str(r.get("id")) for r in rows] if key == "tasks" else [])
        return [w for w in dict.fromkeys(words) if w.startswith(prefix)]
    return complete


def _autocomplete(parser: argparse.ArgumentParser) -> None:
    """Answer the shell's completion request (the scripts in completions/ set
    _ARGCOMPLETE) and exit. argcomplete is imported only then: a normal run pays
    nothing for completion."""
    import argcomplete
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for p in sub.choices.values():
        for action in p._actions:
            if action.dest == "task":
                action.completer = _complete_from("status", "tasks")  # type: ignore[attr-defined]
            elif action.dest == "job":
                action.completer = _complete_from("jobs", "jobs")  # type: ignore[attr-defined]
    argcomplete.autocomplete(parser, always_complete_options=False)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    as_json = "--json" in argv
    _Parser.last_error = None
    if "_ARGCOMPLETE" in os.environ:
        _autocomplete(build_parser())
    try:
        ns = _parse(argv)
    except SystemExit as exc:  # argparse: --help or --version (0), or a usage error (2)
        code = exc.code if isinstance(exc.code, int) else EXIT_USAGE
        if code == EXIT_USAGE and as_json:
            print_json_error("usage", _Parser.last_error or "usage error")
        return code
    if ns.command is None:
        print(f"usage: {USAGE}\ncoschedctl: no command given (see --help)", file=sys.stderr)
        if ns.json:
            print_json_error("usage", "no command given")
        return EXIT_USAGE
    for stream in (sys.stdout, sys.stderr):  # a terminal that cannot show a character
        stream.reconfigure(errors="backslashreplace")  # gets \xNN, never an exception
    cmd = _BY_NAME[ns.command]
    if ns.host is not None:
        return _remote(ns, cmd, sys.argv[1:] if argv is None else argv)
    path = ns.socket or default_socket_path()
    try:
        if cmd.run is not None:
            return cmd.run(ns, path)
        if cmd.follows(ns):
            return _follow(cmd, ns, path)
        return _once(cmd, ns, path)
    except KeyboardInterrupt:  # Ctrl-C ends a follow, or top
        return EXIT_OK
    except BrokenPipeError:  # | head: the reader has all it wanted
        sys.stderr = None  # no "Exception ignored" noise at exit
        return EXIT_OK
    except Unreachable as exc:
        return fail(ns.json, "unreachable", f"cannot reach coschedd at {path}: {exc}",
                    EXIT_UNREACHABLE, plain=f"cannot reach coschedd at {escape(path)}: "
                                            f"{escape(str(exc))}")
    except ControlError as exc:
        return fail(ns.json, exc.code, exc.message, EXIT_REFUSED)


def _parse(argv: list[str]) -> argparse.Namespace:
    """Parse with the parser of the command the arguments seem to name; should that
    fail, or find another command (the word was an option's value), parse again
    with the whole parser, which prints the error. One parser and its checks either
    way: a command line the one parser takes, the whole parser takes the same way."""
    guess = next((arg for arg in argv if arg in _BY_NAME), "")  # "": no command (--version)
    try:
        ns = build_parser(only=guess).parse_args(argv)
        if ns.command == (guess or None):
            return ns
    except _Trial:
        pass
    return build_parser().parse_args(argv)


def _remote(ns: argparse.Namespace, cmd: Cmd, argv: list[str]) -> int:
    """The command on ns.host through ssh (cosched.remote); its result rendered here."""
    from . import remote
    try:
        code, result, err = remote.run_remote(ns.host, remote.strip_host(argv), ns.timeout)
    except remote.RemoteError as exc:
        return fail(ns.json, "unreachable", f"cannot reach {ns.host}: {exc}", EXIT_UNREACHABLE,
                    plain=f"cannot reach {escape(ns.host)}: {escape(str(exc))}")
    if err.strip():
        print(escape_lines(err.rstrip("\n")), file=sys.stderr)
    return code if code != EXIT_OK else _print_result(ns, cmd, result)


def _once(cmd: Cmd, ns: argparse.Namespace, path: str) -> int:
    args = cmd.build(ns)
    if args.get("pages"):
        code = _paged(cmd, ns, path, args)
        if code is not None:
            return code
        del args["pages"]   # a daemon from before status "pages" (upgraded, not restarted)
    line = call_line(path, cmd.method or cmd.name, args, ns.timeout)
    for arg in ("columns", "limit"):
        if arg in args and _refused(line, arg):
            # a daemon from before status "columns" or "limit" (upgraded, not yet
            # restarted): objects, or every row, cut here
            del args[arg]
            line = call_line(path, cmd.method or cmd.name, args, ns.timeout)
    # A big answer is a million objects and no cycles: the cyclic collector would walk
    # them again and again while they are made, for nothing (coschedctl exits next).
    gc.disable()
    view = cmd.view(ns) if cmd.view is not None else None
    if ns.json and view is None and (raw := result_text(line)) is not None:
        _write_raw([raw])
        return EXIT_OK
    return _print_result(ns, cmd, decode(line), view)


_OK_PREFIX = b'{"id":1,"ok":true,"result":'   # how coschedd answers request 1 (compact)
_PAGE_PREFIX = b'{"id":1,"ok":true,"stream":'  # ... and sends a page of that answer


def _paged(cmd: Cmd, ns: argparse.Namespace, path: str, args: dict[str, Any]) -> int | None:
    """A status asked for in pages: each page becomes the table's cells (with --json:
    is checked and kept as it came) while the daemon makes the next, on the other
    core. None: the daemon does not know pages."""
    gc.disable()   # (see _once)
    pages = _JsonPages() if ns.json else _TablePages()
    try:
        line = call_pages(path, cmd.method or cmd.name, args, ns.timeout, pages.add)
        if not pages.count and (_refused(line, "pages") or _refused(line, "columns")):
            return None
        result = decode(line)
        if not pages.count and not (isinstance(result, dict) and "tasks" in result):
            return _print_result(ns, cmd, result)   # one line, as without pages
        pages.finish(result)
    except (AttributeError, TypeError, ValueError, KeyError, OverflowError) as exc:
        print(f"coschedctl: the daemon's answer has an unexpected shape ({type(exc).__name__})",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    return EXIT_OK


def call_pages(path: str, cmd: str, args: dict[str, Any], timeout: float,
               on_page: Callable[[bytes], None]) -> bytes:
    """Send a request answered in pages (status "pages"): ``on_page`` gets each page's
    line as it comes; the final line is returned undecoded. ``timeout`` bounds the whole
    answer, as for call_line. Raises ``Unreachable``."""
    deadline = time.monotonic() + timeout
    with _asking(path, cmd, args, timeout, deadline) as sock:
        reader = _Lines(sock)
        while (line := reader.next(deadline)).startswith(_PAGE_PREFIX):
            on_page(line)
        return line


def _page_rows(line: bytes) -> list:
    """The rows a page line carries."""
    page = protocol.decode_response(line, fastjson.loads)   # (ValueError if not JSON)
    if not page.item or not isinstance(page.result, list):
        raise TypeError("a page that is not a list of rows")
    return page.result


class _TablePages:
    """The table of a paged status, made as the pages come."""

    def __init__(self) -> None:
        self.table = TaskTable()
        self.count = 0   # pages taken

    def add(self, line: bytes) -> None:
        self.table.add(_page_rows(line))
        self.count += 1

    def finish(self, result: dict) -> None:
        self.table.add(result["tasks"])
        print(render_status(result, self.table))


class _JsonPages:
    """--json of a paged status: the rows of each page kept as they came when they are
    what result_text would print as it came (JSON, ASCII without DEL); from the first
    page that is not, every page is read and the whole result written anew."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []   # the rows of each clean page, without brackets
        self.rows: list | None = None  # all rows, once a page was not clean
        self.count = 0

    def add(self, line: bytes) -> None:
        self.count += 1
        item = line[len(_PAGE_PREFIX):-1] if line.endswith(b"}") else b""
        if self.rows is None and _clean_rows(item):
            if body := item[1:-1].strip():   # (an empty page adds no comma)
                self.parts.append(body)
            return
        if self.rows is None:
            self.rows = [row for part in self.parts for row in fastjson.loads(b"[" + part + b"]")]
            self.parts = []
        self.rows += _page_rows(line)

    def finish(self, result: dict) -> None:
        if not isinstance(result["tasks"], list):
            raise TypeError("the tasks are not a list")
        if self.rows is not None:
            result["tasks"] = self.rows + result["tasks"]
            print(json_text(result, sys.stdout.encoding))
            return
        encoding = sys.stdout.encoding or "utf-8"
        out, sep = [b"{"], b""
        for key, value in result.items():
            out += [sep, (json_text(key, encoding) + ":").encode(encoding)]
            if key == "tasks":
                rows = [*self.parts, json_text(value, encoding)[1:-1].encode(encoding)] \
                    if value else self.parts
                out += [b"[", b",".join(rows), b"]"]
            else:
                out.append(json_text(value, encoding).encode(encoding))
            sep = b","
        out.append(b"}")
        _write_raw(out, encoding)


def _clean_rows(item: bytes) -> bool:
    """Whether a page's item is a JSON array that may be printed as it came: JSON that
    begins with [ and ends with ] is one array, its elements between them."""
    if not (item.startswith(b"[") and item.endswith(b"]") and item.isascii()) \
            or b"\x7f" in item:
        return False
    try:
        fastjson.check(item, part_of_more=True)
    except (ValueError, RecursionError):
        return False
    return True


def _refused(line: bytes, arg: str) -> bool:
    """Whether the answer is the daemon refusing an argument it does not know."""
    return (len(line) < 4096 and not line.startswith(_OK_PREFIX)
            and f"unknown argument '{arg}'".encode() in line)


def result_text(line: bytes) -> bytes | None:
    """The result of a success answer as the daemon wrote it, when --json can print
    it as it came: the line is the usual envelope around it, it is JSON, and it is
    ASCII without DEL (so nothing in it needs escaping for a terminal, and any
    output encoding carries it). That is what json_text would write, byte for byte,
    without decoding and encoding 40 MB again. None: decode and encode."""
    if not (line.startswith(_OK_PREFIX) and line.endswith(b"}")):
        return None
    raw = line[len(_OK_PREFIX):-1]
    if not raw.isascii() or b"\x7f" in raw:
        return None
    try:
        fastjson.check(raw)
    except (ValueError, RecursionError):
        return None   # decode() says what is wrong with it
    return raw


def _write_raw(parts: list[bytes], encoding: str = "ascii") -> None:
    """Write ``parts`` (text in ``encoding``) and a newline to stdout as they are."""
    out = getattr(sys.stdout, "buffer", None)
    if out is None:   # a text-only stdout
        print(b"".join(parts).decode(encoding))
        return
    sys.stdout.flush()
    out.writelines(parts)
    out.write(b"\n")
    out.flush()


def _print_result(ns: argparse.Namespace, cmd: Cmd, result: Any,
                  view: Callable[[Any], tuple[Any, str]] | None = None) -> int:
    try:
        note = ""
        if view is not None:
            result, note = view(result)
        print(json_text(result, sys.stdout.encoding) if ns.json else cmd.render(result) + note)
    except (AttributeError, TypeError, ValueError, KeyError, OverflowError) as exc:
        print(f"coschedctl: the daemon's answer has an unexpected shape ({type(exc).__name__}); "
              "--json prints it as it came", file=sys.stderr)
        return EXIT_UNREACHABLE
    return EXIT_OK


def _follow(cmd: Cmd, ns: argparse.Namespace, path: str) -> int:
    """Print each item of a stream as it comes (--json: one JSON object per line)."""
    def show(item: Any) -> None:
        text = json_line(item, sys.stdout.encoding) if ns.json else _shape_safe(cmd.stream, item)
        print(text, flush=True)

    result = follow(path, cmd.method or cmd.name, cmd.build(ns), ns.timeout, show)
    end = json_line(result, sys.stdout.encoding) if ns.json else render_ended(result)
    if end is not None:
        print(end, flush=True)
    return EXIT_OK


def _shape_safe(render: Callable[[Any], str], item: Any) -> str:
    try:
        return render(item)
    except (AttributeError, TypeError, ValueError, KeyError, OverflowError):
        return f"(unexpected item) {fmt_json(item)}"


def fail(as_json: bool, code: str, message: str, exit_code: int, plain: str | None = None) -> int:
    """Report an error as text on stderr, and with --json also as JSON on stdout (where
    a script reads the answer; stderr stays as it is without --json)."""
    if as_json:
        print_json_error(code, message)
    text = plain if plain is not None else f"{escape(code)}: {escape(message)}"
    print(f"coschedctl: {text}", file=sys.stderr)
    return exit_code


def print_json_error(code: str, message: str) -> None:
    print(json_text({"ok": False, "error": {"code": code, "message": message}},
                    sys.stdout.encoding))


def json_text(result: Any, encoding: str | None) -> str:
    """The result as compact JSON (the C encoder: fast for a million rows): exact, and
    safe on a terminal (see cosched.terminal); all ASCII when the output's encoding
    cannot carry the text otherwise."""
    text = escape_json(fastjson.dumps(result))
    if not text.isascii():
        try:
            text.encode(encoding or "utf-8")
        except (UnicodeEncodeError, LookupError):
            return json.dumps(result, separators=_COMPACT)  # ensure_ascii: \uNNNN escapes only
    return text


_COMPACT = (",", ":")


def json_line(result: Any, encoding: str | None) -> str:
    """Like json_text, on one line (a streamed item)."""
    return json_text(result, encoding)


if __name__ == "__main__":
    sys.exit(main())
