"""Ticker: a timer-driven job that runs forever and keeps a counter across restarts.

Shows: ``trio.sleep_until`` as a real timer inside a coroutine (the daemon's
event loop waits on it; nothing polls), and ``task.state`` surviving restarts,
of the task and of the daemon.

Config (``[job.ticker] config = {...}``):
    interval  seconds between ticks, > 0 (default 5.0)

Interact:
    coschedctl status ticker        # "waiting" in trio.sleep_until between ticks
    coschedctl kill ticker          # stops it; ``coschedctl start ticker`` is a new task
The counter lives in task.state, which the daemon keeps in its state
database, and each tick is checkpointed: a restart of the task (restart
policy), a new task of the job (``coschedctl start``) and the first task after
the daemon restarts, even after it was killed, all count on from the last tick.
"""

import trio


async def main(task):
    interval = float(task.config.get("interval", 5.0))
    if not interval > 0:
        # A zero or negative interval would spin without ever blocking.
        raise ValueError(f"interval must be > 0, got {interval!r}")
    task.state.setdefault("ticks", 0)
    # Absolute deadlines: time spent logging does not make the ticks drift.
    deadline = trio.current_time()
    while True:
        deadline += interval
        await trio.sleep_until(deadline)
        task.state["ticks"] += 1
        await task.checkpoint()
        task.log.info("tick", ticks=task.state["ticks"], interval=interval)
