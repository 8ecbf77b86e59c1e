"""coschedd's control server: the unix socket that coschedctl and other clients talk to.

``serve`` binds the socket, checks each peer's credentials (``SO_PEERCRED``) with
``peer_allowed``, reads newline-delimited JSON requests with ``LineReader``, dispatches
them to the backend by command name (the names and argument schemas come from
``cosched.protocol.COMMANDS``) and writes one response line per request.
The wire format and the error codes are documented in ``cosched.protocol``.
"""

from __future__ import annotations

import errno
import grp
import inspect
import os
import pwd
import socket as stdsocket
import stat
import struct
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import structlog
import trio

from . import protocol
from .protocol import ControlError
from .stalldesk import StallDesk

log = structlog.get_logger("cosched.control")

SEND_TIMEOUT = 30.0  # a peer that does not take its response within this is dropped
BUSY_SEND_TIMEOUT = 1.0  # for the one-line "busy" refusal, sent from the accept loop
PROBE_TIMEOUT = 2.0  # connecting to an existing socket file to see whether it is live
ACCEPT_BACKOFF = 0.1  # pause of the accept loop when the process is out of descriptors
LISTEN_BACKLOG = 128
RECV_CHUNK = 65536

_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid
_ACCEPT_RETRY = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR}
_ACCEPT_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


# -- credentials ------------------------------------------------------------------

def peer_allowed(uid: int, gid: int, *, allowed_uids: Collection[int], allowed_gid: int | None,
                 own_uid: int) -> bool:
    """The credential policy: root, the daemon's own user, the listed uids, and, when a
    group is configured, peers running with that gid or whose user belongs to it."""
    quick = peer_allowed_quick(uid, gid, allowed_uids=allowed_uids, allowed_gid=allowed_gid,
                               own_uid=own_uid)
    return user_in_group(uid, allowed_gid) if quick is None else quick


def peer_allowed_quick(uid: int, gid: int, *, allowed_uids: Collection[int],
                       allowed_gid: int | None, own_uid: int) -> bool | None:
    """peer_allowed as far as it goes without the user and group databases (which may
    block, e.g. on LDAP): True or False, or None when only a group look-up can tell."""
    if uid == 0 or uid == own_uid or uid in allowed_uids:
        return True
    if allowed_gid is None:
        return False
    return True if gid == allowed_gid else None


def user_in_group(uid: int, gid: int) -> bool:
    """Whether the user ``uid`` has ``gid`` as primary group or is listed as its member."""
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return False
    if user.pw_gid == gid:
        return True
    try:
        return user.pw_name in grp.getgrgid(gid).gr_mem
    except KeyError:
        return False


