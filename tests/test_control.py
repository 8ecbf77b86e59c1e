"""Tests of cosched.control: the real ``serve`` on a unix socket in tmp_path, driven
with real sockets inside ``trio.run``, against a recording backend of our own."""

import errno
import grp
import json
import os
import pwd
import socket
import stat
import threading
from collections import Counter
from functools import partial

import pytest
import trio
import trio.testing
from hypothesis import strategies as st
from structlog.testing import capture_logs

from cosched import protocol
from cosched.control import Access, Limits, peer_level, serve, user_in_group
from cosched.protocol import ControlError

WAIT = 10  # seconds; bound of every test's trio.run
MAX_LINE = 4096
NOBODY = 65534

TASK = {"id": 1, "name": "ticker", "job": "ticker", "state": "suspended",
        "waiting_on": None, "busy": 0.5, "steps": 3, "age": 12.0, "restarts": 0,
        "yielded": [1], "error": None}


class Backend:
    """Records each call and answers with fixed results, like the supervisor would.

    Task "missing" does not exist; task "bug" makes the backend raise a plain bug.
    With ``gate`` set, resume waits until ``gate_size`` resumes are in flight.
    """

    def __init__(self, gate_size=0):
        self.calls = []
        self.gate_size = gate_size
        self.in_flight = 0
        self.gate = trio.Event()
        self.release = None  # a trio.Event that resume waits on, when set
        self.resumed = trio.Event()  # set once a resume has reached the backend

    def _task(self, task):
        if task == "missing":
            raise ControlError(protocol.NO_SUCH_TASK, f"no task {task!r}")
        if task == "bug":
            raise RuntimeError("the backend tripped")
        return dict(TASK, id=task if isinstance(task, int) else 1)

    def status(self, task, job=None, state=None, columns=None, pages=False, limit=None):
        self.calls.append(("status", task) if job is None and state is None
                          else ("status", task, job, state))
        tasks = [TASK] if task is None else [self._task(task)]
        return {"daemon": {"pid": os.getpid()}, "tasks": tasks, "job_errors": []}

    def show(self, task):
        self.calls.append(("show", task))
        return dict(self._task(task), stack=[], traceback=None)

    async def resume(self, task, values, timeout):
        self.calls.append(("resume", task, values, timeout))
        self.resumed.set()
        if self.gate_size:
            self.in_flight += 1
            if self.in_flight == self.gate_size:
                self.gate.set()
            await self.gate.wait()
        if self.release is not None:
            await self.release.wait()
        return {"task": self._task(task), "outcome": "yielded", "values": values, "error": None}

    async def kill(self, task):
        self.calls.append(("kill", task))
        return {"task": dict(self._task(task), state="killed")}

    async def start(self, job, force=False):
        self.calls.append(("start", job) if not force else ("start", job, "force"))
        if job == "nope":
            raise ControlError(protocol.NO_SUCH_JOB, "no job 'nope'")
        return {"task": dict(TASK, job=job, state="starting")}

    async def reload(self):
        self.calls.append(("reload",))
        return {"loaded": ["ticker"], "removed": [], "errors": []}

    def jobs(self):
        self.calls.append(("jobs",))
        return {"jobs": [{"name": "ticker", "path": "jobs/ticker.py", "state": "loaded",
                          "error": None, "tasks": [1]}]}


# -- helpers ----------------------------------------------------------------------

def run_server(tmp_path, body, backend=None, *, mode=0o660, **options):
    """Run ``serve`` on tmp_path/c.sock and ``await body(path)`` next to it, then stop."""
    path = tmp_path / "c.sock"
    options = {"max_line": MAX_LINE} | options

    async def main():
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(serve, path, mode, backend or Backend(), **options))
                await body(path)
                nursery.cancel_scope.cancel()

    trio.run(main)


async def connect(path):
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.connect(os.fspath(path))
    return sock


async def send(sock, request):
    data = request if isinstance(request, bytes) else protocol.encode(request)
    view = memoryview(data)
    while view:
        view = view[await sock.send(view):]


async def recv_until(sock, done):
    """Bytes received until ``done(buffer)`` or the end of the stream (EOF or reset)."""
    buf = b""
    while not done(buf):
        try:
            chunk = await sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        buf += chunk
    return buf


async def read_response(sock):
    line = await recv_until(sock, lambda b: b.endswith(b"\n"))
    assert line.endswith(b"\n"), f"no complete response, got {line!r}"
    return json.loads(line)


