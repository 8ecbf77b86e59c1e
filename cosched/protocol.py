"""The control protocol spoken on coschedd's unix socket, shared by server and clients.

Framing: newline-delimited JSON over a unix stream socket, UTF-8, one object per
line in each direction. A client may send several requests on one connection; they
are answered in order. Blank lines are ignored by the server.

Request::

    {"id": <int|str>, "cmd": "<name>", "args": {...}}      # "args" is optional

Responses::

    {"id": ..., "ok": true, "result": ...}
    {"id": ..., "ok": false, "error": {"code": "<code>", "message": "<human text>"}}

A request without a usable id is answered with ``"id": null``.

Streams. A request that follows something (``logs`` and ``events`` with
``"follow": true``) is answered by several lines with the request's id: one per
item as it happens, then one final line that ends the stream::

    {"id": ..., "ok": true, "stream": <item>}     # zero or more
    {"id": ..., "ok": true, "result": <why it ended>}

A client tells them apart by the key: ``stream`` lines never carry ``result``.
An error detected before the stream starts (an unknown task) is the usual single
error line. The stream ends when what is followed ends (the task ended: the
result says how, e.g. ``{"ended": "finished", "error": null}``), or when the
daemon stops (``{"ended": "coschedd is stopping"}``); the client ends it early by
closing the connection or by sending its next request, which is answered after
the final line (whose result is then null). Items the
client was too slow to take are dropped, not queued without bound: the stream
then carries ``{"dropped": N}`` where they were missed. A client that takes no
line within the daemon's ``control.send_timeout`` is disconnected. Every other
request is answered by exactly one line, except a long ``status`` asked for with
``"pages": true``: its rows then come as stream lines of up to 500 rows each
(``"stream": [row, ...]``), and the final line is the result with an empty
``tasks`` list (the rows are those of the stream lines, in order). A client can
read and check each page while the daemon makes the next; an answer short
enough for one piece is the usual single line.

Error codes (stable; clients may branch on them):

``bad-request``
    Not JSON, not an object, missing or invalid ``id`` or ``cmd``, ``args`` not an
    object, an unknown, missing or mistyped argument. The message names the argument
    and the expected type. The server closes the connection after answering one.
``too-large``
    The request line is longer than the server's limit; the connection is closed.
``unknown-command``
    ``cmd`` names no command; the message lists the valid ones.
``no-such-task``
    No task has that id or name.
``no-such-job``
    No job has that name.
``not-suspended``
    ``resume`` of a task that is not suspended.
``not-alive``
    ``kill`` of a task that has already ended (finished or failed; killing a
    killed task again is no error), or ``restart`` of an ended task that was
    spawned by another (restart that one).
``forbidden``
    The peer's credentials are not allowed: on connecting (no access at all; the
    connection is closed), or for one command that needs control access when the
    peer has read access only (the connection stays open). The message says
    which access is needed and which config keys grant it.
``job-disabled``
    ``start`` of a job whose config says ``enabled = false``, without ``force``.
``busy``
    Too many connections at once; the connection is closed.
``timeout``
    The daemon gave up waiting on something.
``config-error``
    ``reload`` found the config file invalid or unreadable; the message is the
    error, and the configuration in force is unchanged.
``internal``
    A bug in the daemon; the message carries the exception's type and text.

Commands (``COMMANDS`` is the single table of them), with the access each needs::

    ping    read     {}                          -> {"pong": true, "pid": int}
    status  read     {task?: str|int, job?: str, state?: str}  daemon and task overview
    show    read     {task: str|int}             one task in detail (``config`` only
                                                 for peers with control access)
    jobs    read     {}                          list the jobs
    metrics read     {}                          -> {"text": str, "content_type": str}:
                                                 the Prometheus text exposition
    resume  control  {task: str|int, values: list = [], timeout: number = 30}
    kill    control  {task: str|int}
    start   control  {job: str, force: bool = false}
    reload  control  {}                          re-read the config file, rescan the
                                                 jobs folder
    logs    read     {task: str|int, lines: int = 10, follow: bool = false}
                                                 a task's (or a job's) log records and
                                                 output; a stream with follow
    events  read     {lines: int = 10, follow: bool = false, job?: str}
                                                 recent state changes; a stream with follow
    tree    read     {task?: str|int, job?: str}  tasks nested under their parents
    restart control  {task: str|int}             a task, or every task of a job, killed
                                                 (cleanup runs) and started again
    history read     {target?: str|int, since?: number, limit: int = 50}
                                                 recorded events of a task (an id or a
                                                 name) or a job, or of all, oldest first:
                                                 {"events": [...], "more": bool,
                                                 "recording": bool}

A task is an id (an integer from 0 to 2**63 - 1) or a name; a name made of ASCII
digits is taken as an id. ``timeout`` is a number of seconds from 0 to 86400.
``since`` is a time in seconds since the epoch; ``limit`` an integer from 1 to
MAX_HISTORY.
A command added later needs control access unless its entry says otherwise.

This module holds the error codes, ``ControlError``, the command table, request
validation and the encoding helpers. It does no I/O.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterable

# typing costs a small coschedctl command 4-5 ms to import (cosched.records)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NamedTuple
else:
    from .records import NamedTuple

# orjson (the optional "fast" extra) encodes the rows of a long status about 5x faster.
# Looked for on first use, as coschedctl imports this module and never needs it here.
_orjson: Any = False   # the module; None: not installed; False: not looked for yet

BAD_REQUEST = "bad-request"
TOO_LARGE = "too-large"
UNKNOWN_COMMAND = "unknown-command"
NO_SUCH_TASK = "no-such-task"
NO_SUCH_JOB = "no-such-job"
NOT_SUSPENDED = "not-suspended"
NOT_ALIVE = "not-alive"
FORBIDDEN = "forbidden"
JOB_DISABLED = "job-disabled"
BUSY = "busy"
TIMEOUT = "timeout"
CONFIG_ERROR = "config-error"
INTERNAL = "internal"

ERROR_CODES = frozenset({
    BAD_REQUEST, TOO_LARGE, UNKNOWN_COMMAND, NO_SUCH_TASK, NO_SUCH_JOB, NOT_SUSPENDED,
    NOT_ALIVE, FORBIDDEN, JOB_DISABLED, BUSY, TIMEOUT, CONFIG_ERROR, INTERNAL,
})

# Access levels, lowest first. Root and the daemon's own user always have CONTROL.
READ = "read"
CONTROL = "control"
LEVELS = (READ, CONTROL)

MAX_TASK_ID = 2**63 - 1  # ids are counters; a bigger number names no task
MAX_WAIT = 86400.0       # longest resume timeout, in seconds
MAX_LINES = 100_000      # most records or events one logs/events request may ask for
MAX_HISTORY = 100_000    # most events one history answer holds
MAX_TIME = 2.0**40       # latest ``since`` accepted (seconds since the epoch; year 36812)

_MAX_DEPTH = 100  # nesting kept by the fallback encoder; deeper parts become repr strings


class ControlError(Exception):
    """An error answer: ``code`` is one of the codes above, ``message`` is for humans.

    ``request_id`` is the id of the request it answers, when one was readable.
    """

    def __init__(self, code: str, message: str, *, request_id: int | str | None = None):
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.request_id = request_id

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class Arg(NamedTuple):
    """Schema of one command argument."""

    types: tuple[type, ...]
    required: bool = False
    default: Any = None
    valid: Callable[[Any], bool] | None = None  # extra check once the type is right
    expected: str | None = None  # wording for errors; derived from ``types`` if None


class Command(NamedTuple):
    """One entry of ``COMMANDS``: the argument schema, a one-line help, the access
    level it needs (CONTROL unless said otherwise: a new command is mutating until
    someone decides it is not), the result fields withheld from peers below
    CONTROL (they may hold secrets, like a job's config table), and the name of the
    backend method that serves it when that is not the command's name."""

    args: dict[str, Arg]
    help: str
    level: str = CONTROL
    private: tuple[str, ...] = ()
    method: str | None = None


def _seconds_in_range(value: int | float) -> bool:
    # compare before any float conversion: math.isfinite(10**400) raises OverflowError
    return 0 <= value <= MAX_WAIT  # NaN compares false; +inf is above MAX_WAIT


def _task_ref(value: str | int) -> bool:
    return isinstance(value, str) or 0 <= value <= MAX_TASK_ID


_TASK_EXPECTED = f"a string or an integer (a task name, or an id from 0 to {MAX_TASK_ID})"
_TASK = Arg((str, int), required=True, valid=_task_ref, expected=_TASK_EXPECTED)

_LINES = Arg((int,), default=10, valid=lambda n: 0 <= n <= MAX_LINES,
             expected=f"an integer from 0 to {MAX_LINES}")

# A task's state as reports show it ("waiting": running, but blocked in the event loop).
TASK_STATES = ("starting", "running", "waiting", "suspended", "restarting",
               "finished", "failed", "killed")

# The fields of a task's row in a status answer, in this order ("columns" asks for
# some of them as an array per task: half the bytes, and quicker to read than objects).
ROW_FIELDS = ("id", "name", "job", "state", "waiting_on", "busy", "steps", "switches", "age",
              "restarts", "yielded", "error")


def _row_fields(value: list) -> bool:
    return 0 < len(value) <= len(ROW_FIELDS) and all(
        type(f) is str and f in ROW_FIELDS for f in value)


COMMANDS: dict[str, Command] = {
    "ping": Command({}, "Check that the daemon answers.", READ),
    "status": Command({
        "task": Arg((str, int), valid=_task_ref, expected=_TASK_EXPECTED),
        "job": Arg((str,)),
        "state": Arg((str,), valid=TASK_STATES.__contains__,
                     expected=f"one of {', '.join(TASK_STATES)}"),
        "columns": Arg((list,), valid=_row_fields,
                       expected=f"a non-empty list of row fields ({', '.join(ROW_FIELDS)})"),
        "pages": Arg((bool,), default=False),
        "limit": Arg((int,), valid=lambda n: 1 <= n <= MAX_TASK_ID,
                     expected=f"an integer from 1 to {MAX_TASK_ID}"),
    }, "Daemon overview and all tasks (or a job's, or those in one state), or one task.", READ),
    "show": Command({"task": _TASK}, "One task in detail: stack, traceback, yielded values.",
                    READ, private=("config",)),
    "jobs": Command({}, "List the known jobs and their state, each with its top-level tasks "
                        "(tasks) and how many of its tasks are alive (num_tasks, spawned "
                        "children included).", READ),
    "metrics": Command({}, "Prometheus metrics of the daemon, its jobs and tasks, as text.",
                       READ),
    "resume": Command({
        "task": _TASK,
        "values": Arg((list,), default=[]),
        "timeout": Arg((int, float), default=30, valid=_seconds_in_range,
                       expected=f"a number from 0 to {MAX_WAIT:g}"),
    }, "Resume a suspended task with values; wait until it yields, ends or the timeout."),
    "kill": Command({"task": _TASK}, "Cancel a task."),
    "start": Command({"job": Arg((str,), required=True), "force": Arg((bool,), default=False)},
                     "Start a new task for a job (force: even one with enabled = false)."),
    "reload": Command({}, "Re-read the config file and rescan the jobs folder: load new and "
                          "changed jobs, drop removed ones, restart jobs whose config changed."),
    "logs": Command({
        "task": Arg((str, int), required=True, valid=_task_ref,
                    expected=f"a job name, or a task ({_TASK_EXPECTED})"),
        "lines": _LINES,
        "follow": Arg((bool,), default=False),
    }, "A task's (or every task of a job's) last log records and printed lines; "
       "follow: then new ones as they come, until the task ends.", READ),
    "events": Command({
        "lines": _LINES,
        "follow": Arg((bool,), default=False),
        "job": Arg((str,)),
    }, "The last state changes of tasks and jobs (or of one job's); follow: then new "
       "ones as they happen.", READ, method="event_history"),
    "tree": Command({
        "task": Arg((str, int), valid=_task_ref, expected=_TASK_EXPECTED),
        "job": Arg((str,)),
    }, "The tasks nested under the tasks that spawned them, with their states.", READ),
    "restart": Command({"task": Arg((str, int), required=True, valid=_task_ref,
                                    expected=f"a job name, or a task ({_TASK_EXPECTED})")},
                       "Kill a task (its cleanup runs) and start it again with the same "
                       "task.state; a job name: each of its tasks, or a new one if none runs."),
    "history": Command({
        "target": Arg((str, int), valid=_task_ref,
                      expected=f"a job or task name, or a task id from 0 to {MAX_TASK_ID}"),
        "since": Arg((int, float), valid=lambda v: 0 <= v <= MAX_TIME,
                     expected="a time in seconds since the epoch"),
        "limit": Arg((int,), default=50, valid=lambda v: 1 <= v <= MAX_HISTORY,
                     expected=f"an integer from 1 to {MAX_HISTORY}"),
    }, "Recorded history: starts, suspensions and resumptions with values, ends, errors.",
        READ),
}


class Request(NamedTuple):  # a NamedTuple, not a dataclass: coschedctl starts faster
    """A validated request: ``args`` has every argument of the command, defaults filled in."""

    id: int | str
    cmd: str
    args: dict[str, Any]


class Response(NamedTuple):
    """A successful response as read by a client. ``item`` is true for a line of a
    stream (then ``result`` holds the item and more lines follow)."""

    id: int | str | None
    result: Any
    item: bool = False


# -- type wording -----------------------------------------------------------------

_TYPE_WORDS = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               list: "an array", dict: "an object", type(None): "null"}


