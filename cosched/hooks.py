"""Hooks: a job's ``on_failure`` starts another job when one of its tasks fails for good.

Like systemd's ``OnFailure=``: the hook fires when a top-level task ends in
state failed and no restart follows (its restart policy says no, or it hit its
start limit), not at each failure that is retried. The handler job is started
as a new task whose ``task.trigger`` is a dict describing the failure::

    {"event": "failed", "task": "mailer", "id": 12, "job": "mailer",
     "error": "ValueError: ...", "traceback": "Traceback ...", "time": 1700000000.0}

(``task.trigger`` is None for tasks started any other way.) The handler starts
even if its own config says ``autostart = false`` or ``enabled = false``: that
is the usual way to declare a job that only runs as a handler. A task started
by a hook never fires a hook itself, so a failing handler cannot start a chain
or a loop of handlers. A handler that is not loaded is logged and announced as
a ``hook-failed`` event; a started one as ``hook-started``.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

__all__ = ["on_failure"]

log = structlog.get_logger("cosched.hooks")


def on_failure(sup: Any, t: Any) -> Any:
    """t has ended for good; start its job's on_failure handler if it should. Returns
    the handler's task, or None."""
    handler = t.policy.on_failure
    if not handler or t.state != "failed" or t.parent is not None:
        return None
    if t.ctx is not None and t.ctx.trigger is not None:
        log.warning("a task started by a hook failed; its own on_failure is not run",
                    task=t.name, id=t.id, handler=handler)
        return None
    entry = sup.job_table.get(handler)
    if entry is None or entry["job"] is None:
        why = "no such job" if entry is None else f"it failed to load: {entry['error']}"
        log.error("on_failure handler cannot start", task=t.name, id=t.id, handler=handler,
                  reason=why)
        sup.events.job("hook-failed", t.job.name, task=t.name, id=t.id, handler=handler,
                       reason=why)
        return None
    trigger = {"event": "failed", "task": t.name, "id": t.id, "job": t.job.name,
               "error": t.error, "traceback": t.traceback, "time": time.time()}
    started = sup.start_task(entry["job"], trigger=trigger)
    log.info("on_failure handler started", task=t.name, id=t.id, handler=handler,
             handler_task=started.name, handler_id=started.id)
    sup.events.job("hook-started", t.job.name, task=t.name, id=t.id, handler=handler,
                   handler_task=started.name, handler_id=started.id)
    return started
