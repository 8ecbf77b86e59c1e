"""``coschedctl top``: a live full-screen view of the daemon's tasks.

What it shows: a header with the daemon's version, pid, uptime, memory and
CPU, then one row per task, busiest first: the share of the last interval it
spent running (%BUSY), its busy time, state, steps, restarts and what it waits
on. ``q`` (or Ctrl-C) quits.

Where the figures come from: ``status`` on a short connection every
``REFRESH`` seconds (busy time and steps change without any event), and the
daemon's event stream (``events`` with follow) on one connection held open, so
a state change (started, suspended, failed, killed...) shows at once without
asking. The client waits for either with ``select`` on the event connection
and the keyboard, timed to the next refresh: no busy loop.

The screen is drawn with ``curses`` from the standard library, imported only
by this command; every other coschedctl command starts without it. When
stdout is not a terminal (a pipe, a file) there is nothing to refresh: one
table is printed, sorted the same way, and top exits. Everything the daemon
sent is escaped for the terminal (``cosched.terminal``) like every coschedctl
output.
"""

from __future__ import annotations

import select
import socket
import sys
import time
from typing import Any

from . import ctl, protocol

__all__ = ["main", "Model", "screen_lines"]

REFRESH = 1.0          # seconds between status refreshes
COLUMNS = ["ID", "NAME", "STATE", "%BUSY", "BUSY", "STEPS", "RESTARTS", "WAITING-ON"]


class Model:
    """The tasks as top knows them: the last status, updated by events in between."""

    def __init__(self) -> None:
        self.daemon: dict = {}
        self.tasks: dict[Any, dict] = {}    # id -> the task's row from status, updated
        self.share: dict[Any, float] = {}   # id -> % of the last interval spent busy
        self.at: float | None = None         # when the last status was taken
        self.last_event = ""
        self.error = ""

    def status(self, result: dict, now: float) -> None:
        """A new status answer: figures, and each task's share of the interval."""
        old, then = self.tasks, self.at
        self.daemon = result.get("daemon") or {}
        self.tasks = {t.get("id"): t for t in result.get("tasks") or [] if isinstance(t, dict)}
        self.share = {}
        for tid, t in self.tasks.items():
            before = old.get(tid, {}).get("busy")
            if then is not None and _number(t.get("busy")) and _number(before) and now > then:
                self.share[tid] = max(0.0, (t["busy"] - before) / (now - then) * 100)
        self.at, self.error = now, ""

    def event(self, e: dict) -> None:
        """A state change: the task's state now (a task new to us gets a row)."""
        if not isinstance(e, dict) or "dropped" in e:
            return
        self.last_event = ctl.render_event(e)
        tid = e.get("id")
        if "task" not in e or tid is None:
            return
        row = self.tasks.setdefault(tid, {"id": tid, "name": e.get("task"), "job": e.get("job")})
        if e.get("state"):
            row["state"] = e["state"]
        if e.get("event") == "started":
            row["waiting_on"] = None

    def rows(self) -> list[dict]:
        """Busiest first: share of the last interval, then busy time."""
        def key(t: dict) -> tuple:
            busy = t.get("busy")
            return (-self.share.get(t.get("id"), 0.0), -(busy if _number(busy) else 0.0),
                    str(t.get("id")))
        return sorted(self.tasks.values(), key=key)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def header(model: Model) -> list[str]:
    d = model.daemon
    cpu = ctl.fmt_duration(d.get("cpu_time"))
    if _number(d.get("cpu_percent")):
        cpu += f" ({d['cpu_percent']:.1f}%)"
    alive = sum(t.get("state") in ("starting", "running", "waiting", "suspended", "restarting")
                for t in model.tasks.values())
    return [f"coschedd {ctl._text(d.get('version'))}  pid {ctl._text(d.get('pid'))}  "
            f"up {ctl.fmt_duration(d.get('uptime'))}  mem {ctl.fmt_bytes(d.get('rss'))}  "
            f"cpu {cpu}  tasks {alive} alive, {len(model.tasks)} listed"]