async def closed_by_server(sock):
    return await recv_until(sock, lambda b: False) == b""


async def ask(path, request):
    """One request on a fresh connection; the parsed response."""
    with await connect(path) as sock:
        await send(sock, request)
        return await read_response(sock)


def request(id, cmd, **args):
    return protocol.make_request(id, cmd, args)


def error_of(response):
    assert response["ok"] is False, response
    return response["error"]["code"]


# -- commands ---------------------------------------------------------------------

def test_ping_is_answered_by_the_server(tmp_path):
    backend = Backend()

    async def body(path):
        response = await ask(path, request(1, "ping"))
        assert response == {"id": 1, "ok": True, "result": {"pong": True, "pid": os.getpid()}}

    run_server(tmp_path, body, backend)
    assert backend.calls == []


def test_each_command_dispatches_to_the_backend(tmp_path):
    backend = Backend()
    results = {}

    async def body(path):
        for i, (cmd, args) in enumerate([
            ("status", {}), ("status", {"task": 2}), ("show", {"task": "ticker"}),
            ("resume", {"task": 1, "values": [1, "x"], "timeout": 2.5}),
            ("kill", {"task": 1}), ("start", {"job": "ticker"}), ("reload", {}), ("jobs", {}),
        ]):
            response = await ask(path, protocol.make_request(i, cmd, args))
            assert response["ok"] is True and response["id"] == i, response
            results[i] = response["result"]

    run_server(tmp_path, body, backend)
    assert backend.calls == [
        ("status", None), ("status", 2), ("show", "ticker"), ("resume", 1, [1, "x"], 2.5),
        ("kill", 1), ("start", "ticker"), ("reload",), ("jobs",),
    ]
    assert results[1]["tasks"][0]["id"] == 2
    assert results[3]["values"] == [1, "x"]
    assert results[4]["task"]["state"] == "killed"
    assert results[7]["jobs"][0]["name"] == "ticker"


def test_resume_defaults_reach_the_backend(tmp_path):
    backend = Backend()

    async def body(path):
        assert (await ask(path, request(1, "resume", task="t")))["ok"] is True

    run_server(tmp_path, body, backend)
    assert backend.calls == [("resume", "t", [], 30)]


def test_requests_on_one_connection_are_answered_in_order(tmp_path):
    async def body(path):
        with await connect(path) as sock:
            await send(sock, protocol.encode(request("a", "ping")) + b"\n"
                       + protocol.encode(request("b", "jobs")))  # a blank line between
            data = await recv_until(sock, lambda b: b.count(b"\n") == 2)
        first, second = map(json.loads, data.splitlines())
        assert (first["id"], second["id"]) == ("a", "b")
        assert "jobs" in second["result"]

    run_server(tmp_path, body)


# -- errors -----------------------------------------------------------------------

def test_malformed_json_is_bad_request_and_closes_the_connection(tmp_path):
    async def body(path):
        with await connect(path) as sock:
            await send(sock, b'{"id": 1, "cmd": \n')
            response = await read_response(sock)
            assert await closed_by_server(sock)
        assert response["id"] is None and error_of(response) == "bad-request"
        assert (await ask(path, request(2, "ping")))["ok"] is True

    run_server(tmp_path, body)


def test_over_long_line_is_too_large_and_closes_the_connection(tmp_path):
    async def body(path):
        with await connect(path) as sock:
            try:
                await send(sock, b'{"id": 1, "cmd": "ping", "pad": "' + b"x" * 100_000 + b'"}\n')
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server hung up before taking it all
            response = await read_response(sock)
            assert await closed_by_server(sock)
        assert error_of(response) == "too-large"
        assert str(MAX_LINE) in response["error"]["message"]
        assert (await ask(path, request(2, "ping")))["ok"] is True

    run_server(tmp_path, body)


def test_over_long_line_is_refused_before_its_newline_arrives(tmp_path):
    async def body(path):
        with await connect(path) as sock:
            await send(sock, b"x" * (MAX_LINE * 3))  # no newline, connection left open
            response = await read_response(sock)
        assert error_of(response) == "too-large"

    run_server(tmp_path, body)


def test_line_of_exactly_max_line_bytes_is_accepted(tmp_path):
    async def body(path):
        line = protocol.encode(request(1, "ping")).rstrip(b"\n")
        response = await ask(path, line + b" " * (MAX_LINE - len(line)) + b"\n")
        assert response["ok"] is True

    run_server(tmp_path, body)


