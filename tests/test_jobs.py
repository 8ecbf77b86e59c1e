"""The example jobs in jobs/, each run for real as the root coroutine of a task.

Every job is loaded from its file and its ``main`` is driven the way the daemon
drives it: ``co = coro.create(main)``, ``ok, *vals = await coro.resume(co, task)``
with a real :class:`cosched.task.TaskContext`; answers to a yield are further
resumes. Every wait is bounded by a trio timeout.
"""

import importlib.util
import inspect
from pathlib import Path

import pytest
import structlog
import trio
import trio.testing
from structlog.testing import capture_logs

from cosched import coro
from cosched.task import TaskContext

JOBS = Path(__file__).resolve().parent.parent / "jobs"


def load(name):
    spec = importlib.util.spec_from_file_location(f"cosched_job_{name}", JOBS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_task(name, config=None, state=None):
    return TaskContext(name, 1, structlog.get_logger().bind(task=name), config or {}, state)


async def start(name, config=None, state=None):
    """Create the task and its root coroutine and resume it once, as the daemon does."""
    task = make_task(name, config, state)
    co = coro.create(load(name).main)
    ok, *vals = await coro.resume(co, task)
    return task, co, ok, vals


def run(fn, timeout=5, **kw):
    async def bounded():
        with trio.fail_after(timeout):
            return await fn()
    return trio.run(bounded, **kw)


@pytest.mark.parametrize("name", ["ticker", "pipeline", "permutations", "downloader",
                                  "echo", "ask", "pingpong", "offload"])
def test_job_file_documents_itself(name):
    mod = load(name)
    assert inspect.iscoroutinefunction(mod.main)
    assert "Config" in mod.__doc__ and "Interact" in mod.__doc__


# --- ticker --------------------------------------------------------------------------


def test_ticker_counts_in_state_across_restarts():
    state = {}

    async def once(expected_ticks):
        task = make_task("ticker", {"interval": 0.05}, state)
        co = coro.create(load("ticker").main)
        with trio.move_on_after(0.12) as cs:    # ticks at 0.05 and 0.10
            await coro.resume(co, task)
        assert cs.cancelled_caught, "the ticker should run forever"
        assert coro.status(co) == "dead"        # cancellation unwound the chain
        assert state["ticks"] == expected_ticks

    with capture_logs() as logs:
        # A virtual clock that jumps to each deadline: exact tick counts, no real waiting.
        trio.run(once, 2, clock=trio.testing.MockClock(autojump_threshold=0))
        trio.run(once, 4, clock=trio.testing.MockClock(autojump_threshold=0))  # a restart
    assert [e["ticks"] for e in logs if e["event"] == "tick"] == [1, 2, 3, 4]


def test_ticker_ticks_on_the_real_clock():
    state = {"ticks": 10}

    async def body():
        task = make_task("ticker", {"interval": 0.05}, state)
        with trio.move_on_after(0.4):
            await coro.resume(coro.create(load("ticker").main), task)

    run(body)
    assert 12 <= state["ticks"] <= 18


def test_ticker_rejects_a_spinning_interval():
    async def body():
        return await start("ticker", {"interval": 0})

    _, co, ok, vals = run(body)
    assert not ok and isinstance(vals[0], ValueError) and "interval" in str(vals[0])


# --- pipeline ------------------------------------------------------------------------


def test_pipeline_numbers_a_file_into_the_output(tmp_path):
    src, out = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("first\nsecond\nthird\n")

    async def body():
        return await start("pipeline", {"path": str(src), "output": str(out)})

    _, co, ok, vals = run(body)
    assert (ok, vals) == (True, [3])
    assert coro.status(co) == "dead"
    assert out.read_text() == "    1 first\n    2 second\n    3 third\n"


def test_pipeline_logs_lines_of_its_own_file_by_default():
    async def body():
        return await start("pipeline")

    with capture_logs() as logs:
        _, _, ok, vals = run(body)
    own = (JOBS / "pipeline.py").read_text().splitlines()
    assert (ok, vals) == (True, [len(own)])
    lines = [e["line"] for e in logs if e["event"] == "line"]
    assert lines == ["%5d %s" % (i, s) for i, s in enumerate(own, 1)]
    assert any(e["event"] == "pipeline done" and e["lines"] == len(own) for e in logs)


def test_pipeline_missing_file_fails_the_task(tmp_path):
    async def body():
        return await start("pipeline", {"path": str(tmp_path / "nope")})

    _, _, ok, vals = run(body)
    assert not ok and isinstance(vals[0], FileNotFoundError)


# --- permutations --------------------------------------------------------------------


def test_permutations_in_the_seed_order():
    async def body():
        return await start("permutations")

    with capture_logs() as logs:
        _, co, ok, vals = run(body)
    assert (ok, vals) == (True, [6])
    assert [e["perm"] for e in logs if e["event"] == "permutation"] == [
        "b c a", "c b a", "c a b", "a c b", "b a c", "a b c"]


def test_permutations_generator_yields_independent_lists():
    async def body():
        return [p async for p in load("permutations").permutations(["a", "b", "c"])]

    assert run(body) == [list("bca"), list("cba"), list("cab"),
                         list("acb"), list("bac"), list("abc")]


def test_permutations_of_configured_items():
    async def body():
        return await start("permutations", {"items": [1, 2, 3, 4]})

    with capture_logs() as logs:
        _, _, ok, vals = run(body)
    perms = [e["perm"] for e in logs if e["event"] == "permutation"]
    assert (ok, vals) == (True, [24])
    assert len(set(perms)) == 24 and sorted(perms[0].split()) == ["1", "2", "3", "4"]


# --- downloader ----------------------------------------------------------------------


def test_downloader_concurrent_byte_counts_and_overlap():
    # The delays sum to 6.4 s, well above the 5 s bound: only overlapping
    # downloads finish in time (about 1.6 s).
    paths = ["/delay/1.6/0", "/delay/1.6/629", "/delay/1.6/70001", "/delay/1.6/229699"]

    async def body():
        return await start("downloader", {"paths": paths})

    with capture_logs() as logs:
        _, co, ok, vals = run(body, timeout=5)
    assert ok, vals
    assert vals == [{"/delay/1.6/0": 0, "/delay/1.6/629": 629,
                     "/delay/1.6/70001": 70001, "/delay/1.6/229699": 229699}]
    assert sorted((e["path"], e["bytes"]) for e in logs if e["event"] == "downloaded") == sorted(
        vals[0].items())


@pytest.mark.parametrize("mode, low, high", [("blocking", 1.4, 1.5), ("concurrent", 0.5, 0.6)])
def test_downloader_modes_on_a_virtual_clock(mode, low, high):
    # Virtual time advances only through the server's sleeps: sum vs longest.
    async def body():
        t0 = trio.current_time()
        res = await start("downloader", {"mode": mode})
        return res, trio.current_time() - t0

    (_, _, ok, vals), elapsed = run(body, clock=trio.testing.MockClock(autojump_threshold=0))
    assert ok, vals
    assert vals == [{"/delay/0.3/629": 629, "/delay/0.5/606": 606,
                     "/delay/0.2/229699": 229699, "/delay/0.4/115777": 115777}]
    assert low <= elapsed < high


def test_downloader_bad_path_fails_the_task_after_the_others():
    async def body():
        return await start("downloader", {"paths": ["/delay/0/5", "/nothing/here"]})

    with capture_logs() as logs:
        _, co, ok, vals = run(body)
    assert not ok and isinstance(vals[0], RuntimeError)
    assert "GET /nothing/here: HTTP/1.0 404 Not Found" in str(vals[0])
    assert coro.status(co) == "dead"
    assert [(e["path"], e["bytes"]) for e in logs if e["event"] == "downloaded"] == [
        ("/delay/0/5", 5)]


# --- echo ----------------------------------------------------------------------------


async def receive_until(stream, expected):
    got = b""
    while len(got) < len(expected):
        data = await stream.receive_some(4096)
        if not data:
            break
        got += data
    return got


def test_echo_serves_lines_per_connection_until_cancelled():
    state = {}

    async def body():
        task = make_task("echo", {}, state)
        co = coro.create(load("echo").main)
        outcome = []

        async def drive():
            outcome.append(await coro.resume(co, task))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drive)
            while "port" not in task.state:      # bounded by run()'s fail_after
                await trio.sleep(0.01)
            port = task.state["port"]
            a = await trio.open_tcp_stream("127.0.0.1", port)
            b = await trio.open_tcp_stream("127.0.0.1", port)
            # Two connections open at once: each has its own handler coroutine.
            await a.send_all(b"hello\nwor")
            await b.send_all(b"other side\n")
            assert await receive_until(b, b"other side\n") == b"other side\n"
            await a.send_all(b"ld\ntail")
            assert await receive_until(a, b"hello\nworld\n") == b"hello\nworld\n"
            await a.send_eof()
            assert await receive_until(a, b"tail") == b"tail"
            assert await a.receive_some(10) == b""   # closed after EOF
            await a.aclose()
            await b.aclose()
            await trio.testing.wait_all_tasks_blocked()   # both handlers have ended
            assert coro.status(co) == "running"     # still serving (awaiting accept)
            assert outcome == []
            nursery.cancel_scope.cancel()
        return co

    with capture_logs() as logs:
        co = run(body)
    assert coro.status(co) == "dead"
    assert 1024 <= state["port"] <= 65535
    assert any(e["event"] == "listening" and e["port"] == state["port"] for e in logs)
    assert sorted(e["lines"] for e in logs if e["event"] == "connection closed") == [1, 3]


