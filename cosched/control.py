"""coschedd's control server: the unix socket that coschedctl and other clients talk to.

``serve`` binds the socket, reads each peer's credentials (``SO_PEERCRED``, and its
groups with ``SO_PEERGROUPS``), admits it within the connection limits, gives it an
access level with ``peer_level``, reads newline-delimited JSON requests with
``LineReader``, dispatches them to the backend by command name (names, argument
schemas and the level each needs come from ``cosched.protocol.COMMANDS``) and writes
one response line per request. The wire format and the error codes are documented
in ``cosched.protocol``.

Streams (``logs -f``, ``events -f``): a backend method may answer with an async
iterator instead of a value (``cosched.feeds.Stream``). The server then writes
one line per item, each within ``Limits.send_timeout`` (a follower that stops
reading is dropped; the producer's bounded feed keeps the daemon's memory
bounded meanwhile), then a last line with the stream's ``result``. While the
stream runs the server watches the connection: the peer closing it, or sending
its next request, ends the stream (the request is answered after the last line).
Every other request keeps its one response line.

Who reaches the socket (``Access``): root and the daemon's own user always, with
control access. A group (read_group or control_group, when only one is configured)
becomes the socket's group at bind, and the socket is ``mode`` (0660); the kernel
then keeps everyone else out. Listed users, or two different groups, cannot be
expressed by one file group: then the socket is also connectable by others and
the peer's uid and groups, which the kernel vouches for, decide alone, like the
D-Bus system bus does. Either way every request is checked against its level.

No lock-out (``Limits``): unprivileged peers share ``max_connections`` minus a few
slots kept for root and the daemon's user, each uid holds at most ``per_user``,
idle connections are closed, refusals never wait on the refused peer, the listen
queue is large and emptied a burst at a time; and root's ``coschedctl`` goes in
through a second, private socket (mode 0600, ``bind_private``) that no one else can
fill, so a flood of connects from one user cannot keep it out.
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
import time
from collections import Counter
from collections.abc import Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import trio

from . import protocol
from .config import RESERVED_CONNECTIONS
from .protocol import CONTROL, READ, ControlError
from .stalldesk import StallDesk

log = structlog.get_logger("cosched.control")

SEND_TIMEOUT = 30.0  # a peer that does not take its response within this is dropped
PROBE_TIMEOUT = 2.0  # connecting to an existing socket file to see whether it is live
ACCEPT_BACKOFF = 0.1  # pause of the accept loop when the process is out of descriptors
ACCEPT_BURST = 256    # connections taken from the listen queue before other tasks run
LISTEN_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn (4096 since Linux 5.4)
RECV_CHUNK = 65536
REFUSAL_LOG_INTERVAL = 10.0  # each kind of refusal is logged at most this often

_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid
_SO_PEERGROUPS = getattr(stdsocket, "SO_PEERGROUPS", 59)  # Linux >= 4.13
_GID = struct.Struct("I")
_ACCEPT_RETRY = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR}
_ACCEPT_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


# -- who may do what --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Access:
    """The principals of each level. CONTROL implies READ; root and ``own_uid`` (the
    daemon's user) always have CONTROL."""

    read_uids: frozenset[int] = frozenset()
    read_gid: int | None = None
    control_uids: frozenset[int] = frozenset()
    control_gid: int | None = None
    own_uid: int = field(default_factory=os.geteuid)

    @classmethod
    def from_config(cls, config: Any) -> Access:
        return cls(frozenset(config.read_users), config.read_group,
                   frozenset(config.control_users), config.control_group)

    def privileged(self, uid: int) -> bool:
        return uid == 0 or uid == self.own_uid

    def groups(self) -> frozenset[int]:
        return frozenset({self.read_gid, self.control_gid} - {None})

    def world_connectable(self) -> bool:
        """Whether the socket must let others connect (then peer credentials decide)."""
        return bool(self.read_uids or self.control_uids) or len(self.groups()) > 1

    def socket_group(self) -> int | None:
        """The group the socket file gets: the one configured group, if just one."""
        groups = self.groups()
        return next(iter(groups)) if len(groups) == 1 else None


def peer_level(uid: int, groups: Collection[int], access: Access) -> str | None:
    """CONTROL, READ or None (no access) for a peer with ``uid`` in ``groups``."""
    if access.privileged(uid) or uid in access.control_uids or access.control_gid in groups:
        return CONTROL
    if uid in access.read_uids or access.read_gid in groups:
        return READ
    return None


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


def peer_credentials(sock: stdsocket.socket | trio.socket.SocketType) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a connected unix socket."""
    raw = sock.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_PEERCRED, _CREDENTIALS.size)
    return _CREDENTIALS.unpack(raw)


def peer_groups(sock: trio.socket.SocketType) -> frozenset[int] | None:
    """The supplementary groups the peer had when it connected, as the kernel saw them
    (the ones it checked the socket file's permissions with); None if it cannot tell."""
    size = 64 * _GID.size
    while True:
        try:
            raw = sock.getsockopt(stdsocket.SOL_SOCKET, _SO_PEERGROUPS, size)
            return frozenset(g for (g,) in _GID.iter_unpack(raw[:len(raw) // 4 * 4]))
        except OSError as e:
            if e.errno != errno.ERANGE or size >= 65536 * _GID.size:
                return None  # ENOPROTOOPT: a kernel older than 4.13
            size = 65536 * _GID.size  # NGROUPS_MAX


@dataclass(frozen=True, slots=True)
class Limits:
    """Connection limits; ``per_user`` < ``max_connections`` - ``reserved`` (config checks)."""

    max_connections: int = 64
    per_user: int = 8
    idle_timeout: float = 60.0
    reserved: int = RESERVED_CONNECTIONS  # of max_connections, for root and own uid only
    send_timeout: float = SEND_TIMEOUT   # a peer not taking a line within this is dropped

    @classmethod
    def from_config(cls, config: Any) -> Limits:
        return cls(config.max_connections, config.max_connections_per_user,
                   config.idle_timeout, send_timeout=config.send_timeout)


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

    async def fill(self) -> bool:
        """Read one chunk into the buffer (for ``readline`` later); False at end of stream."""
        data = await self._sock.recv(RECV_CHUNK)
        self._buf += data
        return bool(data)

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


def _bind(path: Path, mode: int, gid: int | None) -> stdsocket.socket:
    """A listening unix socket at ``path`` with permissions ``mode`` and group ``gid``
    (None: the process's). The file is created under umask 0177 and gets its group
    before its mode, so it is never more open than asked, nor open to another group."""
    sock = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    bound = False
    try:
        old_umask = os.umask(0o177)
        try:
            sock.bind(os.fspath(path))
            bound = True
        finally:
            os.umask(old_umask)
        if gid is not None:
            try:
                os.chown(path, -1, gid)
            except PermissionError as e:
                raise PermissionError(e.errno, f"cannot give the control socket {path} to group "
                                               f"{gid} (the daemon's user must be a member of "
                                               f"it): {e.strerror}") from None
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

class _Throttled:
    """Warnings about refused peers, each event logged at most every
    REFUSAL_LOG_INTERVAL with the number of times it happened since: a peer that
    keeps connecting must not fill the log."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.logged_at: dict[str, float] = {}

    def warning(self, event: str, **fields: Any) -> None:
        self.count[event] += 1
        now = time.monotonic()
        if now - self.logged_at.get(event, -REFUSAL_LOG_INTERVAL) >= REFUSAL_LOG_INTERVAL:
            log.warning(event, times=self.count.pop(event), **fields)
            self.logged_at[event] = now


class _Server:
    """State shared by the accept loop and the connection handlers."""

    def __init__(self, backend: Any, access: Access, limits: Limits | Callable[[], Limits],
                 max_line: int):
        self.backend = backend
        self.access = access
        self._limits = limits  # or a function giving the current ones (they change on reload)
        self.max_line = max_line
        self.active = 0                      # connections being served
        self.per_uid: Counter[int] = Counter()  # of them, by peer uid; no zero entries
        self.refusals = _Throttled()
        self.local: dict[str, Callable[..., Any]] = {"ping": self.ping}

    @property
    def limits(self) -> Limits:
        return self._limits if isinstance(self._limits, Limits) else self._limits()

    def ping(self) -> dict:
        return {"pong": True, "pid": os.getpid()}

    async def accept_loop(self, listener: stdsocket.socket, nursery: trio.Nursery) -> None:
        """Take connections a burst at a time: everything queued (up to ACCEPT_BURST)
        is accepted and admitted or refused before other tasks run again. Queued
        connections are what a flood fills the listen queue with; emptying it in one
        go is what lets a blocked connect (root's ``coschedctl``) in."""
        while True:
            await trio.lowlevel.wait_readable(listener)
            for _ in range(ACCEPT_BURST):
                try:
                    raw, _ = listener.accept()   # non-blocking: trio made it so
                except BlockingIOError:
                    break
                except OSError as exc:
                    await self._accept_failed(exc)
                    break
                self._admit(raw, nursery)
            await trio.lowlevel.checkpoint()

    def _admit(self, raw: stdsocket.socket, nursery: trio.Nursery) -> None:
        try:
            pid, uid, gid = peer_credentials(raw)
        except OSError:
            raw.close()
            return
        reason = self._over_limit(uid)
        if reason is not None:
            self._refuse_busy(raw, uid, reason)
            return
        self.active += 1
        self.per_uid[uid] += 1
        nursery.start_soon(self.connection, trio.socket.from_stdlib_socket(raw), pid, uid, gid)

    def _over_limit(self, uid: int) -> str | None:
        """Why a new connection of ``uid`` is refused, or None to admit it."""
        lim = self.limits
        if self.active >= lim.max_connections:
            return f"too many connections (limit {lim.max_connections})"
        if self.access.privileged(uid):
            return None
        if self.active >= lim.max_connections - lim.reserved:
            return (f"too many connections (limit {lim.max_connections}, of which "
                    f"{lim.reserved} are kept for root and the daemon's user)")
        if self.per_uid[uid] >= lim.per_user:
            return f"uid {uid} already has {lim.per_user} connections open, its limit"
        return None

    async def _accept_failed(self, exc: OSError) -> None:
        await accept_failed(exc, "control")

    def _refuse_busy(self, raw: stdsocket.socket, uid: int, reason: str) -> None:
        """Answer ``busy`` without waiting: a peer that does not read must not hold up
        the accept loop."""
        self.refusals.warning("control connection refused: busy", reason=reason, uid=uid,
                              active=self.active)
        data = protocol.encode(protocol.err(None, protocol.BUSY, reason))
        with raw:
            try:
                raw.send(data, stdsocket.MSG_DONTWAIT | stdsocket.MSG_NOSIGNAL)
            except OSError:
                pass

    def adopt(self, conn: stdsocket.socket, initial: bytes, nursery: trio.Nursery) -> None:
        """Serve a connection the stall desk accepted (and began to read) for us. It was
        accepted while the loop stalled, so it is admitted beyond the limits."""
        trio_conn = trio.socket.from_stdlib_socket(conn)
        try:
            pid, uid, gid = peer_credentials(trio_conn)
        except OSError:
            trio_conn.close()
            return
        try:
            nursery.start_soon(self.connection, trio_conn, pid, uid, gid, initial)
        except RuntimeError:   # the server is closing (this runs as a run_sync_soon callback,
            trio_conn.close()  # where an exception would end the whole run)
            return
        self.active += 1
        self.per_uid[uid] += 1

    def may_control(self, conn: stdsocket.socket) -> bool:
        """Whether the peer has control access (for the stall desk's thread)."""
        _pid, uid, gid = peer_credentials(conn)
        groups = peer_groups(conn)
        if groups is None:   # no SO_PEERGROUPS: the user database (blocking is fine here)
            groups = {g for g in self.access.groups() if user_in_group(uid, g)}
        return peer_level(uid, set(groups) | {gid}, self.access) == CONTROL

    async def connection(self, conn: trio.socket.SocketType, pid: int, uid: int,
                         gid: int, initial: bytes = b"") -> None:
        """Serve one client until it closes; nothing it does escapes from here."""
        try:
            with conn:
                await self._converse(conn, pid, uid, gid, initial)
        except (OSError, EOFError) as exc:
            log.debug("control peer dropped", error=f"{type(exc).__name__}: {exc}")
        except Exception:
            log.exception("control connection failed")
        finally:
            self.active -= 1
            self.per_uid[uid] -= 1
            if not self.per_uid[uid]:
                del self.per_uid[uid]

    async def _converse(self, conn: trio.socket.SocketType, pid: int, uid: int,
                        gid: int, initial: bytes = b"") -> None:
        level = await self._level(conn, uid, gid)
        if level is None:
            self.refusals.warning("control peer refused", pid=pid, uid=uid, gid=gid)
            await send_all(conn, protocol.encode(protocol.err(
                None, protocol.FORBIDDEN, f"uid {uid} may not use this control socket; "
                "read access is granted by control.read_users or control.read_group, "
                "control access by control.control_users or control.control_group")))
            return
        reader = LineReader(conn, self.max_line, initial)
        while True:
            line = await self._next_request(conn, reader, uid)
            if line is None:
                return
            response = await self._answer(line, pid=pid, uid=uid, level=level)
            if isinstance(response, _Streaming):
                if not await self._stream(conn, reader, response):
                    return
                continue
            if isinstance(response.get("result"), protocol.Chunked):
                await _send_pieces(conn, response["result"].pieces(response["id"]),
                                   self.limits.send_timeout)
            else:
                await send_all(conn, protocol.encode(response), self.limits.send_timeout)
            if not response["ok"] and response["error"]["code"] == protocol.BAD_REQUEST:
                return

    async def _next_request(self, conn: trio.socket.SocketType, reader: LineReader,
                            uid: int) -> bytes | None:
        """The next non-blank request line; None when the connection should end: the
        peer closed it, sent too long a line, or sent no request within idle_timeout."""
        idle = self.limits.idle_timeout
        try:
            with trio.move_on_after(idle):
                while True:
                    line = await reader.readline()
                    if line is None or line.strip():
                        return line
        except LineTooLong:
            await send_all(conn, protocol.encode(protocol.err(
                None, protocol.TOO_LARGE, f"request line longer than {self.max_line} bytes")))
            return None
        log.debug("control connection idle; closing", uid=uid, idle_timeout=idle)
        await send_all(conn, protocol.encode(protocol.err(
            None, protocol.TIMEOUT, f"no request for {idle:g}s; closing the connection")))
        return None

    async def _level(self, conn: trio.socket.SocketType, uid: int, gid: int) -> str | None:
        groups = peer_groups(conn)
        if groups is not None:
            return peer_level(uid, groups | {gid}, self.access)
        # No SO_PEERGROUPS: ask the user database, which may block (NSS, LDAP), off the
        # event loop, and only when the peer's uid and primary gid do not decide already.
        level = peer_level(uid, {gid}, self.access)
        wanted = self.access.groups() - {gid}
        if level == CONTROL or not wanted:
            return level
        member = await trio.to_thread.run_sync(
            lambda: {g for g in wanted if user_in_group(uid, g)})
        return peer_level(uid, member | {gid}, self.access)

    async def _stream(self, conn: trio.socket.SocketType, reader: LineReader,
                      streaming: _Streaming) -> bool:
        """Write a stream's items, then its result (see the module docstring). False when
        the peer closed the connection meanwhile. Only the wait for the next item is
        interrupted by the peer; a line being written is always written whole."""
        stream, rid = streaming.stream, streaming.request_id
        items = stream.__aiter__()
        peer: dict[str, Any] = {"closed": False, "spoke": False, "waiting": None}
        try:
            async with _unwrapped_errors(), trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_peer, reader, peer)
                while not peer["spoke"]:
                    with trio.CancelScope() as peer["waiting"]:
                        try:
                            item = await items.__anext__()
                        except StopAsyncIteration:
                            break
                    if peer["waiting"].cancelled_caught:
                        break
                    await send_all(conn, protocol.encode(protocol.stream_item(rid, item)),
                                   self.limits.send_timeout)
                nursery.cancel_scope.cancel()
        finally:
            await _close_stream(stream)
        if peer["closed"]:
            return False
        await send_all(conn, protocol.encode(protocol.ok(rid, getattr(stream, "result", None))),
                       self.limits.send_timeout)
        return True

    @staticmethod
    async def _watch_peer(reader: LineReader, peer: dict[str, Any]) -> None:
        """Until the peer sends something (its next request, kept for later) or closes."""
        try:
            peer["closed"] = not await reader.fill()
        except OSError:  # reset by the peer: gone all the same
            peer["closed"] = True
        peer["spoke"] = True
        if peer["waiting"] is not None:
            peer["waiting"].cancel()

    async def _answer(self, line: bytes, *, pid: int, uid: int,
                      level: str) -> dict | _Streaming:
        try:
            request = protocol.decode_request(line)
        except ControlError as exc:
            log.debug("control request rejected", code=exc.code, message=exc.message, uid=uid)
            return protocol.err(exc.request_id, exc.code, exc.message)
        log.debug("control request", cmd=request.cmd, args=request.args, pid=pid, uid=uid)
        spec = protocol.COMMANDS[request.cmd]
        try:
            if spec.level == CONTROL and level != CONTROL:
                raise ControlError(protocol.FORBIDDEN, (
                    f"{request.cmd!r} needs control access; uid {uid} has read access only "
                    "(control access is granted by control.control_users or "
                    "control.control_group)"))
            result = await self._dispatch(request)
        except ControlError as exc:
            return protocol.err(request.id, exc.code, exc.message)
        except Exception as exc:
            log.exception("control command failed", cmd=request.cmd, args=request.args)
            return protocol.err(request.id, protocol.INTERNAL, f"{type(exc).__name__}: {exc}")
        if _is_stream(result):
            return _Streaming(request.id, result)
        if level != CONTROL and spec.private and isinstance(result, dict):
            result = {k: v for k, v in result.items() if k not in spec.private}
        return protocol.ok(request.id, result)

    async def _dispatch(self, request: protocol.Request) -> Any:
        """Call the handler named by the command: the server's own, else the backend's
        method of the same name (or the one its entry names) with the validated
        arguments as keywords."""
        method = protocol.COMMANDS[request.cmd].method or request.cmd
        handler = self.local.get(request.cmd) or getattr(self.backend, method)
        result = handler(**request.args)
        if inspect.isawaitable(result):
            result = await result
        return result


async def _send_pieces(conn: trio.socket.SocketType, pieces, timeout: float) -> None:
    """Send a long answer piece by piece, the event loop running between pieces: each is
    rendered only when the previous one was taken, so a slow reader holds one piece."""
    for piece in pieces:
        await send_all(conn, piece, timeout)
        await trio.sleep(0)


@dataclass(frozen=True, slots=True)
class _Streaming:
    """A request answered with a stream (an async iterator from the backend)."""

    request_id: int | str
    stream: Any


@asynccontextmanager
async def _unwrapped_errors():
    """A connection error inside a nursery arrives wrapped in an exception group: let it
    out as itself, so that the connection ends like any dropped peer."""
    try:
        yield
    except BaseExceptionGroup as group:
        match, _ = group.split((OSError, EOFError))
        if match is None:
            raise
        first = match
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


def _is_stream(result: Any) -> bool:
    return hasattr(result, "__aiter__") and not isinstance(result, (str, bytes, dict, list))


async def _close_stream(stream: Any) -> None:
    """Let the producer forget the follower, however the stream ended."""
    close = getattr(stream, "close", None)
    if callable(close):
        close()
    elif callable(aclose := getattr(stream, "aclose", None)):
        with trio.CancelScope(shield=True):
            await aclose()


async def accept_failed(exc: OSError, what: str) -> None:
    """After a failed accept(): go on at once when the peer alone is to blame, pause
    when the process is out of descriptors or memory (the listener stays readable, and
    retrying at once would spin), re-raise anything else."""
    if exc.errno in _ACCEPT_RETRY:
        return
    if exc.errno not in _ACCEPT_EXHAUSTED:
        raise exc
    log.error(f"{what} accept failed; pausing", error=str(exc), pause=ACCEPT_BACKOFF)
    await trio.sleep(ACCEPT_BACKOFF)


def _desk(server: _Server, listeners: list[stdsocket.socket], nursery: trio.Nursery,
          max_line: int) -> StallDesk:
    token = trio.lowlevel.current_trio_token()
    return StallDesk([sock.fileno() for sock in listeners], may_control=server.may_control,
                     pid=os.getpid(),
                     max_line=max_line,
                     hand_over=lambda conn, data: token.run_sync_soon(
                         server.adopt, conn, data, nursery))


async def serve(path: Path, mode: int, backend: Any, *, max_line: int,
                access: Access | None = None, limits: Limits | Callable[[], Limits] = Limits(),
                task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
                guard: Any = None, connections: Callable[[Callable[[], int]], None] | None = None,
                passed: stdsocket.socket | None = None, private: Path | None = None) -> None:
    """Serve the control protocol on a unix socket at ``path`` until cancelled.

    A stale socket file is replaced; a live one raises ``OSError`` ("another coschedd
    is listening on ..."), as does a non-socket file in the way. The socket file gets
    permissions ``mode`` (plus connect access for others when ``access`` needs it,
    see the module docstring) and ``access``'s group, and is removed on exit.
    ``task_status.started(path)`` is called once clients can connect. ``access``
    defaults to root and the daemon's own user only. ``limits`` may be a function
    returning the current limits (a reload changes them). With a step ``guard``, its
    watchdog takes connections while a step stalls the loop (``cosched.stalldesk``).
    ``connections``, if given, is handed a function that tells how many connections
    are open (for the metrics). ``passed`` is a listening socket that the service
    manager created (socket activation): it is served as it is, and its file is
    never removed, so clients queue in it while the daemon restarts. ``private``: a
    second socket served alike, mode 0600 (see ``bind_private``).
    """
    path = Path(path)
    access = Access() if access is None else access
    if access.world_connectable():
        mode |= 0o006
    if passed is None:
        await _remove_stale(path)
        raw = _bind(path, mode, access.socket_group())
        st = os.lstat(path)
    else:  # systemd's (cosched.activation): its file, mode and group are the unit's
        raw, st = passed, None
    raw.setblocking(False)   # the accept loops wait until it is readable, then accept
    socks, extra = [raw], None
    server = _Server(backend, access, limits, max_line)
    if connections is not None:
        connections(lambda: server.active)
    try:
        if private is not None and (extra := await bind_private(private)) is not None:
            socks.append(extra[0])
        if st is not None:
            log.info("control socket listening", path=str(path), mode=f"{mode:04o}",
                     group=st.st_gid)
        else:
            log.info("control socket passed by the service manager", path=str(path))
        async with trio.open_nursery() as nursery:
            if guard is not None:
                guard.desk = _desk(server, socks, nursery, max_line)
            task_status.started(path)
            for sock in socks[1:]:
                nursery.start_soon(server.accept_loop, sock, nursery)
            await server.accept_loop(raw, nursery)
    finally:
        for sock in socks:
            sock.close()
        if guard is not None and guard.desk is not None:
            guard.desk, desk = None, guard.desk
            desk.close()
        if st is not None:
            _remove_if_ours(path, (st.st_dev, st.st_ino))
        if extra is not None:
            _remove_if_ours(private, extra[1])
        log.info("control socket closed", path=str(path))


async def bind_private(path: Path) -> tuple[stdsocket.socket, tuple[int, int]] | None:
    """The private socket: mode 0600, so only root and the daemon's own user can
    connect, and nobody else can fill its listen queue (a connect flood on the shared
    socket keeps no one out of this one; coschedctl tries it first). None, with a
    warning, when it cannot be made (its path too long for a unix socket, a live or
    foreign file in the way): the shared socket serves everyone then."""
    try:   # (a path too long for a unix socket fails in bind)
        await _remove_stale(path)
        raw = _bind(path, 0o600, None)
        st = os.lstat(path)
    except OSError as e:
        log.warning("no private control socket; the shared one serves root too",
                    path=str(path), error=e.strerror or str(e))
        return None
    raw.setblocking(False)   # as the accept loop needs
    return raw, (st.st_dev, st.st_ino)