def test_unknown_command_lists_commands_and_keeps_the_connection(tmp_path):
    async def body(path):
        with await connect(path) as sock:
            await send(sock, request(1, "frobnicate"))
            response = await read_response(sock)
            await send(sock, request(2, "ping"))
            assert (await read_response(sock))["ok"] is True
        assert error_of(response) == "unknown-command" and response["id"] == 1
        assert "status" in response["error"]["message"]

    run_server(tmp_path, body)


def test_wrong_arg_type_is_bad_request_and_not_dispatched(tmp_path):
    backend = Backend()

    async def body(path):
        response = await ask(path, request(5, "show", task=[1]))
        assert error_of(response) == "bad-request" and response["id"] == 5
        assert "'task'" in response["error"]["message"]

    run_server(tmp_path, body, backend)
    assert backend.calls == []


def test_backend_control_error_is_passed_through(tmp_path):
    async def body(path):
        response = await ask(path, request(3, "show", task="missing"))
        assert response == {"id": 3, "ok": False,
                             "error": {"code": "no-such-task", "message": "no task 'missing'"}}

    run_server(tmp_path, body)


def test_backend_bug_is_internal_and_the_next_request_works(tmp_path):
    async def body(path):
        with await connect(path) as sock:
            await send(sock, request(4, "kill", task="bug"))
            response = await read_response(sock)
            await send(sock, request(5, "kill", task=1))
            assert (await read_response(sock))["ok"] is True
        assert error_of(response) == "internal" and response["id"] == 4
        assert response["error"]["message"] == "RuntimeError: the backend tripped"

    with capture_logs() as logs:
        run_server(tmp_path, body)
    assert any(e["log_level"] == "error" and e.get("exc_info") for e in logs), logs


def test_unserializable_result_still_makes_a_response(tmp_path):
    class OddBackend(Backend):
        def jobs(self):
            return {"jobs": [object()]}

    async def body(path):
        response = await ask(path, request(1, "jobs"))
        assert response["ok"] is True and response["result"]["jobs"][0].startswith("<object")

    run_server(tmp_path, body, OddBackend())


# -- misbehaving peers ------------------------------------------------------------

def test_peer_leaving_mid_request_is_dropped_quietly(tmp_path):
    async def body(path):
        with await connect(path) as sock:
            await send(sock, request(1, "ping"))
            await read_response(sock)  # past the credential check
            await send(sock, b'{"id": 2, "cmd": "pi')
        await trio.testing.wait_all_tasks_blocked()
        assert (await ask(path, request(3, "ping")))["ok"] is True

    with capture_logs() as logs:
        run_server(tmp_path, body)
    assert [e for e in logs if e["event"] == "control peer dropped"], logs
    assert not [e for e in logs if e["log_level"] in ("error", "critical")], logs


def test_peer_leaving_before_its_response_is_dropped_quietly(tmp_path):
    backend = Backend()
    backend.release = trio.Event()

    async def body(path):
        with await connect(path) as sock:
            await send(sock, request(1, "resume", task=1))
            await backend.resumed.wait()  # the backend holds the request
        backend.release.set()  # now the server writes to a closed peer
        await trio.testing.wait_all_tasks_blocked()  # ... and is done with it
        assert (await ask(path, request(2, "ping")))["ok"] is True

    with capture_logs() as logs:
        run_server(tmp_path, body, backend)
    assert backend.calls[0][0] == "resume"
    assert [e for e in logs if e["event"] == "control peer dropped"], logs
    assert not [e for e in logs if e["log_level"] in ("error", "critical")], logs


def test_hundred_concurrent_clients_get_their_own_ids(tmp_path):
    clients = 100
    backend = Backend(gate_size=clients)  # no resume returns before all 100 are in
    answers = {}

    async def client(path, i):
        response = await ask(path, request(f"client-{i}", "resume", task=i, values=[i]))
        answers[i] = response

    async def body(path):
        async with trio.open_nursery() as nursery:
            for i in range(clients):
                nursery.start_soon(client, path, i)

    run_server(tmp_path, body, backend, limits=Limits(max_connections=clients + 10))
    assert len(answers) == clients
    for i, response in answers.items():
        assert response["id"] == f"client-{i}"
        assert response["result"]["values"] == [i] and response["result"]["task"]["id"] == i