# --- ask -----------------------------------------------------------------------------


def test_ask_asks_until_no():
    async def body():
        task, co, ok, vals = await start("ask")
        assert (ok, vals) == (True, ["What is your name?"])
        assert coro.status(co) == "suspended"
        assert await coro.resume(co, "Alice") == (True, "Another? (yes/no)")
        assert await coro.resume(co, "no") == (True, ["Alice"])
        assert coro.status(co) == "dead"

    with capture_logs() as logs:
        run(body)
    assert [e["name"] for e in logs if e["event"] == "greeting"] == ["Alice"]


def test_ask_loops_on_yes_and_joins_several_values():
    async def body():
        task, co, ok, vals = await start("ask")
        assert await coro.resume(co, "Alice") == (True, "Another? (yes/no)")
        assert await coro.resume(co, "yes") == (True, "What is your name?")
        assert await coro.resume(co) == (True, "What is your name?")  # no answer: asked again
        assert await coro.resume(co, "Bob", "Smith") == (True, "Another? (yes/no)")
        return await coro.resume(co, "nope")

    assert run(body) == (True, ["Alice", "Bob Smith"])


# --- pingpong ------------------------------------------------------------------------


@pytest.mark.parametrize("rounds", [1, 3, None])
def test_pingpong_alternates_and_reports_rounds(rounds):
    expected = 5 if rounds is None else rounds

    async def body():
        task, co, ok, vals = await start("pingpong", {} if rounds is None else {"rounds": rounds})
        assert (ok, vals) == (True, [expected])
        assert coro.status(co) == "suspended"      # waiting at the daemon
        assert await coro.resume(co) == (True, expected)
        assert coro.status(co) == "dead"

    with capture_logs() as logs:
        run(body)
    strokes = [e["event"] for e in logs if e["event"].startswith(("ping ", "pong "))]
    assert strokes == [f"{who} {n}" for n in range(1, expected + 1) for who in ("ping", "pong")]
    assert [e["rounds"] for e in logs if e["event"] == "rally over"] == [expected]


# --- offload ---------------------------------------------------------------------------

def test_offload_hashes_in_a_thread_and_counts_primes_in_a_process(tmp_path):
    import hashlib

    data = tmp_path / "data.bin"
    data.write_bytes(b"cosched" * 1000)

    async def go():
        task = TaskContext("offload", 1, structlog.get_logger(), {"path": str(data), "limit": 100},
                           threads=trio.CapacityLimiter(2))
        co = coro.create(load("offload").main)
        return await coro.resume(co, task)

    ok, digest, primes = run(go, timeout=60)
    assert ok
    assert digest == hashlib.sha256(data.read_bytes()).hexdigest()
    assert primes == 25
