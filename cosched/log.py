"""Logging setup: structlog to stderr, console lines on a terminal, JSON lines otherwise.

JSON lines are what journald and log shippers want; each line of a job carries its
``task`` and ``id`` because the job's logger is bound to them.
"""

from __future__ import annotations

import logging
import sys

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


def setup(fmt: str = "auto", level: str = "info", stream=None) -> None:
    """Configure structlog (and stdlib logging, which some modules use) once for the process.

    The daemon passes a ``cosched.logsink.LogSink``, whose writes never block or fail.
    """
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer = (structlog.dev.ConsoleRenderer(colors=stream.isatty()) if fmt == "console"
                else structlog.processors.JSONRenderer())
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
