"""The daemon's HTTP endpoint: Prometheus metrics and health checks, on the event loop.

Served when ``metrics.listen`` is set (``"127.0.0.1:9469"``):

``GET /metrics``
    The text exposition of ``cosched.metrics``.
``GET /healthz``
    Readiness: ``200 ok`` once the jobs folder was loaded and every job file in it
    loaded; ``503`` with the reasons while a job failed to load (or the daemon is
    still starting).
``GET /livez``
    Liveness: ``200 ok`` whenever the event loop answers.

Both checks are answered by a trio task of the daemon, not a thread: when a job
stalls the event loop, they stop answering, which is what a probe must see.
(``/livez`` exists because restarting a daemon whose job file has a syntax error
fixes nothing: a liveness probe wants the loop, a readiness probe the jobs.)

The server speaks the little of HTTP/1.1 that probes and scrapers use: one
request per connection (``Connection: close``), GET and HEAD, a request head of
at most ``MAX_HEAD`` bytes that must arrive within ``HEAD_TIMEOUT``, at most
``MAX_CONNECTIONS`` at once (more get ``503`` at once). The listening socket
is bound before the event loop starts (``bind``), so a port in use is a clear
start-up error.
"""

from __future__ import annotations

import errno
import socket as stdsocket
from typing import Any

import structlog
import trio

from .control import accept_failed
from .metrics import CONTENT_TYPE
from .terminal import escape

__all__ = ["bind", "serve", "MetricsAddressError"]

log = structlog.get_logger("cosched.httpserve")

MAX_HEAD = 8192         # bytes of request line and headers
HEAD_TIMEOUT = 10.0     # seconds for the request head to arrive
SEND_TIMEOUT = 30.0     # seconds for the peer to take the response
MAX_CONNECTIONS = 32    # served at once; more are answered 503 without waiting
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}


class MetricsAddressError(OSError):
    """The metrics address cannot be listened on; the message says why."""


def bind(address: tuple[str, int]) -> stdsocket.socket:
    """A listening TCP socket at (ip, port). Raises MetricsAddressError."""
    host, port = address
    family = stdsocket.AF_INET6 if ":" in host else stdsocket.AF_INET
    shown = f"[{host}]:{port}" if family == stdsocket.AF_INET6 else f"{host}:{port}"
    sock = stdsocket.socket(family, stdsocket.SOCK_STREAM)
    try:
        sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEADDR, 1)  # TIME_WAIT only
        if family == stdsocket.AF_INET6:
            sock.setsockopt(stdsocket.IPPROTO_IPV6, stdsocket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        hint = {errno.EADDRINUSE: " (another program listens there; choose another port "
                                  "in metrics.listen)",
                errno.EADDRNOTAVAIL: " (no interface of this host has that address)",
                errno.EACCES: " (ports below 1024 need privileges)"}.get(e.errno, "")
        raise MetricsAddressError(e.errno, f"cannot listen for metrics on {shown}: "
                                           f"{e.strerror}{hint}") from None
    return sock


async def serve(listener: stdsocket.socket, sup: Any, *,
                task_status: trio.TaskStatus[tuple] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve /metrics, /healthz and /livez on ``listener`` until cancelled."""
    sock = trio.socket.from_stdlib_socket(listener)
    active = 0
    with sock:
        log.info("metrics listening", address=list(sock.getsockname()[:2]))
        task_status.started(sock.getsockname()[:2])
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    conn, _ = await sock.accept()
                except OSError as e:  # out of descriptors, or a peer gone before accept
                    await accept_failed(e, "metrics")
                    continue
                if active >= MAX_CONNECTIONS:
                    _refuse(conn)
                    continue
                active += 1

                async def handle(conn: trio.socket.SocketType = conn) -> None:
                    nonlocal active
                    try:
                        with conn:
                            await _exchange(conn, sup)
                    except (OSError, trio.TooSlowError) as e:
                        log.debug("metrics peer dropped", error=str(e))
                    finally:
                        active -= 1
                nursery.start_soon(handle)


def _refuse(conn: trio.socket.SocketType) -> None:
    with stdsocket.socket(fileno=conn.detach()) as raw:
        try:
            raw.send(_response(503, "too many connections\n"), stdsocket.MSG_DONTWAIT)
        except OSError:
            pass


async def _exchange(conn: trio.socket.SocketType, sup: Any) -> None:
    head = await _read_head(conn)
    if head is None:
        return await _send(conn, _response(408, "no request in time\n"))
    if head is False:
        return await _send(conn, _response(431, f"request head over {MAX_HEAD} bytes\n"))
    try:
        method, target, version = head.split(b"\r\n", 1)[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        return await _send(conn, _response(400, "malformed request line\n"))
    if not version.startswith("HTTP/1."):
        return await _send(conn, _response(400, "HTTP/1.x only\n"))
    if method not in ("GET", "HEAD"):
        return await _send(conn, _response(405, "GET or HEAD only\n",
                                           extra="Allow: GET, HEAD\r\n"))
    status, body, ctype = await _route(target.split("?", 1)[0], sup)
    await _send(conn, _response(status, body, ctype, head_only=method == "HEAD"))


async def _route(path: str, sup: Any) -> tuple[int, str, str]:
    text = "text/plain; charset=utf-8"
    if path == "/metrics":
        return 200, await sup.collector.render(trio.lowlevel.checkpoint), CONTENT_TYPE
    if path == "/livez":
        return 200, "ok\n", text
    if path == "/healthz":
        problems = readiness(sup)
        if problems:
            return 503, "not ready:\n" + "".join(f"  {p}\n" for p in problems), text
        return 200, "ok\n", text
    return 404, "not found; try /metrics, /healthz or /livez\n", text


def readiness(sup: Any) -> list[str]:
    """Why the daemon is not ready (escaped for display); empty when it is."""
    if sup.nursery is None:
        return ["starting: the jobs folder is not loaded yet"]
    return [escape(f"job {name} failed to load: {entry['error']}")
            for name, entry in sorted(sup.job_table.items()) if entry["job"] is None]


async def _read_head(conn: trio.socket.SocketType) -> bytes | None | bool:
    """The request head (up to the blank line); None on timeout or early close,
    False when it is too long."""
    buf = bytearray()
    with trio.move_on_after(HEAD_TIMEOUT):
        while b"\r\n\r\n" not in buf and b"\n\n" not in buf:
            if len(buf) > MAX_HEAD:
                return False
            data = await conn.recv(4096)
            if not data:
                return None
            buf += data
        return bytes(buf) if _head_end(buf) <= MAX_HEAD else False
    return None


def _head_end(buf: bytearray) -> int:
    ends = [i for i in (buf.find(b"\r\n\r\n"), buf.find(b"\n\n")) if i >= 0]
    return min(ends)


def _response(status: int, body: str, ctype: str = "text/plain; charset=utf-8", *,
              extra: str = "", head_only: bool = False) -> bytes:
    data = body.encode("utf-8")
    head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n{extra}\r\n")
    return head.encode("ascii") + (b"" if head_only else data)


async def _send(conn: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    with trio.fail_after(SEND_TIMEOUT):
        while view:
            view = view[await conn.send(view):]