def test_connection_over_max_clients_gets_busy(tmp_path):
    async def body(path):
        with await connect(path) as first, await connect(path) as second:
            for sock in (first, second):  # both accepted and held
                await send(sock, request(1, "ping"))
                await read_response(sock)
            with await connect(path) as third:
                response = await read_response(third)
                assert await closed_by_server(third)
            assert error_of(response) == "busy" and response["id"] is None
            await send(first, request(2, "ping"))
            assert (await read_response(first))["ok"] is True

    run_server(tmp_path, body, limits=Limits(max_connections=2, per_user=1, reserved=0))


# -- the socket file --------------------------------------------------------------

@pytest.mark.parametrize("mode", [0o660, 0o600])
def test_socket_file_gets_the_requested_mode(tmp_path, mode):
    async def body(path):
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == mode

    run_server(tmp_path, body, mode=mode)


def test_socket_file_is_removed_on_exit(tmp_path):
    async def body(path):
        assert path.exists()

    run_server(tmp_path, body)
    assert not (tmp_path / "c.sock").exists()


def test_stale_socket_file_is_replaced(tmp_path):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(os.fspath(tmp_path / "c.sock"))
    stale.close()  # the file stays, nobody listens
    os.chmod(tmp_path / "c.sock", 0o604)

    async def body(path):
        assert (await ask(path, request(1, "ping")))["ok"] is True
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660  # a new file

    run_server(tmp_path, body)


def test_live_socket_file_raises(tmp_path):
    path = tmp_path / "c.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(os.fspath(path))
        live.listen()

        async def main():
            with trio.fail_after(WAIT):
                await serve(path, 0o660, Backend(), max_line=MAX_LINE)

        with pytest.raises(OSError, match="another coschedd is listening on") as info:
            trio.run(main)
        assert info.value.errno == errno.EADDRINUSE
        assert stat.S_ISSOCK(os.lstat(path).st_mode)  # left alone


def test_file_that_is_not_a_socket_is_not_replaced(tmp_path):
    path = tmp_path / "c.sock"
    path.write_text("precious")

    async def main():
        with trio.fail_after(WAIT):
            await serve(path, 0o660, Backend(), max_line=MAX_LINE)

    with pytest.raises(FileExistsError, match="not a socket"):
        trio.run(main)
    assert path.read_text() == "precious"


# -- credentials ------------------------------------------------------------------

def level(uid, groups=(), *, read_uids=(), read_gid=None, control_uids=(), control_gid=None,
          own_uid=1000):
    return peer_level(uid, set(groups), Access(frozenset(read_uids), read_gid,
                                               frozenset(control_uids), control_gid, own_uid))


def test_root_and_own_user_always_have_control():
    assert level(0) == "control"
    assert level(1000, own_uid=1000) == "control"
    assert level(0, read_uids={0}) == "control"  # listing root as a reader does not demote it


def test_listed_uid_only():
    assert level(4242, control_uids={4242}) == "control"
    assert level(4242, read_uids={4242}) == "read"
    assert level(4243, read_uids={4242}, control_uids={4242}) is None


def test_level_by_group():
    assert level(4242, {777}, control_gid=777) == "control"
    assert level(4242, {777}, read_gid=777) == "read"
    assert level(4242, {5, 777}, read_gid=777, control_gid=778) == "read"
    assert level(4242, {777}, read_gid=777, control_gid=777) == "control"
    assert level(4242, {777}) is None


def test_control_implies_read():
    assert level(4242, {1}, read_gid=2, control_uids={4242}) == "control"
    assert level(4242, {2}, read_gid=2, control_gid=3) == "read"


def test_access_decides_how_open_the_socket_is():
    assert Access().socket_group() is None and not Access().world_connectable()
    one = Access(read_gid=5)
    assert one.socket_group() == 5 and not one.world_connectable()
    same = Access(read_gid=5, control_gid=5)
    assert same.socket_group() == 5 and not same.world_connectable()
    two = Access(read_gid=5, control_gid=6)
    assert two.socket_group() is None and two.world_connectable()
    assert Access(read_uids=frozenset({4242})).world_connectable()
    assert Access(control_uids=frozenset({4242}), control_gid=5).world_connectable()


def test_user_in_group_by_primary_group_of_the_user():
    user = _nobody()
    assert user_in_group(user.pw_uid, user.pw_gid)


def test_user_in_group_by_supplementary_group_membership():
    pair = _member_and_group()
    if pair is None:
        pytest.skip("no user with a supplementary group on this machine")
    uid, gid = pair
    assert user_in_group(uid, gid)


def test_user_not_in_the_group():
    user = _nobody()
    assert not user_in_group(user.pw_uid, 0)
    assert not user_in_group(987654, 0)  # no such user