def peer_credentials(sock: trio.socket.SocketType) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a connected unix socket."""
    raw = sock.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_PEERCRED, _CREDENTIALS.size)
    return _CREDENTIALS.unpack(raw)


# -- line reading -----------------------------------------------------------------

class LineTooLong(Exception):
    """A request line exceeded the limit."""


class LineReader:
    """Reads newline-terminated lines from a trio socket, none longer than ``max_line``
    bytes (the newline not counted). Buffers at most ``max_line`` plus one chunk."""

    def __init__(self, sock: trio.socket.SocketType, max_line: int, initial: bytes = b""):
        self._sock = sock
        self._max_line = max_line
        self._buf = bytearray(initial)
        self._scanned = 0  # bytes of _buf known to hold no newline

    async def readline(self) -> bytes | None:
        """The next line without its newline, or None at a clean end of stream.

        Raises ``LineTooLong``, or ``EOFError`` when the stream ends inside a line.
        """
        while True:
            end = self._buf.find(b"\n", self._scanned)
            if end >= 0:
                return self._take(end)
            self._scanned = len(self._buf)
            if self._scanned > self._max_line:
                raise LineTooLong
            data = await self._sock.recv(RECV_CHUNK)
            if not data:
                if self._buf:
                    raise EOFError("connection closed in the middle of a line")
                return None
            self._buf += data

    def _take(self, end: int) -> bytes:
        if end > self._max_line:
            raise LineTooLong
        line = bytes(self._buf[:end])
        del self._buf[:end + 1]
        self._scanned = 0
        return line


async def send_all(sock: trio.socket.SocketType, data: bytes,
                   timeout: float = SEND_TIMEOUT) -> None:
    """Write all of ``data``; ``TimeoutError`` if the peer does not take it in time."""
    view = memoryview(data)
    with trio.move_on_after(timeout):
        while view:
            view = view[await sock.send(view):]
        return
    raise TimeoutError("peer did not read its response")


# -- binding ----------------------------------------------------------------------

async def _is_live(path: Path) -> bool:
    """Whether something accepts connections on the socket file at ``path``."""
    with trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM) as probe:
        with trio.move_on_after(PROBE_TIMEOUT):
            try:
                await probe.connect(os.fspath(path))
            except (ConnectionRefusedError, FileNotFoundError):
                return False
            except BlockingIOError:  # backlog full: someone is listening
                return True
            return True
        return True  # the connect hung: something holds the socket


async def _remove_stale(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, f"{path} exists and is not a socket; "
                                            f"not replacing it")
    if await _is_live(path):
        raise OSError(errno.EADDRINUSE, f"another coschedd is listening on {path}")
    log.info("removing stale control socket", path=str(path))
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _bind(path: Path, mode: int) -> stdsocket.socket:
    """A listening unix socket at ``path`` with permissions ``mode``. The file is
    created under umask 0177, so it is never more open than ``mode`` asks."""
    sock = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    bound = False
    try:
        old_umask = os.umask(0o177)
        try:
            sock.bind(os.fspath(path))
            bound = True
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)
        sock.listen(LISTEN_BACKLOG)
        return sock
    except BaseException:
        sock.close()
        if bound:
            _unlink_quietly(path)
        raise


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _remove_if_ours(path: Path, identity: tuple[int, int]) -> None:
    """Remove the socket file unless another process has put its own in its place."""
    try:
        st = os.lstat(path)
    except OSError:
        return
    if (st.st_dev, st.st_ino) == identity:
        _unlink_quietly(path)


# -- the server -------------------------------------------------------------------

class _Server:
    """State shared by the accept loop and the connection handlers."""

    def __init__(self, backend: Any, *, allowed_uids: Collection[int], allowed_gid: int | None,
                 max_line: int, max_clients: int, own_uid: int):
        self.backend = backend
        self.allowed_uids = frozenset(allowed_uids)
        self.allowed_gid = allowed_gid
        self.max_line = max_line
        self.max_clients = max_clients
        self.own_uid = own_uid
        self.active = 0
        self.local: dict[str, Callable[..., Any]] = {"ping": self.ping}

    def ping(self) -> dict:
        return {"pong": True, "pid": os.getpid()}

    async def accept_loop(self, listener: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        while True:
            try:
                conn, _ = await listener.accept()
            except OSError as exc:
                await self._accept_failed(exc)
                continue
            if self.active >= self.max_clients:
                await self._refuse_busy(conn)
            else:
                self.active += 1
                nursery.start_soon(self.connection, conn)

    async def _accept_failed(self, exc: OSError) -> None:
        if exc.errno in _ACCEPT_RETRY:
            return
        if exc.errno not in _ACCEPT_EXHAUSTED:
            raise exc
        log.error("control accept failed; pausing", error=str(exc), pause=ACCEPT_BACKOFF)
        await trio.sleep(ACCEPT_BACKOFF)

    async def _refuse_busy(self, conn: trio.socket.SocketType) -> None:
        log.warning("control connection refused: too many clients", max_clients=self.max_clients)
        with conn:
            try:
                await send_all(conn, protocol.encode(protocol.err(
                    None, protocol.BUSY, f"too many connections (limit {self.max_clients})")),
                    BUSY_SEND_TIMEOUT)
            except OSError:
                pass

    def adopt(self, conn: stdsocket.socket, initial: bytes, nursery: trio.Nursery) -> None:
        """Serve a connection the stall desk accepted (and began to read) for us."""
        self.active += 1
        nursery.start_soon(self.connection, trio.socket.from_stdlib_socket(conn), initial)

    def may_control(self, conn: stdsocket.socket) -> bool:
        """The credential check, for the stall desk's thread (blocking look-ups are fine there)."""
        _pid, uid, gid = _CREDENTIALS.unpack(
            conn.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_PEERCRED, _CREDENTIALS.size))
        return peer_allowed(uid, gid, allowed_uids=self.allowed_uids,
                            allowed_gid=self.allowed_gid, own_uid=self.own_uid)

    async def connection(self, conn: trio.socket.SocketType, initial: bytes = b"") -> None:
        """Serve one client until it closes; nothing it does escapes from here."""
        try:
            with conn:
                await self._converse(conn, initial)
        except (OSError, EOFError) as exc:
            log.debug("control peer dropped", error=f"{type(exc).__name__}: {exc}")
        except Exception:
            log.exception("control connection failed")
        finally:
            self.active -= 1

    async def _converse(self, conn: trio.socket.SocketType, initial: bytes = b"") -> None:
        pid, uid, gid = peer_credentials(conn)
        if not await self._allowed(uid, gid):
            log.warning("control peer refused", pid=pid, uid=uid, gid=gid)
            await send_all(conn, protocol.encode(protocol.err(
                None, protocol.FORBIDDEN, f"uid {uid} may not use this control socket")))
            return
        reader = LineReader(conn, self.max_line, initial)
        while True:
            try:
                line = await reader.readline()
            except LineTooLong:
                await send_all(conn, protocol.encode(protocol.err(
                    None, protocol.TOO_LARGE, f"request line longer than {self.max_line} bytes")))
                return
            if line is None:
                return
            if not line.strip():
                continue
            response = await self._answer(line, pid=pid, uid=uid)
            await send_all(conn, protocol.encode(response))
            if not response["ok"] and response["error"]["code"] == protocol.BAD_REQUEST:
                return

    async def _allowed(self, uid: int, gid: int) -> bool:
        quick = peer_allowed_quick(uid, gid, allowed_uids=self.allowed_uids,
                                   allowed_gid=self.allowed_gid, own_uid=self.own_uid)
        if quick is not None:
            return quick
        # user/group look-ups may block (NSS, LDAP): off the event loop
        return await trio.to_thread.run_sync(user_in_group, uid, self.allowed_gid)

    async def _answer(self, line: bytes, *, pid: int, uid: int) -> dict:
        try:
            request = protocol.decode_request(line)
        except ControlError as exc:
            log.debug("control request rejected", code=exc.code, message=exc.message, uid=uid)
            return protocol.err(exc.request_id, exc.code, exc.message)
        log.debug("control request", cmd=request.cmd, args=request.args, pid=pid, uid=uid)
        try:
            return protocol.ok(request.id, await self._dispatch(request))
        except ControlError as exc:
            return protocol.err(request.id, exc.code, exc.message)
        except Exception as exc:
            log.exception("control command failed", cmd=request.cmd, args=request.args)
            return protocol.err(request.id, protocol.INTERNAL, f"{type(exc).__name__}: {exc}")

    async def _dispatch(self, request: protocol.Request) -> Any:
        """Call the handler named by the command: the server's own, else the backend's
        method of the same name with the validated arguments as keywords."""
        handler = self.local.get(request.cmd) or getattr(self.backend, request.cmd)
        result = handler(**request.args)
        if inspect.isawaitable(result):
            result = await result
        return result


