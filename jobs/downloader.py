"""Downloader: concurrent HTTP downloads, one coroutine per download.

Shows the classic coroutine downloader made real and local. The job starts a
tiny HTTP/1.0 server on 127.0.0.1 (ephemeral port) that answers
``GET /delay/<seconds>/<bytes>`` with that many bytes after that many seconds.
Each download is its own coroutine (``coro.create(download)``), resumed in its
own trio task; its ``receive_some`` loop waits for socket readiness in trio's
epoll, so all downloads wait at once and the total time is about the longest
delay, not the sum. Mode "blocking" downloads one after another, for comparison.

Config (``[job.downloader] config = {...}``):
    paths   list of "/delay/<seconds>/<bytes>" paths (default: the four below)
    mode    "concurrent" (default) or "blocking"

Interact: nothing to do; each download is logged as ``path bytes``, and the
task finishes with a dict path -> bytes as its result.
"""

import trio

from cosched import coro

DEFAULT_PATHS = ["/delay/0.3/629", "/delay/0.5/606", "/delay/0.2/229699", "/delay/0.4/115777"]
HOST = "127.0.0.1"
MAX_BODY = 64 << 20


async def serve(stream):
    """The local server: one request per connection, HTTP/1.0 style (close ends the body)."""
    async with stream:
        request = b""
        while b"\r\n\r\n" not in request and len(request) < 8192:
            data = await stream.receive_some(1024)
            if not data:
                return
            request += data
        try:
            _, path, _ = request.split(b"\r\n", 1)[0].decode("ascii").split(" ")
            _, kind, seconds, size = path.split("/")
            seconds, size = float(seconds), int(size)
            if kind != "delay" or not (0 <= seconds <= 60 and 0 <= size <= MAX_BODY):
                raise ValueError(path)
        except ValueError:
            await stream.send_all(b"HTTP/1.0 404 Not Found\r\n\r\n")
            return
        await trio.sleep(seconds)
        await stream.send_all(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        await stream.send_all(b"x" * size)


async def download(host, port, path):
    """Fetch path; return the size of the body. Runs as a coroutine of its own."""
    async with await trio.open_tcp_stream(host, port) as conn:
        await conn.send_all(b"GET %s HTTP/1.0\r\n\r\n" % path.encode("ascii"))
        head, count = b"", None
        while data := await conn.receive_some(2**10):   # waits for readiness, never spins
            if count is None:
                head += data
                if b"\r\n\r\n" in head:
                    head, _, body = head.partition(b"\r\n\r\n")
                    count = len(body)
            else:
                count += len(data)
    status = head.split(b"\r\n", 1)[0]
    if count is None or b" 200 " not in status:
        raise RuntimeError(f"GET {path}: {status.decode('ascii', 'replace') or 'no response'}")
    return count


async def main(task):
    paths = list(task.config.get("paths", DEFAULT_PATHS))
    mode = task.config.get("mode", "concurrent")
    if mode not in ("concurrent", "blocking"):
        raise ValueError(f"mode must be 'concurrent' or 'blocking', got {mode!r}")
    results = {}

    async def get(port, path):
        # Drive one download coroutine to its end; a failed download fails the job.
        ok, value = await coro.resume(coro.create(download), HOST, port, path)
        if not ok:
            raise value
        results[path] = value
        task.log.info("downloaded", path=path, bytes=value)

    start = trio.current_time()
    async with trio.open_nursery() as server:
        port = (await server.start(trio.serve_tcp, serve, 0, HOST))[0].socket.getsockname()[1]
        if mode == "blocking":
            for path in paths:
                await get(port, path)
        else:
            async with trio.open_nursery() as downloads:
                for path in paths:
                    downloads.start_soon(get, port, path)
        server.cancel_scope.cancel()   # all done: stop the local server
    task.log.info("downloads done", mode=mode, files=len(results),
                  bytes=sum(results.values()), seconds=round(trio.current_time() - start, 3))
    return results
