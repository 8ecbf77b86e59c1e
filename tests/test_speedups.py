"""Tests of the C switch path (cosched/_speedups.c) against the Python reference.

The contract itself is tested in test_coro.py and test_seeds.py, which run on the C
path in this process; here the same files also run on the pure-Python reference
(COSCHED_PURE_PYTHON=1, in a subprocess), and the C objects are checked where C
can go wrong and Python cannot: reference counts, the protocol methods a tracer
makes CPython use, deleted fields, reused awaitables.
"""

import gc
import os
import shutil
import subprocess
import sys
import sysconfig
import tracemalloc
from pathlib import Path

import pytest
import trio

from cosched import _coro, coro
from cosched.coro import CoroutineError

PURE = bool(os.environ.get("COSCHED_PURE_PYTHON"))
ROOT = Path(__file__).resolve().parent.parent
needs_c = pytest.mark.skipif(PURE or _coro._speedups is None, reason="C switch path not in use")


def run(afn, *args):
    async def bounded():
        with trio.fail_after(10):
            return await afn(*args)

    return trio.run(bounded)


def _c_compiler():
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc)


@pytest.mark.skipif(PURE, reason="this run is the pure-Python one")
def test_c_switch_path_is_built_and_in_use():
    # `make test` installs the package, which compiles the extension; a silent
    # fallback to Python would leave the C path untested. Only a machine without
    # a C compiler may run without it.
    if _coro._speedups is None and _c_compiler() is None:
        pytest.skip("no C compiler: the extension cannot be built here")
    from cosched import _speedups

    assert _coro._speedups is _speedups
    assert coro.yield_ is _speedups.yield_
    assert isinstance(coro.create(print), _speedups.CoroutineBase)