def _nobody():
    try:
        return pwd.getpwuid(NOBODY)
    except KeyError:
        pytest.skip(f"no user with uid {NOBODY} here")


def _member_and_group():
    """(uid, gid) of a user listed in a group that is not its primary group."""
    for group in grp.getgrall():
        for name in group.gr_mem:
            try:
                user = pwd.getpwnam(name)
            except KeyError:
                continue
            if user.pw_gid != group.gr_gid:
                return user.pw_uid, group.gr_gid
    return None


def _exchange_in_child(sock_name, cwd, uid, out_fd):
    """Runs in a forked child: become ``uid`` (if given), ping, write the reply to out_fd."""
    code = 1
    try:
        os.chdir(cwd)
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(WAIT)
            sock.connect(sock_name)
            try:
                sock.sendall(b'{"id": 1, "cmd": "ping"}\n')
            except OSError:
                pass  # refused peers may be hung up on before they write
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        os.write(out_fd, data)
        code = 0
    except BaseException as exc:
        os.write(out_fd, repr(exc).encode())
    finally:
        os._exit(code)


def foreign_peer(tmp_path):
    """(uid, gid, serve options, own uid) for a peer the server does not trust by default.

    As root, a child process switches to uid 65534 (root is always trusted); otherwise
    the child keeps our uid and the server is told its own uid is another one."""
    if os.getuid() == 0:
        tmp_path.chmod(0o711)  # the child only needs to reach c.sock from inside
        return NOBODY, NOBODY, {"mode": 0o666, "access": Access(own_uid=12345)}, 12345
    own = os.getuid() + 1
    return os.getuid(), os.getgid(), {"access": Access(own_uid=own)}, own


async def ping_from(uid, tmp_path, path):
    """Connect with real credentials of ``uid`` from a forked child; its raw answer."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        _exchange_in_child(path.name, path.parent, None if uid == os.getuid() else uid, write_fd)
    os.close(write_fd)
    try:
        async with trio.lowlevel.FdStream(read_fd) as stream:
            data = b""
            while chunk := await stream.receive_some():
                data += chunk
        return data
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)


def test_foreign_peer_is_forbidden_for_real(tmp_path):
    uid, _, options, _ = foreign_peer(tmp_path)
    backend = Backend()

    async def body(path):
        data = await ping_from(uid, tmp_path, path)
        response = json.loads(data)
        assert error_of(response) == "forbidden", response
        assert f"uid {uid}" in response["error"]["message"]
        assert (await ask(path, request(2, "ping")))["ok"] is True  # we are root or trusted

    with capture_logs() as logs:
        run_server(tmp_path, body, backend, **options)
    assert [e for e in logs if e["event"] == "control peer refused" and e["uid"] == uid]


def test_refused_peers_that_keep_coming_do_not_fill_the_log(tmp_path):
    uid, _, options, _ = foreign_peer(tmp_path)

    async def body(path):
        for _ in range(3):
            assert error_of(json.loads(await ping_from(uid, tmp_path, path))) == "forbidden"

    with capture_logs() as logs:
        run_server(tmp_path, body, **options)
    refused = [e for e in logs if e["event"] == "control peer refused"]
    assert len(refused) == 1 and refused[0]["times"] == 1, refused


def test_foreign_peer_admitted_by_listed_uid(tmp_path):
    uid, _, options, own = foreign_peer(tmp_path)
    options["access"] = Access(read_uids=frozenset({uid}), own_uid=own)

    async def body(path):
        response = json.loads(await ping_from(uid, tmp_path, path))
        assert response["ok"] is True and response["result"]["pong"] is True, response

    run_server(tmp_path, body, **options)


def test_foreign_peer_admitted_by_its_gid(tmp_path):
    uid, gid, options, own = foreign_peer(tmp_path)
    options["access"] = Access(control_gid=gid, own_uid=own)

    async def body(path):
        response = json.loads(await ping_from(uid, tmp_path, path))
        assert response["ok"] is True, response

    run_server(tmp_path, body, **options)


# -- fuzzing the backend arguments against the real supervisor --------------------

FUZZ_JOBS = {
    "asker": "from cosched import coro\n\nasync def main(task):\n"
             "    while True:\n        await coro.yield_('more?')\n",
    "sleeper": "import trio\n\nasync def main(task):\n    await trio.sleep(1000)\n",
    "quick": "async def main(task):\n    return 1\n",
    "off": "async def main(task):\n    return 2\n",
    "broken": "async def main(task)\n",
}


class SupervisorThread:
    """The real Supervisor behind the real ``serve``, in a thread with its own trio.run,
    on a jobs folder of FUZZ_JOBS; requests are sent from the test's thread."""

    def __init__(self, tmp_path):
        from cosched.config import parse_config
        (tmp_path / "jobs").mkdir()
        for name, source in FUZZ_JOBS.items():
            (tmp_path / "jobs" / f"{name}.py").write_text(source)
        self.config = parse_config({"daemon": {"jobs_dir": "jobs", "stop_timeout": 2},
                                    "jobs": {"restart": "no"},
                                    "job": {"off": {"enabled": False}}}, tmp_path, environ={})
        self.path = tmp_path / "c.sock"
        self.ready = threading.Event()
        self.thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self):
        from cosched.supervisor import Supervisor
        self.token = trio.lowlevel.current_trio_token()
        self.sup = sup = Supervisor(self.config)
        with trio.CancelScope() as self.scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(serve, self.path, 0o600, sup, max_line=65536))
                await nursery.start(sup.run)
                self.ready.set()
                await trio.sleep_forever()

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(WAIT), "supervisor did not start"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT)
        self.sock.connect(os.fspath(self.path))
        self.buffer = b""
        return self

    def ask(self, line: bytes) -> dict:
        """One request on the shared connection (a fresh one after a bad request)."""
        self.sock.sendall(line)
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, "the server closed the connection without answering"
            self.buffer += chunk
        answer, self.buffer = self.buffer.split(b"\n", 1)
        response = json.loads(answer)
        if not response["ok"] and response["error"]["code"] == "bad-request":
            self.sock.close()  # the server hangs up after a bad request
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(WAIT)
            self.sock.connect(os.fspath(self.path))
            self.buffer = b""
        return response

    def __exit__(self, *exc):
        self.sock.close()
        trio.from_thread.run(self.sup.stop, 5, trio_token=self.token)  # as SIGTERM does
        self.token.run_sync_soon(self.scope.cancel)
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "supervisor thread did not stop"


