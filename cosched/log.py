"""Logging setup: structlog to stderr, console lines on a terminal, JSON lines otherwise.

JSON lines are what journald and log shippers want; each line of a job carries its
``task`` and ``id`` because the job's logger is bound to them. JSON escapes control
characters itself; the console renderer is wrapped by ``safe_console`` so that task
names, values and error texts chosen by job authors cannot write escape sequences
or fake lines on the operator's terminal (see cosched.terminal).
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


def setup(fmt: str = "auto", level: str = "info", stream=None) -> None:
    """Configure structlog (and stdlib logging, which some modules use) once for the process.

    The daemon passes a ``cosched.logsink.LogSink``, whose writes never block or fail.
    """
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer = (safe_console(structlog.dev.ConsoleRenderer(colors=stream.isatty()))
                if fmt == "console" else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(stream=stream, level=LEVELS[level], format="%(levelname)s %(name)s: %(message)s")
