"""Logging setup: structlog to stderr, console lines on a terminal, JSON lines otherwise.

JSON lines are what journald and log shippers want; each line of a job carries its
``task`` and ``id`` because the job's logger is bound to them. JSON escapes control
characters itself; the console renderer is wrapped by ``safe_console`` so that task
names, values and error texts chosen by job authors cannot write escape sequences
or fake lines on the operator's terminal (see cosched.terminal).

The level and the format can change while the daemon runs (a reload): loggers
are created once and kept (module loggers, each task's bound logger), so both
are read at each call from this module's state, not baked into the loggers.
Records of tasks are also handed to a capture hook (``set_capture``, the
per-task buffers of ``cosched.tasklog``) after the level check, before rendering.
"""

from __future__ import annotations

import logging
import sys

import structlog

from .terminal import escape, escape_lines

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


_MULTILINE = frozenset({"exception", "stack"})  # tracebacks keep their line breaks


def _safe_value(key: str, value: object) -> object:
    if value is None or type(value) in (bool, int, float):  # exact: no custom __repr__
        return value
    if not isinstance(value, str):
        try:
            value = repr(value)  # what the console renderer would show
        except Exception:  # a broken __repr__ must not lose the log line
            value = f"<unrepresentable {type(value).__name__}>"
    return escape_lines(value) if key in _MULTILINE else escape(value)


def safe_console(renderer):
    """A console renderer that escapes every key and value before ``renderer`` sees
    them (it adds its own colour codes after)."""
    def render(logger, method_name, event_dict):
        return renderer(logger, method_name, {escape(str(k)): _safe_value(k, v)
                                              for k, v in event_dict.items()})
    return render


_METHOD_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "msg": logging.INFO,
                  "warning": logging.WARNING, "warn": logging.WARNING,
                  "error": logging.ERROR, "exception": logging.ERROR,
                  "critical": logging.CRITICAL, "fatal": logging.CRITICAL}


class _State:
    """What every logger reads at each call; changed by ``reconfigure``."""

    threshold = logging.INFO
    renderer = structlog.processors.JSONRenderer()
    stream = sys.stderr
    capture = None   # fn(event_dict) -> None, or None


class _Logger(structlog.make_filtering_bound_logger(logging.DEBUG)):   # type: ignore[misc]
    """Reads the level in force before a record is made: a call below it costs a
    comparison, not a dict and a pass through the processors (a stop of 100,000
    tasks makes 100,000 "task killed" calls; at level warning they were 5% of it).
    The processors' _level_filter stays for the other methods (``log``)."""

    def debug(self, event: str, *args, **kw):
        if _State.threshold > logging.DEBUG:
            return None
        return super().debug(event, *args, **kw)

    def info(self, event: str, *args, **kw):
        if _State.threshold > logging.INFO:
            return None
        return super().info(event, *args, **kw)

    def warning(self, event: str, *args, **kw):
        if _State.threshold > logging.WARNING:
            return None
        return super().warning(event, *args, **kw)

    msg, warn = info, warning


def _level_filter(logger, method_name, event_dict):
    if _METHOD_LEVELS.get(method_name, logging.INFO) < _State.threshold:
        raise structlog.DropEvent
    return event_dict


def _capture(logger, method_name, event_dict):
    if _State.capture is not None:
        _State.capture(event_dict)
    return event_dict


def _render(logger, method_name, event_dict):
    return _State.renderer(logger, method_name, event_dict)


def _renderer(fmt: str, stream):
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    if fmt == "console":
        return safe_console(structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    return structlog.processors.JSONRenderer()


def setup(fmt: str = "auto", level: str = "info", stream=None) -> None:
    """Configure structlog (and stdlib logging, which some modules use) once for the process.

    The daemon passes a ``cosched.logsink.LogSink``, whose writes never block or fail.
    """
    _State.stream = stream or sys.stderr
    structlog.configure(
        processors=[
            _level_filter,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _capture,
            _render,
        ],
        wrapper_class=_Logger,
        logger_factory=structlog.WriteLoggerFactory(_State.stream),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(stream=_State.stream, format="%(levelname)s %(name)s: %(message)s")
    reconfigure(fmt, level)


def reconfigure(fmt: str, level: str) -> None:
    """Change the format and the level of every logger, from the next record on."""
    _State.renderer = _renderer(fmt, _State.stream)
    _State.threshold = LEVELS[level]
    logging.getLogger().setLevel(LEVELS[level])


def set_capture(capture) -> None:
    """Hand every record that passes the level to ``capture(event_dict)`` (None: stop)."""
    _State.capture = capture