def json_type_name(value: Any) -> str:
    """How a decoded JSON value is called in error messages ("an integer", ...)."""
    return _TYPE_WORDS.get(type(value), type(value).__name__)


def _expected(arg: Arg) -> str:
    if arg.expected:
        return arg.expected
    if set(arg.types) == {int, float}:
        return "a number"
    return " or ".join(_TYPE_WORDS[t] for t in arg.types)


def _is_instance(value: Any, types: tuple[type, ...]) -> bool:
    """isinstance, except that a JSON boolean is never taken for a number."""
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def _is_valid_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


# -- requests ---------------------------------------------------------------------

def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(line: bytes) -> Any:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ControlError(BAD_REQUEST, f"request is not valid UTF-8: {exc.reason} "
                                        f"at byte {exc.start}") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ControlError(BAD_REQUEST, f"request is not valid JSON: {exc}") from None


def validate_args(cmd: Any, args: Any) -> dict[str, Any]:
    """Check ``cmd`` and ``args`` against ``COMMANDS``; return the args with defaults.

    Raises ``ControlError`` with ``bad-request`` or ``unknown-command``.
    """
    if not isinstance(cmd, str):
        raise ControlError(BAD_REQUEST, f"'cmd' must be a string naming a command, got "
                                        f"{json_type_name(cmd)}")
    spec = COMMANDS.get(cmd)
    if spec is None:
        raise ControlError(UNKNOWN_COMMAND, f"unknown command {cmd!r}; valid commands: "
                                            f"{', '.join(sorted(COMMANDS))}")
    if not isinstance(args, dict):
        raise ControlError(BAD_REQUEST, f"'args' must be an object, got {json_type_name(args)}")
    unknown = sorted(set(args) - set(spec.args))
    if unknown:
        takes = ", ".join(spec.args) if spec.args else "no arguments"
        raise ControlError(BAD_REQUEST, f"unknown argument {unknown[0]!r} for {cmd!r}; "
                                        f"it takes: {takes}")
    return {name: _check_arg(cmd, name, arg, args) for name, arg in spec.args.items()}