_TASK_REFS = (st.sampled_from(["asker", "sleeper", "quick", "off", "broken", "1", "2", "\u00b2",
                               "9" * 30, "9" * 5000, "-1", " 1", "１", "\udcff", ""])
              | st.integers(min_value=-2**70, max_value=2**70) | st.text(max_size=8))
_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-10**50, 10**50)
                       | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
                       lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)
_BACKEND_ARGS = {
    "task": _TASK_REFS | _VALUES,
    "job": st.sampled_from(sorted(FUZZ_JOBS) + ["nope", "../quick", "\udcff"]) | _VALUES,
    "state": st.sampled_from(["failed", "suspended", "sleepy"]) | _VALUES,
    "values": st.lists(_VALUES, max_size=3) | _VALUES,
    "timeout": st.sampled_from([0, 0.01, 10**400, -1, 86400.0]) | _VALUES,
    "force": st.booleans() | _VALUES,
    "lines": st.integers(-5, 10**6) | _VALUES,   # logs, events ("follow" stays off: a stream
}                                                # would not end by itself)


@st.composite
def backend_requests(draw):
    cmd = draw(st.sampled_from(sorted(protocol.COMMANDS)))
    names = draw(st.lists(st.sampled_from(sorted(_BACKEND_ARGS)), max_size=3, unique=True))
    args = {name: draw(_BACKEND_ARGS[name]) for name in set(names) | set(
        name for name, arg in protocol.COMMANDS[cmd].args.items() if arg.required)}
    if cmd == "resume" and isinstance(args.get("timeout"), (int, float)):
        args["timeout"] = min(args["timeout"], 0.05)  # a resume of a task that does not
    return json.dumps({"id": 1, "cmd": cmd, "args": args}).encode() + b"\n"  # yield again


def test_no_request_makes_the_real_supervisor_answer_internal(tmp_path):
    from hypothesis import HealthCheck, given, settings

    with SupervisorThread(tmp_path) as server:
        seen = Counter()

        @settings(max_examples=300, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(backend_requests())
        def fuzz(line):
            response = server.ask(line)
            code = "ok" if response["ok"] else response["error"]["code"]
            seen[code] += 1
            assert code != protocol.INTERNAL, (line, response)
            assert code == "ok" or code in protocol.ERROR_CODES, response

        fuzz()
        assert server.ask(b'{"id": 2, "cmd": "ping"}\n')["ok"] is True
    assert seen["ok"] and seen["bad-request"] and seen["no-such-task"], seen
