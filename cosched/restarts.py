"""Restarts asked for by an operator (``coschedctl restart``) or by a reload that changed
a job's policy.

An alive task is restarted *in place*: the supervisor marks it
(``Supervisor._restarting``, with the policy its next life gets) and kills it;
its cleanup runs as for any kill, and when its life has ended the supervisor's
loop starts the next one at once as the same task (id, name, ``task.state``,
restart count plus one; see ``Supervisor._restart_now``). An ended top-level
task is started anew with the old one's ``task.state``. A job means each of its
alive top-level tasks, or a new task if none is alive.

The answer waits until each restarted task has begun its next life (its
``started`` event) or ended, for at most ``daemon.stop_timeout``; a task whose
cleanup overran it is abandoned, like a kill would, and started anew.
"""

from __future__ import annotations

from typing import Any

import structlog
import trio

from . import reports
from .protocol import NO_SUCH_JOB, NOT_ALIVE, ControlError

__all__ = ["restart", "restart_in_place", "start_again"]

log = structlog.get_logger("cosched.restarts")


async def restart(sup: Any, job: str | None, t: Any) -> dict:
    """The ``restart`` command for a job or a task (one of them is None)."""
    if t is not None and t.alive:
        alive = [t]
    elif t is not None:
        return {"tasks": [reports.info(start_again(sup, t))], "started": True}
    else:
        alive = sup.reg.roots_of(job)
        if not alive:
            return {**await sup.start(job), "started": True}
    await restart_in_place(sup, {t.id: None for t in alive})
    return {"tasks": [reports.info(t) for t in alive], "started": False}


def start_again(sup: Any, t: Any) -> Any:
    """A new task for an ended top-level task, with its task.state."""
    if t.parent is not None:
        raise ControlError(NOT_ALIVE, f"task {t.name} (#{t.id}) has ended and was spawned "
                                      f"by task {t.parent.name} (#{t.parent.id}); restart "
                                      "that one")
    entry = sup.job_table.get(t.job.name)
    if entry is None or entry["job"] is None:
        raise ControlError(NO_SUCH_JOB, f"job {t.job.name!r} of task {t.name} is not loaded")
    return sup.start_task(entry["job"], state=t.ctx.state if t.ctx else None)


async def restart_in_place(sup: Any, policies: dict[int, Any]) -> None:
    """Restart these alive tasks (id -> the policy of their next life, None: unchanged)
    and wait until each began its next life or ended, within stop_timeout."""
    began = {tid: trio.Event() for tid in policies}

    def heard(event: dict) -> None:
        if event.get("event") == "started" and event.get("id") in began:
            began[event["id"]].set()
    unsubscribe = sup.events.subscribe(heard, jobs=False)
    tasks = [sup.tasks[tid] for tid in policies]
    try:
        for t in tasks:
            sup._restarting[t.id] = policies[t.id]
            sup._request_kill(t)
        with trio.move_on_after(sup.config.stop_timeout):
            for t in tasks:
                await _either(began[t.id].wait, t.wait_ended)
    finally:
        unsubscribe()
    for t in tasks:
        if not began[t.id].is_set() and not t.done:
            sup._abandon(t, sup.config.stop_timeout)
            try:
                start_again(sup, t)
            except ControlError as e:
                log.error("cannot start an abandoned task again", task=t.name, id=t.id,
                          reason=e.message)


async def _either(a: Any, b: Any) -> None:
    """Until one of the two waits (async functions) returns."""
    async with trio.open_nursery() as nursery:
        for waiter in (a, b):
            async def wait(waiter: Any = waiter) -> None:
                await waiter()
                nursery.cancel_scope.cancel()
            nursery.start_soon(wait)