def _check_arg(cmd: str, name: str, arg: Arg, args: dict[str, Any]) -> Any:
    if name not in args:
        if arg.required:
            raise ControlError(BAD_REQUEST, f"{cmd!r} needs argument {name!r} "
                                            f"({_expected(arg)})")
        import copy  # here, not at the top: coschedctl never needs it (its start-up)
        return copy.deepcopy(arg.default)
    value = args[name]
    if not _is_instance(value, arg.types) or (arg.valid is not None and not arg.valid(value)):
        raise ControlError(BAD_REQUEST, f"argument {name!r} of {cmd!r} must be "
                                        f"{_expected(arg)}, got {_describe(value)}")
    return value


def _describe(value: Any) -> str:
    """'an integer 3', 'a string "abc"', 'an array': type and a short rendering."""
    if isinstance(value, (list, dict)):
        return json_type_name(value)
    text = json.dumps(value)
    return f"{json_type_name(value)} {text if len(text) <= 40 else text[:37] + '...'}"


def decode_request(line: bytes) -> Request:
    """Parse and validate one request line (a trailing newline is allowed).

    Raises ``ControlError``; its ``request_id`` is the request's id when that was usable.
    """
    obj = _parse_json(line)
    if not isinstance(obj, dict):
        raise ControlError(BAD_REQUEST, f"a request must be a JSON object, got "
                                        f"{json_type_name(obj)}")
    rid = obj.get("id")
    if not _is_valid_id(rid):
        what = "missing" if "id" not in obj else f"got {json_type_name(rid)}"
        raise ControlError(BAD_REQUEST, f"'id' must be an integer or a string ({what})")
    try:
        args = validate_args(obj.get("cmd"), obj.get("args", {}))
    except ControlError as exc:
        exc.request_id = rid
        raise
    return Request(rid, obj["cmd"], args)


