"""Ping-pong: symmetric coroutines passing control with ``coro.transfer``.

Shows symmetric switching: ``ping`` and ``pong`` hand control to each other
directly, with no resumer in between, ``rounds`` times. The root starts the
rally with ``resume(ping)``, so it is a *normal* coroutine waiting there;
the last stroke transfers back to it and its pending resume receives the
transferred value. The root then closes the two players (their pending
transfers get GeneratorExit) and yields the count to the daemon once.

Config (``[job.pingpong] config = {...}``):
    rounds  number of ping/pong rounds, >= 1 (default 5)

Interact:
    coschedctl show pingpong        # suspended, showing the number of rounds played
    coschedctl resume pingpong      # the task finishes with that number
"""

from cosched import coro


async def main(task):
    rounds = int(task.config.get("rounds", 5))
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    root = coro.current()

    async def ping(n):
        while True:
            task.log.info(f"ping {n}")
            n = await coro.transfer(pong_co, n)     # pong hands back the next round

    async def pong(n):
        while True:
            task.log.info(f"pong {n}")
            if n == rounds:
                await coro.transfer(root, n)        # the last stroke ends the rally
            else:
                n = await coro.transfer(ping_co, n + 1)

    ping_co, pong_co = coro.create(ping), coro.create(pong)
    ok, count = await coro.resume(ping_co, 1)       # returns when pong transfers to us
    if not ok:
        raise count
    for co in (ping_co, pong_co):                    # both wait in transfer: end them cleanly
        await coro.close(co)
    task.log.info("rally over", rounds=count)
    await coro.yield_(count)                         # show the daemon; wait for a resume
    return count