@pytest.mark.skipif(PURE, reason="already the pure-Python run")
def test_pure_python_reference_passes_the_contract_tests():
    env = dict(os.environ, COSCHED_PURE_PYTHON="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_coro.py", "tests/test_seeds.py", "tests/test_coro_lua.py",
         "tests/test_coro_model.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=150,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


def test_pure_python_run_really_is_pure():
    if not PURE:
        pytest.skip("only meaningful under COSCHED_PURE_PYTHON=1")
    assert _coro._speedups is None
    assert coro.yield_ is _coro._py_yield


async def _switch_workload(n):
    """Every kind of switch, delivery and ending the driver has, n times over."""

    async def echo(*vals):
        while True:
            vals = await coro.yield_(*vals)

    async def fails():
        await coro.yield_(1)
        raise ValueError("boom")

    async def to_main():
        while True:
            await coro.transfer(None, 1, 2)

    async def nests():
        inner = coro.create(echo)
        for i in range(5):
            await coro.resume(inner, i, i)
        await coro.wrap(echo)("w")
        await coro.yield_()

    for _ in range(n):
        co = coro.create(echo)
        await coro.resume(co, 1)
        await coro.resume(co, 1, 2, 3)
        bad = coro.create(fails)
        await coro.resume(bad)
        await coro.resume(bad)
        await coro.resume(bad)  # dead
        t = coro.create(to_main)
        await coro.transfer(t)
        await coro.transfer(t)
        await coro.resume(coro.create(nests))
        async for _ in coro.wrap(lambda: coro.yield_(3)):
            pass
        with pytest.raises(ValueError):
            w = coro.wrap(fails)
            await w()
            await w()
        c = coro.create(echo)
        await coro.resume(c)
        await coro.close(c)
        with pytest.raises(CoroutineError):
            await coro.yield_()


def test_switching_allocates_nothing_that_outlives_it():
    # A reference the C code forgets to drop keeps an object (16 bytes at least)
    # alive per switch: 4,000 rounds of every path would leave over 64 KiB behind.
    # What does stay is bounded (allocator caches: under 12 KiB at any round count).
    async def main():
        await _switch_workload(200)  # warm caches and free lists
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            await _switch_workload(4000)
            gc.collect()
            return tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()

    assert run(main) < 32 * 1024


def test_switches_work_under_a_tracer():
    # With a trace function set, CPython drives awaitables through their send(),
    # throw() and __next__ methods instead of the fast slot: both must agree.
    async def main():
        async def body(a):
            b = await coro.yield_(a + 1)
            try:
                await coro.yield_("wait")
            except KeyError as e:
                await coro.yield_("caught", e.args[0])
            return b * 2

        co = coro.create(body)
        out = [await coro.resume(co, 1), await coro.resume(co, 10)]
        w = coro.wrap(lambda: coro.yield_("w"))
        out.append(await w())
        out.append([x async for x in coro.wrap(lambda: coro.yield_("i"))])
        with trio.move_on_after(0.01):
            await coro.resume(coro.create(trio.sleep_forever))
        out.append(coro.status(co))
        return out

    def tracer(frame, event, arg):
        return None

    sys.settrace(tracer)
    try:
        out = run(main)
    finally:
        sys.settrace(None)
    assert out == [(True, 2), (True, "wait"), "w", ["i"], "suspended"]


def test_a_chain_that_awaited_trio_and_ends_with_nothing_works_under_a_tracer():
    # trio resumes a task with an outcome, not None: under a tracer CPython then
    # calls the awaitable's send() method, which must raise StopIteration(None)
    # when the switch returns None.
    async def main():
        async def body(*_):
            await trio.sleep(0)

        async def gen():
            await trio.sleep(0)
            await coro.yield_()

        return [await coro.resume(coro.create(body)), await coro.wrap(body)(),
                await coro.safewrap(body)(), await coro.wrap(gen)(),
                await coro.transfer(coro.create(transfers_back))]

    async def transfers_back():
        await trio.sleep(0)
        await coro.transfer(None)

    def tracer(frame, event, arg):
        return None

    sys.settrace(tracer)
    try:
        out = run(main)
    finally:
        sys.settrace(None)
    assert out == [(True,), None, None, None, None]


@needs_c
def test_coroutine_fields_refuse_deletion_and_the_coroutine_still_works():
    async def main():
        co = coro.create(lambda x: coro.yield_(x))
        with pytest.raises(AttributeError, match="cannot be deleted"):
            del co._state
        with pytest.raises(AttributeError, match="cannot be deleted"):
            del co._depth
        return await coro.resume(co, 5), coro.status(co)

    assert run(main) == ((True, 5), "suspended")


@needs_c
def test_a_switch_awaited_twice_raises_and_the_coroutine_goes_on():
    async def main():
        async def body():
            step = coro.yield_("once")
            await step
            with pytest.raises(RuntimeError, match="already awaited"):
                await step
            await coro.yield_("again")

        co = coro.create(body)
        return await coro.resume(co), await coro.resume(co)

    assert run(main) == ((True, "once"), (True, "again"))


@needs_c
def test_c_entry_points_reject_malformed_calls():
    from cosched import _speedups

    co = coro.create(print)
    with pytest.raises(TypeError, match="drive"):
        _speedups.drive(_coro.RESUME, co, [1])
    with pytest.raises(TypeError, match="nest_call"):
        _speedups.nest_call(_coro.RESUME, co)
    with pytest.raises(TypeError, match="transfer_call"):
        _speedups.transfer_call(co, None)
    with pytest.raises(TypeError, match="setup"):
        _speedups.setup(YIELD=None)
    assert coro.status(co) == "suspended"


@needs_c
def test_coroutines_and_chains_made_in_c_have_the_python_reference_s_fields():
    co = _coro.Coroutine(print)
    assert (co._fn, co._co, co._state, co._resumer, co._awaits, co._pending, co._entry_cs,
            co._call_cs, co._depth, co._error, co._closing, co._sw) == \
        (print, None, _coro._INITIAL, None, None, None, None, None, 0, None, 0, None)
    m = _coro._Chain(_coro.RESUME, None)
    assert (m.task, m.current, m.target, m.args, m._state, m._pending, m._awaits, m._call_cs,
            m._depth, m._resumer, m.switches, m._holders) == \
        (None, None, None, None, _coro._NORMAL, _coro.RESUME, None, None, 0, None, 0, None)

    async def in_trio():
        task = trio.lowlevel.current_task()
        m = _coro._Chain(_coro.RESUME, task)
        return m.task is task and m._call_cs is task._cancel_status is not None
    assert run(in_trio)
    for bad in ((), (print, print)):
        with pytest.raises(TypeError, match="Coroutine"):
            _coro.Coroutine(*bad)
    with pytest.raises(TypeError, match="keyword"):
        _coro.Coroutine(fn=print)
    with pytest.raises(TypeError, match="_Chain"):
        _coro._Chain(_coro.RESUME)


@needs_c
def test_driver_shows_its_chain_only_while_it_runs():
    async def main():
        seen = []

        async def body():
            seen.append(driver.chain is not None and driver.chain.current is co)
            await coro.yield_()

        co = coro.create(body)
        driver = _coro._drive(_coro.RESUME, co, ())
        assert driver.chain is None  # not started
        result = await driver
        return seen, result, driver.chain

    assert run(main) == ([True], (True,), None)


@needs_c
def test_a_driver_refuses_to_be_reentered_from_its_own_chain():
    async def main():
        async def body():
            for op in (lambda: driver.send(None), lambda: driver.throw(KeyError("k")),
                       driver.close):
                with pytest.raises(ValueError, match="already executing"):
                    op()
            await coro.yield_("still fine")

        co = coro.create(body)
        driver = _coro._drive(_coro.RESUME, co, ())
        return await driver, coro.status(co)

    assert run(main) == ((True, "still fine"), "suspended")
