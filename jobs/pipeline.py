"""Pipeline: producer -> filter -> consumer, each stage a ``coro.wrap`` generator.

Shows the pipes-and-filters pattern: the consumer pulls a line from the filter,
which pulls one from the producer. The producer reads a real file with
``trio.open_file``; that file I/O is awaited inside the wrapped coroutine, two
resumes deep, and goes to trio, never to the stage that resumed it
(cross-yield). The filter numbers the lines with ``"%5d %s"``.

Config (``[job.pipeline] config = {...}``):
    path    file to read (default: this job file)
    output  file to write the numbered lines to (default: none, each line is
            logged at level debug, so the daemon's log stays quiet at info)

Interact: nothing to do; the task finishes with the number of lines as its
result (the "task finished" log line). ``coschedctl start pipeline`` runs it again;
with ``[log] level = "debug"``, ``coschedctl logs -n 100 pipeline`` shows the lines.
"""

import trio

from cosched import coro


def producer(path):
    async def produce():
        # Every read below may block on a worker thread: trio waits, the
        # filter that resumed us does not see it.
        async with await trio.open_file(path, encoding="utf-8", errors="replace") as f:
            async for line in f:
                await coro.yield_(line.rstrip("\r\n"))
    return coro.wrap(produce)


def numbered(source):
    async def filter_():
        n = 0
        async for line in source:
            n += 1
            await coro.yield_("%5d %s" % (n, line))
    return coro.wrap(filter_)


async def main(task):
    path = task.config.get("path", __file__)
    output = task.config.get("output")
    lines = numbered(producer(path))
    count = 0
    if output is None:
        async for line in lines:
            count += 1
            task.log.debug("line", line=line)
    else:
        async with await trio.open_file(output, "w", encoding="utf-8") as out:
            async for line in lines:
                count += 1
                await out.write(line + "\n")
    task.log.info("pipeline done", path=str(path), output=output, lines=count)
    return count
