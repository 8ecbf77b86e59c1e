"""Downloader: concurrent HTTP downloads, one coroutine per download.

A tiny HTTP/1.0 server on 127.0.0.1 (ephemeral port) answers
``GET /delay/<seconds>/<bytes>`` with that many bytes after that many seconds.
Each download is a coroutine (``coro.create(download)``) resumed in its own
trio task; its ``receive_some`` loop waits for readiness in trio's epoll, so
the total time is about the longest delay, not the sum. Mode "blocking"
downloads one after another, for comparison.

Config (``[job.downloader] config = {...}``):
    paths   list of "/delay/<seconds>/<bytes>" paths (default: DEFAULT_PATHS)
    mode    "concurrent" (default) or "blocking"

Interact: nothing to do; each download is logged (path, bytes) and the task
finishes with a dict path -> bytes (the "task finished" log line).
``coschedctl start downloader`` runs it again.
"""

from functools import partial

import trio

from cosched import coro

DEFAULT_PATHS = ["/delay/0.3/629", "/delay/0.5/606", "/delay/0.2/229699", "/delay/0.4/115777"]
HOST = "127.0.0.1"


async def serve(stream):
    async with stream:
        request = b""
        while b"\r\n\r\n" not in request and len(request) < 8192:
            if not (data := await stream.receive_some(1024)):
                return
            request += data
        try:
            _, kind, seconds, size = request.split(b" ", 2)[1].decode("ascii").split("/")
            seconds, size = float(seconds), int(size)
            if kind != "delay" or not (0 <= seconds <= 60 and 0 <= size <= 64 << 20):
                raise ValueError
        except (ValueError, IndexError):
            return await stream.send_all(b"HTTP/1.0 404 Not Found\r\n\r\n")
        await trio.sleep(seconds)
        await stream.send_all(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        await stream.send_all(b"x" * size)


async def download(host, port, path):
    """Fetch path and return the size of the body; runs as a coroutine of its own."""
    async with await trio.open_tcp_stream(host, port) as conn:
        await conn.send_all(b"GET %s HTTP/1.0\r\n\r\n" % path.encode("ascii"))
        head, count = b"", None
        while data := await conn.receive_some(2**10):    # readiness wait, never a spin
            if count is None:                              # still reading the header
                head, sep, body = (head + data).partition(b"\r\n\r\n")
                count = len(body) if sep else None
            else:
                count += len(data)
    status = head.split(b"\r\n", 1)[0].decode("ascii", "replace")
    if count is None or " 200 " not in status:
        raise RuntimeError(f"GET {path}: {status or 'no response'}")
    return count


async def main(task):
    paths = list(task.config.get("paths", DEFAULT_PATHS))
    mode = task.config.get("mode", "concurrent")
    if mode not in ("concurrent", "blocking"):
        raise ValueError(f"mode must be 'concurrent' or 'blocking', got {mode!r}")
    results, failed = {}, []

    async def get(port, path):
        # resume returns (False, exc) rather than raising: one failure does not cancel the rest.
        ok, value = await coro.resume(coro.create(download), HOST, port, path)
        if ok:
            results[path] = value
            task.log.info("downloaded", path=path, bytes=value)
        else:
            failed.append(str(value))
            task.log.warning("download failed", path=path, error=str(value))

    start = trio.current_time()
    async with trio.open_nursery() as server:
        listeners = await server.start(partial(trio.serve_tcp, serve, 0, host=HOST))
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as downloads:
            for path in paths:
                if mode == "blocking":
                    await get(port, path)
                else:
                    downloads.start_soon(get, port, path)
        server.cancel_scope.cancel()   # all done: stop the local server
    task.log.info("downloads done", mode=mode, files=len(results), failed=len(failed),
                  bytes=sum(results.values()), seconds=round(trio.current_time() - start, 3))
    if failed:
        raise RuntimeError("; ".join(failed))
    return results
