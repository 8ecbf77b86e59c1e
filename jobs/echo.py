"""Echo: a TCP line server that runs forever, one coroutine per connection.

Shows a server whose connections are each handled by their own coroutine
(``coro.create(handle)``), resumed in a trio task of the server's nursery;
socket reads and writes inside it wait in trio's epoll. A connection that
fails is logged by its driver and does not take the server down, because
``resume`` returns ``(False, exc)`` instead of raising.

Each line received is sent back as is; a last line without a newline is sent
back at EOF, then the connection is closed.

Config (``[job.echo] config = {...}``):
    host    address to listen on (default "127.0.0.1")
    port    TCP port; 0 picks a free one (default 0)

Interact: the bound port is logged ("listening", port=...) and kept in
task.state["port"]; then e.g. ``nc 127.0.0.1 PORT``. ``coschedctl kill echo``
stops the server.
"""

import trio

from cosched import coro

MAX_LINE = 64 * 1024


async def handle(task, stream):
    lines = 0
    async with stream:
        buf = b""
        while data := await stream.receive_some(4096):
            buf += data
            *complete, buf = buf.split(b"\n")
            for line in complete:
                await stream.send_all(line + b"\n")
            lines += len(complete)
            if len(buf) > MAX_LINE:
                # Without a newline in sight the buffer would grow without bound.
                raise ValueError(f"line longer than {MAX_LINE} bytes")
        if buf:
            await stream.send_all(buf)
            lines += 1
    return lines


async def main(task):
    host = task.config.get("host", "127.0.0.1")
    listeners = await trio.open_tcp_listeners(int(task.config.get("port", 0)), host=host)
    port = listeners[0].socket.getsockname()[1]
    task.state["port"] = port
    task.log.info("listening", host=host, port=port)

    async def on_connection(stream):
        peer = stream.socket.getpeername()
        ok, result = await coro.resume(coro.create(handle), task, stream)
        if ok:
            task.log.info("connection closed", peer=str(peer), lines=result)
        else:
            task.log.warning("connection failed", peer=str(peer), error=repr(result))

    await trio.serve_listeners(on_connection, listeners)