def _desk(server: _Server, listener: trio.socket.SocketType, nursery: trio.Nursery,
          max_line: int) -> StallDesk:
    token = trio.lowlevel.current_trio_token()
    return StallDesk(listener.fileno(), may_control=server.may_control, pid=os.getpid(),
                     max_line=max_line,
                     hand_over=lambda conn, data: token.run_sync_soon(
                         server.adopt, conn, data, nursery))


async def serve(path: Path, mode: int, backend: Any, *, allowed_uids: Collection[int],
                allowed_gid: int | None, max_line: int, max_clients: int = 64,
                task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
                guard: Any = None, _own_uid: int | None = None) -> None:
    """Serve the control protocol on a unix socket at ``path`` until cancelled.

    A stale socket file is replaced; a live one raises ``OSError`` ("another coschedd
    is listening on ..."), as does a non-socket file in the way. The socket file gets
    permissions ``mode`` and is removed on exit. ``task_status.started(path)`` is called
    once clients can connect. ``_own_uid`` overrides the daemon's own uid in the
    credential check (tests use it to be refused). With a step ``guard``, its watchdog
    takes connections while a step stalls the loop (``cosched.stalldesk``).
    """
    path = Path(path)
    await _remove_stale(path)
    listener = trio.socket.from_stdlib_socket(_bind(path, mode))
    st = os.lstat(path)
    server = _Server(backend, allowed_uids=allowed_uids, allowed_gid=allowed_gid,
                     max_line=max_line, max_clients=max_clients,
                     own_uid=os.getuid() if _own_uid is None else _own_uid)
    try:
        with listener:
            log.info("control socket listening", path=str(path), mode=f"{mode:04o}")
            async with trio.open_nursery() as nursery:
                if guard is not None:
                    guard.desk = _desk(server, listener, nursery, max_line)
                task_status.started(path)
                await server.accept_loop(listener, nursery)
    finally:
        if guard is not None and guard.desk is not None:
            guard.desk, desk = None, guard.desk
            desk.close()
        _remove_if_ours(path, (st.st_dev, st.st_ino))
        log.info("control socket closed", path=str(path))