def make_request(id: int | str, cmd: str, args: dict[str, Any] | None = None) -> dict:
    """A request object, ready for ``encode``."""
    return {"id": id, "cmd": cmd, "args": args or {}}


# -- responses --------------------------------------------------------------------

def ok(id: int | str | None, result: Any) -> dict:
    """A success response."""
    return {"id": id, "ok": True, "result": result}


def stream_item(id: int | str, item: Any) -> dict:
    """One line of a stream (see the module docstring)."""
    return {"id": id, "ok": True, "stream": item}


def err(id: int | str | None, code: str, message: str) -> dict:
    """An error response."""
    return {"id": id, "ok": False, "error": {"code": code, "message": message}}


def decode_response(line: bytes, loads: Callable[[bytes], Any] | None = None) -> Response:
    """Parse a response line: a ``Response`` on success, ``ControlError`` on an error answer.
    ``loads`` reads the JSON (default: the standard library's).

    Raises ``ValueError`` when the line is not a well-formed response.
    """
    obj = json.loads(line.decode("utf-8")) if loads is None else loads(line)
    if not isinstance(obj, dict) or not isinstance(obj.get("ok"), bool):
        raise ValueError("response is not an object with a boolean 'ok'")
    if obj["ok"]:
        if "stream" in obj and "result" not in obj:
            return Response(obj.get("id"), obj["stream"], item=True)
        return Response(obj.get("id"), obj.get("result"))
    error = obj.get("error")
    if not isinstance(error, dict) or not isinstance(error.get("code"), str):
        raise ValueError("error response without an error code")
    raise ControlError(error["code"], str(error.get("message", "")), request_id=obj.get("id"))