def table_lines(model: Model) -> list[str]:
    rows = [[t.get("id"), t.get("name"), t.get("state"),
             f"{model.share[t.get('id')]:.1f}" if t.get("id") in model.share else "-",
             ctl.fmt_duration(t.get("busy")), t.get("steps"), t.get("restarts"),
             t.get("waiting_on")] for t in model.rows()]
    return ctl.table(COLUMNS, rows).split("\n")


def screen_lines(model: Model, width: int, height: int) -> list[str]:
    """What the screen shows, cut to its size."""
    lines = header(model)
    lines.append(f"q: quit   last event: {model.last_event}" if model.last_event else "q: quit")
    lines.append(f"! {model.error}" if model.error else "")
    lines += table_lines(model)
    return [line[:max(width - 1, 0)] for line in lines[:height]]


# -- talking to the daemon ------------------------------------------------------

def _status(path: str, timeout: float) -> dict:
    return ctl.call(path, "status", {}, min(timeout, 10.0))


class _EventConnection:
    """A held-open ``events`` follow; ``read`` returns the events that have arrived."""

    def __init__(self, path: str, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            ctl._connect(self.sock, path, timeout)
            self.sock.sendall(protocol.encode(protocol.make_request(
                1, "events", {"lines": 0, "follow": True})))
        except BaseException:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.buf = bytearray()

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> tuple[list[dict], bool]:
        """The events received so far, and whether the connection is still open."""
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return [], True
        except OSError:
            return [], False
        self.buf += data
        events = []
        while b"\n" in self.buf:
            end = self.buf.index(b"\n")
            line, self.buf = bytes(self.buf[:end]), self.buf[end + 1:]
            try:
                response = protocol.decode_response(line)
            except (ValueError, protocol.ControlError):
                return events, False
            if not response.item:
                return events, False
            events.append(response.result)
        return events, bool(data)

    def close(self) -> None:
        self.sock.close()


# -- the screen ---------------------------------------------------------------------

def main(path: str, timeout: float, as_json: bool = False) -> int:
    """The live view on a terminal; otherwise one table (or, with --json, the status)."""
    if as_json or not sys.stdout.isatty():
        model = Model()
        model.status(_status(path, timeout), time.monotonic())
        if as_json:
            print(ctl.json_text({"daemon": model.daemon, "tasks": model.rows()},
                                sys.stdout.encoding))
        else:
            print("\n".join(header(model) + [""] + table_lines(model)))
        return ctl.EXIT_OK
    import curses  # only here: the other commands never load it
    _status(path, timeout)  # fail before taking over the screen if the daemon is not there
    return curses.wrapper(_run, curses, path, timeout)


def _run(screen: Any, curses: Any, path: str, timeout: float) -> int:
    curses.curs_set(0)
    screen.nodelay(True)
    model, events = Model(), None
    next_status = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= next_status:
            events = _refresh(model, events, path, timeout, now)
            next_status = now + REFRESH
        _draw(screen, curses, model)
        waiting = [sys.stdin] + ([events] if events is not None else [])
        readable, _, _ = select.select(waiting, [], [], max(0.0, next_status - time.monotonic()))
        if events is not None and events in readable:
            got, open_ = events.read()
            for e in got:
                model.event(e)
            if not open_:
                events.close()
                events = None
        if sys.stdin in readable and _quit_key(screen, curses):
            if events is not None:
                events.close()
            return ctl.EXIT_OK


def _refresh(model: Model, events: _EventConnection | None, path: str, timeout: float,
             now: float) -> _EventConnection | None:
    try:
        model.status(_status(path, timeout), now)
        if events is None:
            events = _EventConnection(path, timeout)
    except (ctl.Unreachable, protocol.ControlError, OSError) as exc:
        model.error = f"coschedd at {path}: {exc}"
    return events


def _quit_key(screen: Any, curses: Any) -> bool:
    while (key := screen.getch()) != -1:
        if key in (ord("q"), ord("Q")):
            return True
    return False


def _draw(screen: Any, curses: Any, model: Model) -> None:
    height, width = screen.getmaxyx()
    screen.erase()
    for y, line in enumerate(screen_lines(model, width, height)):
        try:
            screen.addstr(y, 0, line)
        except curses.error:  # the last cell of the screen cannot be written
            pass
    screen.refresh()


if __name__ == "__main__":  # for trying it out: python -m cosched.top SOCKET
    sys.exit(main(sys.argv[1], 10.0))