# -- encoding ---------------------------------------------------------------------

def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except BaseException:  # a broken __repr__ must not break a response
        return f"<unrepresentable {type(value).__name__}>"


def _dumps(obj: Any, ascii_only: bool = False) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=ascii_only, allow_nan=False,
                      default=_safe_repr)


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, (bool, int, float)):
        return _dumps(_jsonable(key, 0, set()))
    return _safe_repr(key)


def _jsonable(value: Any, depth: int, active: set[int]) -> Any:
    """A copy of ``value`` that ``json.dumps`` accepts: odd keys, cycles, NaN and
    unrepresentable values become strings (or null for non-finite floats)."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        try:
            int.__repr__(value)  # very long ints exceed the str conversion limit
        except ValueError:
            return f"<int with {value.bit_length()} bits>"
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if not isinstance(value, (dict, list, tuple)):
        return _safe_repr(value)
    if depth >= _MAX_DEPTH or id(value) in active:
        return f"<{type(value).__name__} too deep or recursive>"
    active.add(id(value))
    try:
        if isinstance(value, dict):
            return {_json_key(k): _jsonable(v, depth + 1, active) for k, v in value.items()}
        return [_jsonable(v, depth + 1, active) for v in value]
    finally:
        active.discard(id(value))


def jsonable(value: Any) -> Any:
    """What ``encode`` puts on the wire for ``value``, as JSON types."""
    return _jsonable(value, 0, set())


def encode(obj: Any) -> bytes:
    """One compact JSON line. Never fails: values JSON cannot hold are rendered with
    ``repr``, non-finite floats become null, cycles and odd keys are replaced."""
    try:
        text = _dumps(obj)
    except (TypeError, ValueError, RecursionError):
        obj = _jsonable(obj, 0, set())
        text = _dumps(obj)
    try:
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:  # lone surrogates in a string: let JSON escape them
        return _dumps(obj, ascii_only=True).encode("ascii") + b"\n"


def private_path(socket: str) -> str:
    """The private socket beside the control socket ``socket``: mode 0600, so only root
    and the daemon's user may connect and no one else can fill its listen queue;
    coschedctl tries it first."""
    return socket + ".private"


def encode_plain(obj: Any) -> bytes:
    """``encode`` of what the daemon built itself from JSON types (dict, list or
    tuple, str, int, float, bool, None): status rows.

    orjson encodes it when installed. What it cannot encode (lone surrogates, ints
    beyond 64 bits, non-string keys) or would render otherwise than the standard
    library (subclasses, dataclasses, dates) falls back to ``encode``. Enums and
    UUIDs it renders by value without asking, so they must not be here: values
    that come from jobs go through ``jsonable`` first (see ``reports.values``).
    """
    fast = _orjson if _orjson is not False else orjson_module()
    if fast is not None:
        try:
            return fast.dumps(obj, default=_refuse, option=fast.OPT_APPEND_NEWLINE
                              | fast.OPT_PASSTHROUGH_SUBCLASS | fast.OPT_PASSTHROUGH_DATACLASS
                              | fast.OPT_PASSTHROUGH_DATETIME)
        except TypeError:   # orjson.JSONEncodeError is a TypeError
            pass
    return encode(obj)


def orjson_module() -> Any:
    """orjson, or None where it is not installed."""
    global _orjson
    if _orjson is False:
        try:
            import orjson
        except ImportError:
            orjson = None
        _orjson = orjson
    return _orjson


def _refuse(value: Any) -> Any:
    raise TypeError(type(value).__name__)


# -- answers produced in pieces -----------------------------------------------------

class Chunked:
    """A result whose one long list is rendered and sent a chunk at a time.

    On the wire it is an ordinary response line: ``{..."result": {**head, key: [...],
    **tail}}``. The server writes the pieces that ``pieces`` yields one by one, letting
    the event loop run between them, so a status of a million tasks neither stalls the
    loop nor holds the whole answer in memory, and a peer that stops reading is dropped
    after the send timeout with at most one chunk buffered. ``items`` is taken lazily,
    ``size`` at a time; a None in it is an item looked at and not taken, so an
    iterator that filters as it goes bounds each piece's work by what it looked at.
    """

    __slots__ = ("head", "key", "items", "render", "tail", "size", "paged")

    def __init__(self, head: dict, key: str, items: Iterable, render: Callable[[Any], Any],
                 tail: dict, size: int = 500, paged: bool = False) -> None:
        self.head, self.key, self.items, self.render = head, key, items, render
        self.tail, self.size = tail, size
        self.paged = paged   # sent as pages (see _pages): the client asked for them

    def pieces(self, request_id: int | str | None):
        """The response line in pieces (bytes), the last one ending in a newline."""
        if self.paged:
            yield from self._pages(request_id)
            return
        opening = encode(ok(request_id, {**self.head, self.key: []}))
        cut = opening.rindex(b"[]")   # `key: []` is the last member of the result
        yield opening[:cut + 1]
        sep = b""
        for part in self._parts():
            if part:
                yield sep + part[1:-2]   # without the brackets and the newline
                sep = b","
            else:
                yield part
        closing = encode(self.tail)[1:-2]
        yield b"]" + (b"," + closing if closing else b"") + b"}}\n"

    def _pages(self, request_id: int | str | None):
        """The answer as a stream: a line ``{"id":..,"ok":true,"stream":[item, ...]}`` per
        chunk, then the final line, the result with an empty list under ``key`` (the
        items are those of the stream lines, in order). A client can read and check
        each page while the next is made."""
        opening = encode(stream_item(request_id, []))
        cut = opening.rindex(b"[]")
        before, after = opening[:cut], opening[cut + 2:]
        for part in self._parts():
            yield before + part[:-1] + after if part else part
        yield encode(ok(request_id, {**self.head, self.key: [], **self.tail}))

    def _parts(self):
        """Each chunk rendered (a JSON array and a newline), or b"" where nothing of a
        look was taken (the loop runs before the next look)."""
        items = iter(self.items)
        while looked := list(itertools.islice(items, self.size)):
            chunk = [item for item in looked if item is not None]
            yield encode_plain(self.render(chunk)) if chunk else b""
