"""Tests of cosched.coro: one test per rule of the coroutine contract, in its order.

Every test drives the library with ``trio.run`` and bounds every wait with
``trio.fail_after``; nothing here asserts on timing.
"""

import functools
import gc
import inspect
import sys
import weakref

import pytest
import trio
import trio.testing

from cosched import coro
from cosched._coro import stack_of, switches_of
from cosched.coro import CoroutineError

TIMEOUT = 10

DEAD = "cannot resume dead coroutine"
NONSUSP = "cannot resume non-suspended coroutine"
OUTSIDE = "attempt to yield from outside a coroutine"
NOT_RESUMED = "attempt to yield from a coroutine that was not resumed"
SELF_TRANSFER = "cannot transfer to the running coroutine"
DEAD_TRANSFER = "cannot transfer to a dead coroutine"
ENDED = "coroutine ended without transferring control"
CLOSE_RUNNING = "cannot close a running coroutine"
CLOSE_NORMAL = "cannot close a normal coroutine"
SW_GONE = "cannot yield: the safewrap caller is no longer waiting"


def run(afn, *args):
    """Run ``afn(*args)`` as the main task of a fresh trio loop, bounded in time."""

    async def bounded():
        with trio.fail_after(TIMEOUT):
            return await afn(*args)

    return trio.run(bounded)


def is_error(exc, msg):
    """exc is a CoroutineError whose message contains msg."""
    return isinstance(exc, CoroutineError) and msg in str(exc)


def assert_refused(result, msg):
    """result is ``(False, CoroutineError(msg))``."""
    assert type(result) is tuple and len(result) == 2, result
    assert result[0] is False, result
    assert is_error(result[1], msg), result


def frame_depth():
    """How many Python frames are on the stack of the caller."""
    f = sys._getframe(1)
    n = 0
    while f is not None:
        n += 1
        f = f.f_back
    return n


class Boom(Exception):
    pass


class CustomBase(BaseException):
    """A BaseException that is not an Exception."""


# ---------------------------------------------------------------------------
# Status


def test_status_suspended_before_start():
    co = coro.create(lambda: None)
    assert coro.status(co) == "suspended"


def test_status_suspended_while_waiting_in_yield_and_in_transfer():
    async def main():
        async def body():
            await coro.yield_("y")
            await coro.transfer(None, "t")

        co = coro.create(body)
        assert await coro.resume(co) == (True, "y")
        assert coro.status(co) == "suspended"
        assert await coro.resume(co) == (True, "t")
        assert coro.status(co) == "suspended"

    run(main)


def test_status_running_inside_itself_also_while_awaiting_io():
    async def main():
        seen = []

        async def body():
            seen.append(coro.status(co))
            await trio.sleep(0)
            seen.append(coro.status(co))

        co = coro.create(body)
        assert await coro.resume(co) == (True,)
        assert seen == ["running", "running"]

    run(main)


def test_status_normal_while_waiting_in_resume_wrap_and_safewrap():
    async def main():
        seen = []

        async def inner():
            seen.append(coro.status(outer))

        async def inner_yield(yield_fn):
            seen.append(coro.status(outer))

        async def outer_body():
            await coro.resume(coro.create(inner))
            await coro.wrap(inner)()
            await coro.safewrap(inner_yield)()

        outer = coro.create(outer_body)
        assert await coro.resume(outer) == (True,)
        assert seen == ["normal", "normal", "normal"]

    run(main)


def test_status_dead_after_return_raise_and_close():
    async def main():
        returned = coro.create(lambda: 1)
        await coro.resume(returned)
        assert coro.status(returned) == "dead"

        async def raising():
            raise Boom()

        raised = coro.create(raising)
        await coro.resume(raised)
        assert coro.status(raised) == "dead"

        async def yielding():
            await coro.yield_()

        closed = coro.create(yielding)
        await coro.resume(closed)
        await coro.close(closed)
        assert coro.status(closed) == "dead"

    run(main)


def test_status_of_main_is_running_from_main():
    async def main():
        assert coro.status(coro.main) == "running"

    run(main)
    assert coro.status(coro.main) == "running"  # outside any event loop too


def test_status_of_main_is_normal_from_inside_a_coroutine():
    async def main():
        seen = []

        async def inner():
            seen.append(coro.status(coro.main))

        async def body():
            seen.append(coro.status(coro.main))
            await coro.resume(coro.create(inner))

        await coro.resume(coro.create(body))
        assert seen == ["normal", "normal"]
        assert coro.status(coro.main) == "running"

    run(main)


@pytest.mark.parametrize("thing", [None, 42, "co", print, object(), coro.wrap(lambda: None)],
                         ids=["None", "int", "str", "function", "object", "Wrapped"])
def test_status_of_a_non_coroutine_raises_type_error(thing):
    with pytest.raises(TypeError):
        coro.status(thing)


def test_status_of_a_python_coroutine_object_raises_type_error():
    async def f():
        pass

    obj = f()
    try:
        with pytest.raises(TypeError):
            coro.status(obj)
    finally:
        obj.close()


# ---------------------------------------------------------------------------
# create


@pytest.mark.parametrize("thing", [None, 42, "fn", [1], object()],
                         ids=["None", "int", "str", "list", "object"])
def test_create_non_callable_raises_type_error(thing):
    with pytest.raises(TypeError):
        coro.create(thing)


def test_create_runs_nothing_and_is_suspended():
    ran = []

    async def body():
        ran.append(1)

    co = coro.create(body)
    assert ran == []
    assert coro.status(co) == "suspended"
    assert isinstance(co, coro.Coroutine)


def test_create_print_works(capsys):
    async def main():
        co = coro.create(print)
        assert await coro.resume(co, "a", 1, None) == (True,)
        assert coro.status(co) == "dead"

    run(main)
    assert capsys.readouterr().out == "a 1 None\n"


def test_create_calls_fn_with_first_resume_args_and_awaits_its_awaitable():
    class Awaitable:
        def __init__(self, v):
            self.v = v

        async def _run(self):
            got = await coro.yield_(self.v)
            return ("awaitable", got)

        def __await__(self):
            return self._run().__await__()

    async def afn(a, b):
        got = await coro.yield_(a + b)
        return ("afn", got)

    async def main():
        co = coro.create(afn)
        assert await coro.resume(co, 1, 2) == (True, 3)
        assert await coro.resume(co, "x") == (True, "afn", "x")

        co = coro.create(functools.partial(afn, 10))
        assert await coro.resume(co, 5) == (True, 15)
        assert await coro.resume(co) == (True, "afn", None)

        co = coro.create(lambda a: afn(a, a))  # plain function returning a coroutine object
        assert await coro.resume(co, 4) == (True, 8)
        assert await coro.resume(co, 1, 2) == (True, "afn", (1, 2))

        co = coro.create(Awaitable)  # a class: its instance is awaitable
        assert await coro.resume(co, "v") == (True, "v")
        assert await coro.resume(co, "w") == (True, "awaitable", "w")

        class CallMe:
            async def __call__(self, x):
                return x * 2

        assert await coro.resume(coro.create(CallMe()), 21) == (True, 42)

    run(main)


def test_create_fn_raising_when_called_is_the_bodys_exception():
    async def main():
        co = coro.create(lambda: 1 / 0)
        ok, exc = await coro.resume(co)
        assert ok is False and type(exc) is ZeroDivisionError
        assert coro.status(co) == "dead"

        async def takes_one(a):
            return a

        co = coro.create(takes_one)
        ok, exc = await coro.resume(co, 1, 2)
        assert ok is False and type(exc) is TypeError
        assert coro.status(co) == "dead"

    run(main)


@pytest.mark.parametrize("fn, args, expected", [
    (lambda a, b: a + b, (1, 2), (True, 3)),
    (lambda: (1, 2), (), (True, 1, 2)),
    (lambda: None, (), (True,)),
    (lambda: (), (), (True,)),
    (lambda: [1, 2], (), (True, [1, 2])),
    (lambda *a: a, ("x", "y", "z"), (True, "x", "y", "z")),
    (lambda: ((1, 2),), (), (True, (1, 2))),
], ids=["sum", "tuple", "None", "empty-tuple", "list", "varargs", "nested-tuple"])
def test_create_non_awaitable_result_is_the_return_value(fn, args, expected):
    async def main():
        co = coro.create(fn)
        assert await coro.resume(co, *args) == expected
        assert coro.status(co) == "dead"

    run(main)


def test_create_repr_contains_coroutine():
    co = coro.create(lambda: None)
    assert "coroutine" in repr(co)


# ---------------------------------------------------------------------------
# resume


@pytest.mark.parametrize("thing", [None, 42, "co", print, coro.wrap(lambda: None)],
                         ids=["None", "int", "str", "function", "Wrapped"])
def test_resume_non_coroutine_raises_type_error(thing):
    async def main():
        with pytest.raises(TypeError):
            await coro.resume(thing)

        async def body():
            with pytest.raises(TypeError):
                await coro.resume(thing)
            return "ok"

        assert await coro.resume(coro.create(body)) == (True, "ok")

    run(main)


def test_resume_dead_returns_false_and_error():
    async def main():
        co = coro.create(lambda: 1)
        assert await coro.resume(co) == (True, 1)
        assert_refused(await coro.resume(co), DEAD)
        assert_refused(await coro.resume(co, 1, 2), DEAD)

        async def body():
            return [await coro.resume(co)]

        ok, [inner] = await coro.resume(coro.create(body))
        assert ok is True
        assert_refused(inner, DEAD)

    run(main)


def test_resume_running_coroutine_returns_non_suspended():
    async def main():
        async def body():
            return [await coro.resume(co)]

        co = coro.create(body)
        ok, [inner] = await coro.resume(co)
        assert ok is True
        assert_refused(inner, NONSUSP)

    run(main)


def test_resume_normal_coroutine_returns_non_suspended():
    async def main():
        async def inner():
            return [await coro.resume(outer)]

        async def outer_body():
            return [await coro.resume(coro.create(inner))]

        outer = coro.create(outer_body)
        ok, [(ok2, [refused])] = await coro.resume(outer)
        assert ok is True and ok2 is True
        assert_refused(refused, NONSUSP)

    run(main)


def test_resume_main_returns_non_suspended():
    async def main():
        assert_refused(await coro.resume(coro.main), NONSUSP)

        async def body():
            return [await coro.resume(coro.main)]

        ok, [refused] = await coro.resume(coro.create(body))
        assert ok is True
        assert_refused(refused, NONSUSP)

    run(main)


def test_resume_makes_caller_normal_and_callee_running_with_caller_as_resumer():
    async def main():
        seen = []

        async def inner():
            seen.append((coro.status(outer), coro.status(co_inner), coro.status(coro.main)))
            await coro.yield_("to outer")  # goes to the resumer: outer
            seen.append("inner resumed")

        async def outer_body():
            r = await coro.resume(co_inner)
            seen.append(("outer got", r))
            return "outer done"

        co_inner = coro.create(inner)
        outer = coro.create(outer_body)
        assert await coro.resume(outer) == (True, "outer done")
        assert seen == [("normal", "running", "normal"), ("outer got", (True, "to outer"))]
        assert coro.status(co_inner) == "suspended"

    run(main)


def test_resume_first_resume_starts_body_with_args():
    async def main():
        got = []

        async def body(*args):
            got.append(args)

        assert await coro.resume(coro.create(body)) == (True,)
        assert await coro.resume(coro.create(body), 1) == (True,)
        assert await coro.resume(coro.create(body), 1, None, (2, 3)) == (True,)
        assert got == [(), (1,), (1, None, (2, 3))]

    run(main)


def test_resume_later_resume_returns_packed_args_from_pending_yield():
    async def main():
        got = []

        async def body():
            while True:
                got.append(await coro.yield_())

        co = coro.create(body)
        await coro.resume(co)
        await coro.resume(co)
        await coro.resume(co, 1)
        await coro.resume(co, 1, 2)
        await coro.resume(co, None)
        await coro.resume(co, (1, 2))
        await coro.resume(co, 1, 2, 3)
        assert got == [None, 1, (1, 2), None, (1, 2), (1, 2, 3)]

    run(main)


@pytest.mark.parametrize("values, expected", [
    ((), (True,)),
    ((1,), (True, 1)),
    ((1, 2, 3), (True, 1, 2, 3)),
    ((None,), (True, None)),
    (((1, 2),), (True, (1, 2))),
], ids=["none", "one", "three", "None", "tuple"])
def test_resume_returns_true_and_yielded_values(values, expected):
    async def main():
        async def body():
            await coro.yield_(*values)

        co = coro.create(body)
        assert await coro.resume(co) == expected
        assert coro.status(co) == "suspended"

    run(main)


async def _ret_bare():
    return


async def _ret_none():
    return None


async def _ret_one():
    return 5


async def _ret_tuple():
    return 1, 2


async def _ret_empty():
    return ()


async def _ret_list():
    return [1, 2]


async def _ret_nested():
    return ((1, 2),)


async def _ret_none_tuple():
    return (None,)


async def _no_return():
    pass


@pytest.mark.parametrize("body, expected", [
    (_ret_bare, (True,)),
    (_ret_none, (True,)),
    (_no_return, (True,)),
    (_ret_one, (True, 5)),
    (_ret_tuple, (True, 1, 2)),
    (_ret_empty, (True,)),
    (_ret_list, (True, [1, 2])),
    (_ret_nested, (True, (1, 2))),
    (_ret_none_tuple, (True, None)),
])
def test_resume_returns_true_and_return_values(body, expected):
    async def main():
        co = coro.create(body)
        assert await coro.resume(co) == expected
        assert coro.status(co) == "dead"

    run(main)


def test_resume_returns_true_and_values_transferred_to_the_caller():
    async def main():
        async def inner():
            await coro.transfer(outer, 7, 8)

        async def outer_body():
            r1 = await coro.resume(coro.create(inner))
            await coro.transfer(None, r1, "via transfer")

        outer = coro.create(outer_body)
        assert await coro.resume(outer) == (True, (True, 7, 8), "via transfer")

        async def to_main_nothing():
            await coro.transfer(None)

        assert await coro.resume(coro.create(to_main_nothing)) == (True,)

        async def to_main_main():
            await coro.transfer(coro.main, 1, 2)

        assert await coro.resume(coro.create(to_main_main)) == (True, 1, 2)

    run(main)


def test_resume_returns_false_and_the_exception_as_raised():
    raised = []

    async def deep_helper():
        e = Boom("kaput")
        raised.append(e)
        raise e

    async def failing_body(x):
        await coro.yield_(x)
        await deep_helper()

    async def main():
        co = coro.create(failing_body)
        assert await coro.resume(co, 1) == (True, 1)
        ok, exc = await coro.resume(co)
        assert ok is False
        assert exc is raised[0]
        assert type(exc) is Boom and str(exc) == "kaput"
        assert exc.__traceback__ is not None
        names = []
        tb = exc.__traceback__
        while tb is not None:
            names.append(tb.tb_frame.f_code.co_name)
            tb = tb.tb_next
        assert "failing_body" in names and "deep_helper" in names
        assert coro.status(co) == "dead"

    run(main)


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit, CustomBase, GeneratorExit])
def test_resume_base_exception_propagates_and_kills(exc_type):
    async def main():
        raised = []

        async def body():
            await coro.yield_("first")
            e = exc_type()
            raised.append(e)
            raise e

        co = coro.create(body)
        assert await coro.resume(co) == (True, "first")
        with pytest.raises(exc_type) as info:
            await coro.resume(co)
        assert info.value is raised[0]
        assert coro.status(co) == "dead"
        assert_refused(await coro.resume(co), DEAD)

    run(main)


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit, CustomBase])
def test_resume_base_exception_propagates_through_a_nested_chain(exc_type):
    async def main():
        log = []

        async def inner():
            raise exc_type("inner")

        async def outer_body():
            try:
                r = await coro.resume(co_inner)
                log.append(("returned", r))
            except BaseException as e:
                log.append(("raised", type(e)))
                raise

        co_inner = coro.create(inner)
        outer = coro.create(outer_body)
        with pytest.raises(exc_type):
            await coro.resume(outer)
        assert log == [("raised", exc_type)]
        assert coro.status(co_inner) == "dead"
        assert coro.status(outer) == "dead"
        assert coro.status(coro.main) == "running"
        assert await coro.resume(coro.create(lambda: "still fine")) == (True, "still fine")

    run(main)


# ---------------------------------------------------------------------------
# yield_


def test_yield_from_main_raises():
    async def main():
        with pytest.raises(CoroutineError, match=OUTSIDE):
            await coro.yield_(1)
        await coro.resume(coro.create(lambda: None))
        with pytest.raises(CoroutineError, match=OUTSIDE):
            await coro.yield_()

    run(main)


def test_yield_from_a_transfer_started_coroutine_raises_inside_it():
    async def main():
        async def body():
            try:
                await coro.yield_("never")
            except CoroutineError as e:
                await coro.transfer(None, "caught", e)

        co = coro.create(body)
        what, e = await coro.transfer(co)
        assert what == "caught"
        assert is_error(e, NOT_RESUMED)
        assert coro.status(co) == "suspended"

    run(main)


def test_yield_after_it_yielded_without_a_new_resume_raises():
    async def main():
        async def body():
            got = await coro.yield_(1)  # resumed by main: fine
            try:
                await coro.yield_(2)  # entered by transfer since then
            except CoroutineError as e:
                await coro.transfer(None, got, e)

        co = coro.create(body)
        assert await coro.resume(co) == (True, 1)
        got, e = await coro.transfer(co, "go")
        assert got == "go"
        assert is_error(e, NOT_RESUMED)

    run(main)


def test_yield_after_the_resume_that_entered_it_returned_raises():
    async def main():
        async def inner():
            await coro.transfer(outer, "back")  # outer's resume returns
            try:
                await coro.yield_("stale")
            except CoroutineError as e:
                await coro.transfer(None, "inner caught", e)

        async def outer_body():
            co_inner = coro.create(inner)
            r = await coro.resume(co_inner)
            await coro.transfer(co_inner)
            return r

        outer = coro.create(outer_body)
        ok, what, e = await coro.resume(outer)
        assert (ok, what) == (True, "inner caught")
        assert is_error(e, NOT_RESUMED)
        assert coro.status(outer) == "suspended"

    run(main)


def test_yield_suspends_delivers_and_returns_whatever_next_gives_control():
    async def main():
        got = []

        async def body():
            got.append(coro.status(co))
            got.append(await coro.yield_("a", "b"))
            got.append(await coro.yield_("c"))
            await coro.transfer(None, "end")

        co = coro.create(body)
        assert await coro.resume(co) == (True, "a", "b")
        assert coro.status(co) == "suspended"
        assert await coro.resume(co, 1, 2) == (True, "c")
        # control may also come back by transfer: yield_ returns its packed values
        assert await coro.transfer(co, "t") == "end"
        assert got == ["running", (1, 2), "t"]

    run(main)


# ---------------------------------------------------------------------------
# transfer


@pytest.mark.parametrize("target", [None, coro.main], ids=["None", "main"])
def test_transfer_to_main_returns_mains_pending_resume(target):
    async def main():
        async def body():
            got = await coro.transfer(target, 1, 2)
            return "end", got

        co = coro.create(body)
        assert await coro.resume(co) == (True, 1, 2)
        assert coro.status(co) == "suspended"
        assert await coro.resume(co, "x") == (True, "end", "x")

    run(main)


@pytest.mark.parametrize("target", [None, coro.main], ids=["None", "main"])
def test_transfer_to_main_returns_mains_pending_transfer(target):
    async def main():
        async def body():
            await coro.transfer(target, "a", "b")
            await coro.transfer(target, "one")
            await coro.transfer(target)

        co = coro.create(body)
        assert await coro.transfer(co) == ("a", "b")
        assert await coro.transfer(co) == "one"
        assert await coro.transfer(co) is None

    run(main)


def test_transfer_to_the_running_coroutine_raises():
    async def main():
        async def body():
            with pytest.raises(CoroutineError, match=SELF_TRANSFER):
                await coro.transfer(co, 1)
            assert coro.status(co) == "running"
            return "still running"

        co = coro.create(body)
        assert await coro.resume(co) == (True, "still running")

    run(main)


def test_transfer_to_a_dead_coroutine_raises():
    async def main():
        dead = coro.create(lambda: None)
        await coro.resume(dead)
        with pytest.raises(CoroutineError, match=DEAD_TRANSFER):
            await coro.transfer(dead)

        async def body():
            with pytest.raises(CoroutineError, match=DEAD_TRANSFER):
                await coro.transfer(dead, 1)
            return "ok"

        assert await coro.resume(coro.create(body)) == (True, "ok")

    run(main)


def test_transfer_to_a_not_started_coroutine_starts_it_with_values():
    async def main():
        async def target_body(*args):
            await coro.transfer(None, ("target got", args))

        async def body():
            await coro.transfer(coro.create(target_body), 1, 2)

        assert await coro.resume(coro.create(body)) == (True, ("target got", (1, 2)))
        assert await coro.transfer(coro.create(target_body)) == ("target got", ())

    run(main)


def test_transfer_to_a_coroutine_suspended_in_yield_delivers_to_its_yield():
    async def main():
        async def y_body():
            got = await coro.yield_("y first")
            await coro.transfer(None, "y got", got)

        async def x_body():
            await coro.transfer(co_y, "v", "w")

        co_y = coro.create(y_body)
        assert await coro.resume(co_y) == (True, "y first")
        co_x = coro.create(x_body)
        assert await coro.resume(co_x) == (True, "y got", ("v", "w"))
        assert coro.status(co_x) == "suspended"

    run(main)


def test_transfer_to_a_coroutine_suspended_in_transfer_delivers_to_its_transfer():
    async def main():
        async def x_body():
            got = await coro.transfer(co_y, "to y")
            await coro.transfer(None, "x got", got)

        async def y_body(arg):
            await coro.transfer(co_x, arg, 3, 4)

        co_x = coro.create(x_body)
        co_y = coro.create(y_body)
        assert await coro.transfer(co_x) == ("x got", ("to y", 3, 4))

    run(main)


def test_transfer_to_a_normal_coroutine_delivers_to_its_pending_resume():
    async def main():
        async def inner():
            await coro.transfer(outer, 7, 8)

        async def outer_body():
            r = await coro.resume(co_inner)
            return r, coro.status(co_inner)

        co_inner = coro.create(inner)
        outer = coro.create(outer_body)
        assert await coro.resume(outer) == (True, (True, 7, 8), "suspended")

    run(main)


def test_transfer_to_a_normal_coroutine_delivers_to_its_pending_wrap_call():
    async def main():
        async def inner():
            await coro.transfer(outer, 7, 8)
            await coro.transfer(outer, "one")

        w = coro.wrap(inner)

        async def outer_body():
            r1 = await w()
            r2 = await w()
            return r1, r2, coro.status(w.coroutine)

        outer = coro.create(outer_body)
        assert await coro.resume(outer) == (True, (7, 8), "one", "suspended")

    run(main)


def test_transfer_leaves_the_callers_resumer_link_as_it_is():
    async def main():
        log = []

        async def c_body():
            await coro.transfer(co_b, "back from c")

        async def b_body():
            got = await coro.transfer(coro.create(c_body))
            log.append(got)
            await coro.yield_("b yields")  # still goes to a, which resumed b
            log.append("b resumed")

        async def a_body():
            r = await coro.resume(co_b)
            log.append(r)
            return "a done"

        co_b = coro.create(b_body)
        assert await coro.resume(coro.create(a_body)) == (True, "a done")
        assert log == ["back from c", (True, "b yields")]

    run(main)


@pytest.mark.parametrize("target", [None, coro.main], ids=["None", "main"])
def test_transfer_from_main_to_main_raises(target):
    async def main():
        with pytest.raises(CoroutineError, match=SELF_TRANSFER):
            await coro.transfer(target, 1)

    run(main)


@pytest.mark.parametrize("thing", [42, "co", print, coro.wrap(lambda: None)],
                         ids=["int", "str", "function", "Wrapped"])
def test_transfer_to_a_non_coroutine_raises_type_error(thing):
    async def main():
        with pytest.raises(TypeError):
            await coro.transfer(thing)

    run(main)


def test_transfer_returns_the_packed_values_of_whatever_next_gives_control():
    async def main():
        async def body():
            got = await coro.transfer(None, "parked")
            got2 = await coro.yield_("resumed with", got)  # a resume gave control: it may yield
            return "end", got2

        co = coro.create(body)
        assert await coro.transfer(co) == "parked"
        assert await coro.resume(co, 1, 2) == (True, "resumed with", (1, 2))
        assert await coro.resume(co) == (True, "end", None)

    run(main)


# ---------------------------------------------------------------------------
# Delivery


def test_delivery_values_to_a_pending_resume_and_a_pending_wrap_call():
    async def main():
        async def inner():
            await coro.transfer(outer)
            await coro.transfer(outer, 1)
            await coro.transfer(outer, 1, 2)

        async def outer_body():
            co_inner = coro.create(inner)
            got = [await coro.resume(co_inner) for _ in range(3)]
            w = coro.wrap(inner)
            got += [await w() for _ in range(3)]
            return got

        outer = coro.create(outer_body)
        assert await coro.resume(outer) == (
            True, [(True,), (True, 1), (True, 1, 2), None, 1, (1, 2)])

    run(main)


def test_delivery_exception_to_a_pending_resume_is_returned():
    async def main():
        e = Boom("to resume")

        async def inner():
            raise e

        async def body():
            return [await coro.resume(coro.create(inner))]

        assert await coro.resume(coro.create(body)) == (True, [(False, e)])

    run(main)


def test_delivery_exception_to_a_pending_wrap_call_is_raised():
    async def main():
        e = Boom("to wrap")

        async def inner():
            raise e

        async def body():
            try:
                await coro.wrap(inner)()
            except Boom as caught:
                return caught

        assert await coro.resume(coro.create(body)) == (True, e)

    run(main)


def test_delivery_exception_to_a_pending_safewrap_call_is_raised():
    async def main():
        e = Boom("to safewrap")

        async def inner(yield_fn):
            raise e

        sw = coro.safewrap(inner)
        with pytest.raises(Boom) as info:
            await sw()
        assert info.value is e

    run(main)


def test_delivery_exception_to_mains_pending_transfer_is_raised():
    async def main():
        e = Boom("to transfer")

        async def body():
            raise e

        with pytest.raises(Boom) as info:
            await coro.transfer(coro.create(body))
        assert info.value is e

    run(main)


# ---------------------------------------------------------------------------
# Resumer links


def test_resumer_link_cleared_when_the_coroutine_yields():
    async def main():
        async def body():
            await coro.yield_("first")
            try:
                await coro.yield_("second")
            except CoroutineError as e:
                await coro.transfer(None, e)

        async def resumer():
            return [await coro.resume(co)]

        co = coro.create(body)
        assert await coro.resume(coro.create(resumer)) == (True, [(True, "first")])
        e = await coro.transfer(co)
        assert is_error(e, NOT_RESUMED)

    run(main)


def test_resumer_link_cleared_when_the_coroutine_transfers_to_its_resumer():
    async def main():
        async def inner():
            await coro.transfer(outer, "to outer")
            try:
                await coro.yield_("stale")
            except CoroutineError as e:
                await coro.transfer(None, e)

        async def outer_body():
            r = await coro.resume(co_inner)
            await coro.transfer(co_inner)
            return r

        co_inner = coro.create(inner)
        outer = coro.create(outer_body)
        ok, e = await coro.resume(outer)
        assert ok is True
        assert is_error(e, NOT_RESUMED)

    run(main)


def test_resumer_link_main_resumes_a_a_transfers_to_main_a_later_yields():
    async def main():
        async def a_body():
            got = await coro.transfer(None, "parked")
            try:
                await coro.yield_("stale", got)
            except CoroutineError as e:
                await coro.transfer(None, "a caught", e)

        async def other():
            await coro.yield_("other")

        co_a = coro.create(a_body)
        assert await coro.resume(co_a) == (True, "parked")
        # main goes on doing other things, then hands control back by transfer
        assert await coro.resume(coro.create(other)) == (True, "other")
        what, e = await coro.transfer(co_a, "go")
        assert what == "a caught"
        assert is_error(e, NOT_RESUMED)

    run(main)


def test_resumer_link_a_resumes_b_b_transfers_to_main():
    async def main():
        log = []

        async def b_body():
            got = await coro.transfer(None, "b to main")
            log.append(("b got", got))
            await coro.yield_("b yields")  # a still waits in resume(b): goes to a
            log.append("b resumed again")

        async def a_body():
            r = await coro.resume(co_b)
            log.append(("a got", r))
            try:
                await coro.yield_("stale")  # main's resume(a) returned long ago
            except CoroutineError as e:
                await coro.transfer(None, "a caught", e)

        co_a = coro.create(a_body)
        co_b = coro.create(b_body)
        # a's resume of b is still pending, but b's transfer makes main's resume(a) return
        assert await coro.resume(co_a) == (True, "b to main")
        assert coro.status(co_a) == "normal"
        assert coro.status(co_b) == "suspended"
        what, e = await coro.transfer(co_b, "go")
        assert what == "a caught"
        assert is_error(e, NOT_RESUMED)
        assert log == [("b got", "go"), ("a got", (True, "b yields"))]

    run(main)


def test_resumer_link_a_resumes_b_b_transfers_to_main_a_ends():
    async def main():
        async def b_body():
            await coro.transfer(None, "b to main")
            await coro.yield_("b yields")

        async def a_body():
            await coro.resume(co_b)
            return "a returns"  # its link to main was cleared: nobody to return to

        co_a = coro.create(a_body)
        co_b = coro.create(b_body)
        assert await coro.resume(co_a) == (True, "b to main")
        with pytest.raises(CoroutineError, match=ENDED):
            await coro.transfer(co_b)
        assert coro.status(co_a) == "dead"
        assert coro.status(co_b) == "suspended"

    run(main)


def test_resumer_link_set_by_a_wrap_call_is_cleared_when_it_returns():
    async def main():
        async def inner():
            await coro.yield_("first")
            try:
                await coro.yield_("second")
            except CoroutineError as e:
                await coro.transfer(None, e)

        w = coro.wrap(inner)
        assert await w() == "first"
        e = await coro.transfer(w.coroutine)
        assert is_error(e, NOT_RESUMED)

    run(main)


# ---------------------------------------------------------------------------
# Endings


def test_ending_return_delivers_return_values_to_the_resumer():
    async def main():
        async def inner():
            return "r1", "r2"

        async def outer_body():
            return await coro.resume(coro.create(inner)), await coro.wrap(inner)()

        assert await coro.resume(coro.create(outer_body)) == (
            True, (True, "r1", "r2"), ("r1", "r2"))

    run(main)


def test_ending_raise_delivers_the_exception_to_the_resumer():
    async def main():
        e = Boom()

        async def inner():
            raise e

        async def outer_body():
            return [await coro.resume(coro.create(inner))]

        assert await coro.resume(coro.create(outer_body)) == (True, [(False, e)])

    run(main)


def test_ending_transfer_entered_body_returning_gives_main_coroutine_error():
    async def main():
        async def body(arg):
            return "ignored", arg

        co = coro.create(body)
        with pytest.raises(CoroutineError, match=ENDED):
            await coro.transfer(co, 1)
        assert coro.status(co) == "dead"

    run(main)


def test_ending_transfer_entered_body_returning_while_main_waits_in_resume():
    async def main():
        async def x_body():
            return "ignored"

        async def a_body():
            await coro.transfer(co_x)

        co_x = coro.create(x_body)
        co_a = coro.create(a_body)
        assert_refused(await coro.resume(co_a), ENDED)
        assert coro.status(co_x) == "dead"
        assert coro.status(co_a) == "suspended"

    run(main)


def test_ending_transfer_entered_body_ending_while_main_waits_in_a_wrap_call():
    async def main():
        e = Boom()

        async def returns():
            return "ignored"

        async def raises():
            raise e

        for body, expected in ((returns, CoroutineError), (raises, Boom)):
            co_x = coro.create(body)
            w = coro.wrap(lambda: coro.transfer(co_x))
            with pytest.raises(expected) as info:
                await w()
            if expected is Boom:
                assert info.value is e
            else:
                assert is_error(info.value, ENDED)
            assert coro.status(co_x) == "dead"

    run(main)


def test_ending_transfer_entered_body_raising_gives_main_the_exception():
    async def main():
        e = Boom("x")

        async def x_body():
            raise e

        with pytest.raises(Boom) as info:
            await coro.transfer(coro.create(x_body))
        assert info.value is e

        async def a_body():
            await coro.transfer(co_x)

        co_x = coro.create(x_body)
        assert await coro.resume(coro.create(a_body)) == (False, e)
        assert coro.status(co_x) == "dead"

    run(main)


def test_ending_dead_coroutine_is_no_longer_anyones_resumer():
    async def main():
        async def y_body():
            await coro.transfer(None, "y to main")
            try:
                await coro.yield_("stale")
            except CoroutineError as e:
                await coro.transfer(None, "y caught", e)

        async def x_body():
            r = await coro.resume(co_y)
            return r  # entered by transfer: ends without transferring

        co_x = coro.create(x_body)
        co_y = coro.create(y_body)
        assert await coro.transfer(co_x) == "y to main"
        assert coro.status(co_x) == "normal"
        with pytest.raises(CoroutineError, match=ENDED):
            await coro.transfer(co_x, "x resumes")  # x's pending resume returns, x ends
        assert coro.status(co_x) == "dead"
        what, e = await coro.transfer(co_y)
        assert what == "y caught"
        assert is_error(e, NOT_RESUMED)

    run(main)


# ---------------------------------------------------------------------------
# running / current / isyieldable


def test_running_inside_a_coroutine_and_in_main():
    async def main():
        seen = []

        async def inner():
            seen.append(coro.running())

        async def body():
            seen.append(coro.running())
            await coro.resume(co_inner)
            seen.append(coro.running())

        co = coro.create(body)
        co_inner = coro.create(inner)
        assert coro.running() == (coro.main, True)
        await coro.resume(co)
        assert seen == [(co, False), (co_inner, False), (co, False)]
        assert coro.running() == (coro.main, True)
        assert coro.running()[0] is coro.main

    run(main)


def test_current_inside_a_coroutine_and_in_main():
    async def main():
        seen = []

        async def body():
            seen.append(coro.current())
            await trio.sleep(0)
            seen.append(coro.current())

        co = coro.create(body)
        assert coro.current() is None
        await coro.resume(co)
        assert seen[0] is co and seen[1] is co
        assert coro.current() is None

    run(main)


def test_isyieldable():
    async def main():
        seen = []

        async def body():
            seen.append(coro.isyieldable())
            seen.append(coro.isyieldable(co))
            seen.append(coro.isyieldable(coro.main))

        co = coro.create(body)
        assert coro.isyieldable() is False
        assert coro.isyieldable(coro.main) is False
        assert coro.isyieldable(co) is True
        await coro.resume(co)
        assert seen == [True, True, False]
        assert coro.isyieldable(co) is True  # dead, still a coroutine

    run(main)


def test_running_current_isyieldable_answer_for_each_trio_task():
    async def main():
        ping_send, ping_recv = trio.open_memory_channel(0)
        pong_send, pong_recv = trio.open_memory_channel(0)
        problems = []
        rounds = 5
        checked_main = []

        def check(expected):
            if coro.running() != (expected, False) or coro.current() is not expected:
                problems.append(("running", expected, coro.running()))
            if not coro.isyieldable() or coro.status(expected) != "running":
                problems.append(("yieldable/status", expected))

        def make_chain(name, step):
            async def leaf():
                me = coro.current()
                for i in range(rounds):
                    check(me)
                    await step(i)
                    check(me)
                    await coro.yield_((name, i))
                return name

            async def top():
                co_leaf = coro.create(leaf)
                got = []
                while True:
                    r = await coro.resume(co_leaf)
                    check(co_top)
                    got.append(r[1:])
                    if coro.status(co_leaf) == "dead":
                        return got

            co_top = coro.create(top)
            return co_top

        async def step1(i):
            await ping_send.send(i)
            await trio.sleep(0)
            assert await pong_recv.receive() == i

        async def step2(i):
            assert await ping_recv.receive() == i
            await trio.sleep(0)
            await pong_send.send(i)

        results = {}

        async def drive(name, step):
            co = make_chain(name, step)
            ok, got = await coro.resume(co)
            results[name] = (ok, got)
            if coro.running() != (coro.main, True):
                problems.append(("main of", name, coro.running()))

        async def observer():
            # a third task's main, while both chains are blocked inside coroutines
            for _ in range(rounds):
                await trio.testing.wait_all_tasks_blocked()
                checked_main.append((coro.running(), coro.current(), coro.isyieldable(),
                                     coro.status(coro.main)))
                await trio.sleep(0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drive, "one", step1)
            nursery.start_soon(drive, "two", step2)
            nursery.start_soon(observer)
        assert problems == []
        for name in ("one", "two"):
            ok, got = results[name]
            assert ok is True
            assert got == [((name, i),) for i in range(rounds)] + [(name,)]
        assert checked_main == [((coro.main, True), None, False, "running")] * rounds

    run(main)


def test_task_spawned_inside_a_coroutine_has_its_own_main():
    async def main():
        seen = {}

        async def child_body():
            await trio.sleep(0)
            return "child coroutine"

        async def child_task():
            seen["running"] = coro.running()
            seen["current"] = coro.current()
            seen["isyieldable"] = coro.isyieldable()
            seen["status main"] = coro.status(coro.main)
            seen["resume"] = await coro.resume(coro.create(child_body))
            try:
                await coro.yield_("no")
            except CoroutineError as e:
                seen["yield"] = e
            try:
                await coro.transfer(None)
            except CoroutineError as e:
                seen["transfer"] = e
            seen["wrap"] = await coro.wrap(child_body)()
            seen["transfer to"] = await coro.transfer(
                coro.create(lambda: coro.transfer(None, "back in child")))
            seen["safewrap"] = await coro.safewrap(lambda yield_fn: yield_fn("sw"))()

        async def body():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(child_task)
            return [coro.running()]

        co = coro.create(body)
        assert await coro.resume(co) == (True, [(co, False)])
        assert seen["running"] == (coro.main, True)
        assert seen["current"] is None
        assert seen["isyieldable"] is False
        assert seen["status main"] == "running"
        assert seen["resume"] == (True, "child coroutine")
        assert is_error(seen["yield"], OUTSIDE)
        assert is_error(seen["transfer"], SELF_TRANSFER)
        assert seen["wrap"] == "child coroutine"
        assert seen["transfer to"] == "back in child"
        assert seen["safewrap"] == "sw"

    run(main)


def test_running_outside_any_event_loop():
    assert coro.running() == (coro.main, True)
    assert coro.running()[0] is coro.main
    assert coro.status(coro.main) == "running"
    assert coro.current() is None
    assert coro.isyieldable() is False


# ---------------------------------------------------------------------------
# Global status


def test_status_is_global_across_trio_tasks():
    async def main():
        started = trio.Event()
        release = trio.Event()
        seen = {}

        async def sleeper():
            started.set()
            while not release.is_set():
                await trio.sleep(0.001)
            return "done"

        async def parent_body():
            return await coro.resume(co)

        co = coro.create(sleeper)
        parent = coro.create(parent_body)

        async def task_a():
            seen["a"] = await coro.resume(parent)

        async def task_b():
            await started.wait()
            seen["status"] = coro.status(co)
            seen["parent status"] = coro.status(parent)
            seen["resume"] = await coro.resume(co)
            seen["resume parent"] = await coro.resume(parent)
            with pytest.raises(CoroutineError, match=CLOSE_RUNNING):
                await coro.close(co)
            with pytest.raises(CoroutineError, match=CLOSE_NORMAL):
                await coro.close(parent)
            with pytest.raises(CoroutineError, match=SELF_TRANSFER):
                await coro.transfer(co)
            seen["b running"] = coro.running()
            release.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(task_a)
            nursery.start_soon(task_b)
        assert seen["status"] == "running"
        assert seen["parent status"] == "normal"
        assert_refused(seen["resume"], NONSUSP)
        assert_refused(seen["resume parent"], NONSUSP)
        assert seen["b running"] == (coro.main, True)
        assert seen["a"] == (True, True, "done")

    run(main)


def test_wrap_call_from_another_task_while_running_raises():
    async def main():
        started = trio.Event()
        release = trio.Event()

        async def sleeper():
            started.set()
            await release.wait()
            return "done"

        w = coro.wrap(sleeper)
        results = []

        async def task_a():
            results.append(await w())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(task_a)
            await started.wait()
            with pytest.raises(CoroutineError, match=NONSUSP):
                await w()
            release.set()
        assert results == ["done"]

    run(main)


# ---------------------------------------------------------------------------
# wrap


def test_wrap_call_resumes_and_returns_packed_values():
    async def main():
        got = []

        async def body(a, b):
            got.append((a, b))
            got.append(await coro.yield_())
            got.append(await coro.yield_(1))
            got.append(await coro.yield_(1, 2))
            return "r1", "r2"

        w = coro.wrap(body)
        assert await w("a", "b") is None
        assert await w() == 1
        assert await w("x") == (1, 2)
        assert await w("y", "z") == ("r1", "r2")
        assert got == [("a", "b"), None, "x", ("y", "z")]
        assert coro.status(w.coroutine) == "dead"

    run(main)


def test_wrap_reraises_the_coroutines_exception():
    async def main():
        e = Boom("wrapped")

        async def body():
            await coro.yield_(1)
            raise e

        w = coro.wrap(body)
        assert await w() == 1
        with pytest.raises(Boom) as info:
            await w()
        assert info.value is e
        assert info.value.__traceback__ is not None
        assert coro.status(w.coroutine) == "dead"

    run(main)


def test_wrap_dead_raises():
    async def main():
        w = coro.wrap(lambda: "v")
        assert await w() == "v"
        with pytest.raises(CoroutineError, match=DEAD):
            await w()

        async def fails():
            raise Boom()

        w2 = coro.wrap(fails)
        with pytest.raises(Boom):
            await w2()
        with pytest.raises(CoroutineError, match=DEAD):
            await w2()

        async def yields():
            await coro.yield_(1)

        w3 = coro.wrap(yields)
        assert await w3() == 1
        assert await coro.close(w3.coroutine) == (True,)
        with pytest.raises(CoroutineError, match=DEAD):
            await w3()

    run(main)


def test_wrap_running_or_normal_raises_non_suspended():
    async def main():
        seen = []

        async def inner():
            try:
                await w()
            except CoroutineError as e:
                seen.append(("normal", e))

        async def body():
            try:
                await w()
            except CoroutineError as e:
                seen.append(("running", e))
            await coro.resume(coro.create(inner))
            return "ok"

        w = coro.wrap(body)
        assert await w() == "ok"
        assert [k for k, _ in seen] == ["running", "normal"]
        assert all(is_error(e, NONSUSP) for _, e in seen)

    run(main)


def test_wrap_async_for_stops_on_return_without_the_return_value():
    async def main():
        async def body():
            await coro.yield_(1)
            await coro.yield_(2, 3)
            await coro.yield_()
            return "return value"

        w = coro.wrap(body)
        items = [v async for v in w]
        assert items == [1, (2, 3), None]
        assert coro.status(w.coroutine) == "dead"
        assert [v async for v in w] == []

        async def empty():
            return "only a return value"

        assert [v async for v in coro.wrap(empty)] == []

    run(main)


def test_wrap_async_for_reraises_the_exception():
    async def main():
        async def body():
            await coro.yield_(1)
            raise Boom("in loop")

        items = []
        with pytest.raises(Boom, match="in loop"):
            async for v in coro.wrap(body):
                items.append(v)
        assert items == [1]

    run(main)


def test_wrap_coroutine_attribute():
    async def main():
        async def body():
            await coro.yield_()

        w = coro.wrap(body)
        assert isinstance(w.coroutine, coro.Coroutine)
        assert coro.status(w.coroutine) == "suspended"
        await w()
        assert coro.status(w.coroutine) == "suspended"
        await w()
        assert coro.status(w.coroutine) == "dead"

    run(main)


# ---------------------------------------------------------------------------
# safewrap


def test_safewrap_yield_fn_from_a_nested_coroutine_returns_to_the_latest_caller():
    async def main():
        log = []

        async def body(yield_fn, a):
            log.append(("body start", a))

            async def inner(x):
                got = await yield_fn("from inner", x)  # cross-yield past body
                log.append(("inner got", got))
                got2 = await coro.yield_("inner yields to body")
                log.append(("inner got2", got2))
                return "inner done"

            co_inner = coro.create(inner)
            r1 = await coro.resume(co_inner, a + 1)
            log.append(("body got", r1))
            r2 = await coro.resume(co_inner, "from body")
            log.append(("body got", r2))
            got = await yield_fn("from body")
            return "end", got

        sw = coro.safewrap(body)
        assert await sw(1) == ("from inner", 2)
        assert log == [("body start", 1)]
        # the next call resumes exactly where yield_fn was called
        assert await sw("x", "y") == "from body"
        assert log == [
            ("body start", 1),
            ("inner got", ("x", "y")),
            ("body got", (True, "inner yields to body")),
            ("inner got2", "from body"),
            ("body got", (True, "inner done")),
        ]
        assert await sw("last") == ("end", "last")
        assert coro.status(sw.coroutine) == "dead"
        with pytest.raises(CoroutineError, match=DEAD):
            await sw()

    run(main)


def test_safewrap_next_call_resumes_exactly_where_yield_fn_was_called():
    async def main():
        async def leaf(yield_fn):
            total = 0
            for _ in range(3):
                total += await yield_fn(total)
            return total

        async def middle(yield_fn):
            co = coro.create(leaf)
            r = await coro.resume(co, yield_fn)
            return ("middle", r)

        async def body(yield_fn):
            co = coro.create(middle)
            r = await coro.resume(co, yield_fn)
            return ("body", r)

        sw = coro.safewrap(body)
        assert await sw() == 0
        assert await sw(1) == 1
        assert await sw(10) == 11
        assert await sw(100) == ("body", (True, "middle", (True, 111)))

    run(main)


def test_safewrap_yield_reaches_the_latest_caller_not_the_first():
    async def main():
        async def leaf(yield_fn):
            got = await yield_fn("y1")
            got = await yield_fn("y2", got)
            return "ret", got

        async def body(yield_fn):
            return await coro.resume(coro.create(leaf), yield_fn)

        sw = coro.safewrap(body)

        async def caller():
            r = await sw("from c")  # the latest caller is now c
            r2 = await sw("again from c")
            return r, r2

        assert await sw() == "y1"  # first call from main
        assert await coro.resume(coro.create(caller)) == (
            True, ("y2", "from c"), (True, "ret", "again from c"))
        assert coro.status(sw.coroutine) == "dead"

    run(main)


def test_safewrap_return_and_raise_reach_the_latest_caller():
    async def main():
        e = Boom("from safewrap")

        async def body(yield_fn, mode):
            async def leaf():
                return await yield_fn("parked")

            got = await coro.resume(coro.create(leaf))
            if mode == "raise":
                raise e
            return "returned", got

        for mode in ("return", "raise"):
            sw = coro.safewrap(body)
            assert await sw(mode) == "parked"

            async def caller():
                try:
                    return [await sw("c")]
                except Boom as caught:
                    return ["caught", caught]

            r = await coro.resume(coro.create(caller))
            if mode == "return":
                assert r == (True, [("returned", (True, "c"))])
            else:
                assert r == (True, ["caught", e])
            assert coro.status(sw.coroutine) == "dead"
            with pytest.raises(CoroutineError, match=DEAD):
                await sw()

    run(main)


def test_safewrap_dead_after_raise_from_main_caller():
    async def main():
        e = Boom()

        async def body(yield_fn):
            raise e

        sw = coro.safewrap(body)
        with pytest.raises(Boom) as info:
            await sw()
        assert info.value is e
        assert coro.status(sw.coroutine) == "dead"
        with pytest.raises(CoroutineError, match=DEAD):
            await sw()

    run(main)


def test_safewrap_calling_it_while_running_raises():
    async def main():
        seen = []

        async def body(yield_fn):
            try:
                await sw()  # its coroutine is running
            except CoroutineError as e:
                seen.append(e)

            async def caller_inside():
                try:
                    await sw()  # its coroutine is normal
                except CoroutineError as e:
                    seen.append(e)

            await coro.resume(coro.create(caller_inside))

            async def leaf():
                await yield_fn("parked in leaf")
                try:
                    await sw()  # the point to resume is this running coroutine
                except CoroutineError as e:
                    seen.append(e)
                return "leaf done"

            return await coro.resume(coro.create(leaf))

        sw = coro.safewrap(body)
        assert await sw() == "parked in leaf"
        assert await sw() == (True, "leaf done")
        assert len(seen) == 3
        assert all(is_error(e, NONSUSP) for e in seen)

    run(main)


def test_safewrap_async_for_with_cross_yield():
    async def main():
        async def body(yield_fn):
            async def leaf():
                for i in range(3):
                    await yield_fn(i)
                return "leaf return"

            await coro.resume(coro.create(leaf))
            return "body return"

        sw = coro.safewrap(body)
        assert [v async for v in sw] == [0, 1, 2]
        assert coro.status(sw.coroutine) == "dead"

    run(main)


def test_safewrap_yield_fn_after_the_callers_coroutine_ended_raises_where_it_was_called():
    async def main():
        log = []

        async def body(yield_fn):
            await coro.yield_("plain")  # a plain yield: the call of caller_body returns
            try:
                await yield_fn("to a caller that is gone")
            except CoroutineError as e:
                log.append(str(e))
            return "body done"

        sw = coro.safewrap(body)

        async def caller_body():
            return await sw()

        caller = coro.create(caller_body)
        assert await coro.resume(caller) == (True, "plain")
        assert coro.status(caller) == "dead"
        # nothing switches: yield_fn raises in the body, which goes on to return
        assert await coro.resume(sw.coroutine) == (True, "body done")
        assert log == [SW_GONE]
        assert coro.status(sw.coroutine) == "dead"

    run(main)


def test_safewrap_yield_fn_after_mains_call_returned_does_not_reach_mains_other_call():
    async def main():
        async def body(yield_fn):
            await coro.yield_("plain")
            try:
                await yield_fn("stray")
            except CoroutineError as e:
                await coro.yield_("caught", str(e))
            return "end"

        sw = coro.safewrap(body)
        assert await sw() == "plain"  # main's sw() call has returned
        # main's pending call is now a resume: yield_fn must not end it
        assert await coro.resume(sw.coroutine) == (True, "caught", SW_GONE)
        assert await coro.resume(sw.coroutine) == (True, "end")

        async def resumes_body():
            return await coro.resume(sw2.coroutine)

        sw2 = coro.safewrap(body)
        assert await sw2() == "plain"
        assert await coro.resume(coro.create(resumes_body)) == (
            True, True, "caught", SW_GONE)

    run(main)


def test_safewrap_yield_fn_called_from_a_coroutine_after_the_call_returned_raises():
    async def main():
        leaked = []

        async def body(yield_fn):
            leaked.append(yield_fn)
            return "returned at once"

        sw = coro.safewrap(body)
        assert await sw() == "returned at once"

        async def stray():
            await leaked[0]("nobody waits")

        ok, err = await coro.resume(coro.create(stray))
        assert ok is False and is_error(err, SW_GONE)

    run(main)


def test_safewrap_coroutine_attribute():
    async def main():
        async def body(yield_fn):
            await yield_fn()

        sw = coro.safewrap(body)
        assert isinstance(sw.coroutine, coro.Coroutine)
        assert coro.status(sw.coroutine) == "suspended"
        assert await sw() is None
        assert coro.status(sw.coroutine) == "suspended"
        assert await sw() is None
        assert coro.status(sw.coroutine) == "dead"

    run(main)


# ---------------------------------------------------------------------------
# close


def test_close_not_started():
    async def main():
        ran = []

        async def body():
            ran.append(1)

        co = coro.create(body)
        assert await coro.close(co) == (True,)
        assert coro.status(co) == "dead"
        assert_refused(await coro.resume(co), DEAD)
        assert ran == []

    run(main)


def test_close_dead_after_normal_end():
    async def main():
        co = coro.create(lambda: 1)
        await coro.resume(co)
        assert await coro.close(co) == (True,)
        assert coro.status(co) == "dead"

    run(main)


def test_close_dead_after_an_exception_returns_it():
    async def main():
        e = Boom("died")

        async def body():
            raise e

        co = coro.create(body)
        assert await coro.resume(co) == (False, e)
        assert await coro.close(co) == (False, e)
        assert coro.status(co) == "dead"
        # as in Lua 5.4, the error is reported once: closing again succeeds
        assert await coro.close(co) == (True,)

    run(main)


def test_close_suspended_runs_finally_blocks_that_await():
    async def main():
        log = []

        async def body():
            try:
                await coro.yield_(1)
                log.append("not reached")
            finally:
                log.append("finally start")
                await trio.sleep(0)
                await trio.sleep(0.001)
                log.append("finally end")

        co = coro.create(body)
        assert await coro.resume(co) == (True, 1)
        assert await coro.close(co) == (True,)
        assert log == ["finally start", "finally end"]
        assert coro.status(co) == "dead"
        assert_refused(await coro.resume(co), DEAD)

    run(main)


def test_close_runs_async_with_exits_that_await():
    async def main():
        log = []

        class Resource:
            async def __aenter__(self):
                return self

            async def __aexit__(self, exc_type, exc, tb):
                await trio.sleep(0)
                log.append(("aexit", exc_type))
                return False

        async def body():
            async with Resource():
                await coro.yield_("inside")

        co = coro.create(body)
        assert await coro.resume(co) == (True, "inside")
        assert await coro.close(co) == (True,)
        assert log == [("aexit", GeneratorExit)]

    run(main)


def test_close_raises_generator_exit_at_the_innermost_pending_call():
    async def main():
        log = []

        async def level3():
            try:
                await coro.yield_("deep")
            except BaseException as e:
                log.append(("level3", type(e)))
                await trio.sleep(0)
                raise
            finally:
                log.append("level3 finally")

        async def level2():
            try:
                await level3()
            finally:
                await trio.sleep(0)
                log.append("level2 finally")

        async def level1():
            try:
                await level2()
            finally:
                log.append("level1 finally")

        co = coro.create(level1)
        assert await coro.resume(co) == (True, "deep")
        assert await coro.close(co) == (True,)
        assert log == [("level3", GeneratorExit), "level3 finally", "level2 finally",
                       "level1 finally"]

    run(main)


def test_close_a_coroutine_suspended_in_transfer():
    async def main():
        log = []

        async def body():
            try:
                await coro.transfer(None, "parked")
            except BaseException as e:
                log.append(type(e))
                raise
            finally:
                await trio.sleep(0)
                log.append("finally")

        co = coro.create(body)
        assert await coro.transfer(co) == "parked"
        assert await coro.close(co) == (True,)
        assert log == [GeneratorExit, "finally"]
        assert coro.status(co) == "dead"

    run(main)


def test_close_cleanup_raising_returns_false_and_the_exception():
    async def main():
        e = Boom("cleanup")

        async def body():
            try:
                await coro.yield_(1)
            finally:
                await trio.sleep(0)
                raise e

        co = coro.create(body)
        await coro.resume(co)
        assert await coro.close(co) == (False, e)
        assert coro.status(co) == "dead"

    run(main)


@pytest.mark.parametrize("how", ["yield", "transfer"])
def test_close_cleanup_trying_to_switch_returns_false_and_coroutine_error(how):
    async def main():
        other = coro.create(lambda: None)

        async def body():
            try:
                await coro.yield_(1)
            finally:
                if how == "yield":
                    await coro.yield_(2)
                else:
                    await coro.transfer(other)

        co = coro.create(body)
        await coro.resume(co)
        ok, err = await coro.close(co)
        assert ok is False
        assert isinstance(err, CoroutineError)
        assert coro.status(co) == "dead"
        assert coro.status(other) == "suspended"

    run(main)


@pytest.mark.parametrize("target", [None, coro.main], ids=["None", "main"])
def test_close_cleanup_transferring_to_main_returns_false_and_coroutine_error(target):
    async def main():
        async def body():
            try:
                await coro.yield_()
            finally:
                await coro.transfer(target, "again")

        w = coro.wrap(body)
        await w()
        ok, err = await coro.close(w.coroutine)
        assert ok is False
        assert is_error(err, "being closed")
        assert coro.status(w.coroutine) == "dead"

    run(main)


def test_close_cleanup_whose_nested_coroutine_transfers_to_main_refuses_it_there():
    async def main():
        log = []

        async def nested():
            try:
                await coro.transfer(None, "would end main's close")
            except CoroutineError as e:
                log.append(str(e))
            return "nested done"

        async def body():
            try:
                await coro.yield_()
            finally:
                log.append(await coro.resume(coro.create(nested)))

        co = coro.create(body)
        await coro.resume(co)
        assert await coro.close(co) == (True,)
        assert log == ["cannot transfer to main while it is closing a coroutine",
                       (True, "nested done")]
        assert coro.status(co) == "dead"

    run(main)


def test_close_cleanup_whose_transfer_entered_coroutine_ends_returns_false_and_the_error():
    async def main():
        async def ends():
            return "no transfer"

        async def nested():
            await coro.transfer(coro.create(ends))

        async def body():
            try:
                await coro.yield_()
            finally:
                await coro.resume(coro.create(nested))

        co = coro.create(body)
        await coro.resume(co)
        ok, err = await coro.close(co)
        assert ok is False and is_error(err, ENDED)
        assert coro.status(co) == "dead"

    run(main)


def test_close_cleanup_trying_to_yield_is_reported_even_if_caught():
    async def main():
        log = []

        async def body():
            try:
                await coro.yield_(1)
            finally:
                try:
                    await coro.yield_(2)
                except CoroutineError as e:
                    log.append(e)

        co = coro.create(body)
        await coro.resume(co)
        ok, err = await coro.close(co)
        assert ok is False
        assert isinstance(err, CoroutineError)
        assert len(log) == 1 and isinstance(log[0], CoroutineError)
        assert coro.status(co) == "dead"

    run(main)


def test_close_cleanup_may_resume_other_coroutines():
    async def main():
        log = []

        async def helper(x):
            got = await coro.yield_(x + 1)
            return got * 2

        async def body():
            try:
                await coro.yield_(1)
            finally:
                h = coro.create(helper)
                log.append(await coro.resume(h, 1))
                log.append(await coro.resume(h, 5))
                log.append(await coro.wrap(helper)(10))

        co = coro.create(body)
        await coro.resume(co)
        assert await coro.close(co) == (True,)
        assert log == [(True, 2), (True, 10), 11]
        assert coro.status(co) == "dead"

    run(main)


def test_close_running_raises():
    async def main():
        async def body():
            with pytest.raises(CoroutineError, match=CLOSE_RUNNING):
                await coro.close(co)
            return "still alive"

        co = coro.create(body)
        assert await coro.resume(co) == (True, "still alive")

    run(main)


def test_close_normal_raises():
    async def main():
        async def inner():
            with pytest.raises(CoroutineError, match=CLOSE_NORMAL):
                await coro.close(outer)
            return "inner ok"

        async def outer_body():
            return [await coro.resume(coro.create(inner))]

        outer = coro.create(outer_body)
        assert await coro.resume(outer) == (True, [(True, "inner ok")])
        assert coro.status(outer) == "dead"

    run(main)


def test_close_main_from_main_and_from_inside():
    async def main():
        with pytest.raises(CoroutineError, match=CLOSE_RUNNING):
            await coro.close(coro.main)

        async def body():
            with pytest.raises(CoroutineError, match=CLOSE_NORMAL):
                await coro.close(coro.main)
            return "ok"

        assert await coro.resume(coro.create(body)) == (True, "ok")

    run(main)


@pytest.mark.parametrize("thing", [None, 42, "co", print, coro.wrap(lambda: None)],
                         ids=["None", "int", "str", "function", "Wrapped"])
def test_close_non_coroutine_raises_type_error(thing):
    async def main():
        with pytest.raises(TypeError):
            await coro.close(thing)

    run(main)


def test_close_statuses_during_cleanup_when_main_closes():
    async def main():
        seen = []

        async def body():
            try:
                await coro.yield_()
            finally:
                await trio.sleep(0)
                seen.append((coro.current() is co, coro.running() == (co, False),
                             coro.status(co), coro.status(coro.main), coro.isyieldable()))

        co = coro.create(body)
        await coro.resume(co)
        assert await coro.close(co) == (True,)
        assert seen == [(True, True, "running", "normal", True)]

    run(main)


def test_close_statuses_during_cleanup_when_a_coroutine_closes():
    async def main():
        seen = []

        async def victim():
            try:
                await coro.yield_()
            finally:
                await trio.sleep(0)
                seen.append((coro.current() is co_victim, coro.status(co_victim),
                             coro.status(closer)))

        async def closer_body():
            r = await coro.close(co_victim)
            return r, coro.status(closer)

        co_victim = coro.create(victim)
        await coro.resume(co_victim)
        closer = coro.create(closer_body)
        assert await coro.resume(closer) == (True, (True,), "running")
        assert seen == [(True, "running", "normal")]
        assert coro.status(co_victim) == "dead"

    run(main)


# ---------------------------------------------------------------------------
# CoroutineError


def test_coroutine_error_subclasses_runtime_error():
    assert issubclass(CoroutineError, RuntimeError)

    async def main():
        with pytest.raises(RuntimeError):
            await coro.yield_()
        co = coro.create(lambda: None)
        await coro.resume(co)
        ok, err = await coro.resume(co)
        assert type(err) is CoroutineError

    run(main)


# ---------------------------------------------------------------------------
# Cross-yield: event-loop awaits inside coroutines


def test_cross_yield_trio_sleep_never_reaches_the_resumer():
    async def main():
        async def body():
            await trio.sleep(0)
            await trio.sleep(0.001)
            await coro.yield_("a")
            await trio.sleep(0)
            return "b"

        co = coro.create(body)
        assert await coro.resume(co) == (True, "a")
        assert await coro.resume(co) == (True, "b")

    run(main)


def test_cross_yield_socket_read_inside_a_wrap_generator():
    async def main():
        sock_w, sock_r = trio.socket.socketpair()
        chunks = [b"one", b"two", b"three"]
        acks_send, acks_recv = trio.open_memory_channel(0)
        writer_progress = []

        async def reader():
            while True:
                data = await sock_r.recv(100)
                if not data:
                    return "eof"
                await coro.yield_(data)

        async def writer():
            for chunk in chunks:
                await trio.testing.wait_all_tasks_blocked()  # the reader waits in recv
                await sock_w.send(chunk)
                writer_progress.append(chunk)
                await acks_recv.receive()
            sock_w.close()

        items = []
        with sock_w, sock_r:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                async for data in coro.wrap(reader):
                    items.append(data)
                    await acks_send.send(None)
        assert items == chunks
        assert writer_progress == chunks

    run(main)


def test_cross_yield_memory_channel_at_depth_three():
    async def main():
        send, recv = trio.open_memory_channel(0)
        helper_log = []
        resumer_saw = []

        async def c_body():
            for _ in range(3):
                v = await recv.receive()
                await trio.sleep(0)
                await coro.yield_(("c", v))
            return "c done"

        async def b_body():
            co_c = coro.create(c_body)
            while True:
                r = await coro.resume(co_c)
                resumer_saw.append(r)
                if coro.status(co_c) == "dead":
                    return "b done"
                await coro.yield_(r[1])

        async def a_body():
            co_b = coro.create(b_body)
            got = []
            while True:
                r = await coro.resume(co_b)
                got.append(r)
                if coro.status(co_b) == "dead":
                    return got

        async def helper():
            for i in range(3):
                await trio.testing.wait_all_tasks_blocked()  # the chain waits in receive
                helper_log.append(i)
                await send.send(i)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(helper)
            ok, got = await coro.resume(coro.create(a_body))
        assert ok is True
        assert got == [(True, ("c", 0)), (True, ("c", 1)), (True, ("c", 2)), (True, "b done")]
        assert resumer_saw == [(True, ("c", 0)), (True, ("c", 1)), (True, ("c", 2)),
                               (True, "c done")]
        assert helper_log == [0, 1, 2]

    run(main)


def test_cross_yield_inside_a_wrap_generator_iterated_in_a_coroutine():
    async def main():
        send, recv = trio.open_memory_channel(0)
        ticks = []

        async def gen():
            async for v in recv:
                await trio.sleep(0)
                await coro.yield_(v * 10)

        async def consumer():
            out = []
            async for v in coro.wrap(gen):
                out.append(v)
            return out

        async def producer():
            async with send:
                for i in range(4):
                    await trio.testing.wait_all_tasks_blocked()
                    ticks.append(i)
                    await send.send(i)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer)
            assert await coro.resume(coro.create(consumer)) == (True, [0, 10, 20, 30])
        assert ticks == [0, 1, 2, 3]

    run(main)


def test_cross_yield_subprocess_and_event_inside_nested_coroutines():
    async def main():
        event = trio.Event()
        setter_ran = []

        async def inner():
            proc = await trio.run_process(
                [sys.executable, "-c", "print('from child')"], capture_stdout=True)
            await coro.yield_(proc.returncode, proc.stdout.decode().strip())
            await event.wait()
            return "inner done"

        async def outer_body():
            co_inner = coro.create(inner)
            r1 = await coro.resume(co_inner)
            r2 = await coro.resume(co_inner)
            return [r1, r2]

        async def setter():
            await trio.testing.wait_all_tasks_blocked()
            setter_ran.append(True)
            event.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(setter)
            assert await coro.resume(coro.create(outer_body)) == (
                True, [(True, 0, "from child"), (True, "inner done")])
        assert setter_ran == [True]

    run(main)


# ---------------------------------------------------------------------------
# Cancel scopes


@pytest.mark.parametrize("how", ["yield", "transfer", "transfer-to-coroutine"])
def test_switch_inside_a_cancel_scope_opened_in_the_coroutine_raises_inside(how):
    async def main():
        other = coro.create(lambda: coro.transfer(None, "other ran"))

        async def body():
            err = None
            with trio.move_on_after(100):
                try:
                    if how == "yield":
                        await coro.yield_("in scope")
                    elif how == "transfer":
                        await coro.transfer(None, "in scope")
                    else:
                        await coro.transfer(other, "in scope")
                except CoroutineError as e:
                    err = e
            await coro.yield_("after", err)
            return "end"

        co = coro.create(body)
        ok, what, err = await coro.resume(co)
        assert (ok, what) == (True, "after")
        assert isinstance(err, CoroutineError)
        assert coro.status(other) == "suspended"  # never started
        await trio.sleep(0)  # the caller's own scopes are intact
        assert await coro.resume(co) == (True, "end")
        assert coro.status(co) == "dead"

    run(main)


@pytest.mark.parametrize("how", ["yield", "transfer", "transfer-to-coroutine"])
def test_switch_inside_a_nursery_opened_in_the_coroutine_raises_inside(how):
    async def main():
        other = coro.create(lambda: coro.transfer(None, "other ran"))

        async def body():
            err = None
            async with trio.open_nursery():
                try:
                    if how == "yield":
                        await coro.yield_("in nursery")
                    elif how == "transfer":
                        await coro.transfer(None, "in nursery")
                    else:
                        await coro.transfer(other, "in nursery")
                except CoroutineError as e:
                    err = e
            await coro.yield_("after", err)
            return "end"

        co = coro.create(body)
        ok, what, err = await coro.resume(co)
        assert (ok, what) == (True, "after")
        assert isinstance(err, CoroutineError)
        assert coro.status(other) == "suspended"  # never started
        await trio.sleep(0)
        assert await coro.resume(co) == (True, "end")

    run(main)


def test_transfer_to_main_past_a_scope_opened_in_an_outer_coroutine_raises():
    async def main():
        async def inner():
            try:
                await coro.transfer(None, "would leave outer's scope open")
            except CoroutineError as e:
                await coro.yield_("inner caught", e)
            return "inner done"

        async def outer_body():
            co_inner = coro.create(inner)
            with trio.move_on_after(100):
                r1 = await coro.resume(co_inner)
                r2 = await coro.resume(co_inner)
            return [r1, r2]

        ok, [r1, r2] = await coro.resume(coro.create(outer_body))
        assert ok is True
        assert r1[:2] == (True, "inner caught")
        assert isinstance(r1[2], CoroutineError)
        assert r2 == (True, "inner done")
        await trio.sleep(0)

    run(main)


def test_transfer_to_main_past_a_nursery_opened_in_an_outer_coroutine_raises():
    async def main():
        async def inner():
            try:
                await coro.transfer(None, "would leave outer's nursery open")
            except CoroutineError as e:
                await coro.yield_("inner caught", e)
            return "inner done"

        async def outer_body():
            co_inner = coro.create(inner)
            async with trio.open_nursery():
                r1 = await coro.resume(co_inner)
                r2 = await coro.resume(co_inner)
            return [r1, r2]

        ok, [r1, r2] = await coro.resume(coro.create(outer_body))
        assert ok is True
        assert r1[:2] == (True, "inner caught")
        assert isinstance(r1[2], CoroutineError)
        assert r2 == (True, "inner done")
        await trio.sleep(0)

    run(main)


def test_safewrap_cross_yield_past_a_scope_opened_in_the_body_raises_inside():
    async def main():
        async def body(yield_fn):
            async def leaf():
                try:
                    await yield_fn("would leave body's scope open")
                except CoroutineError as e:
                    return "leaf caught", e
                return "leaf not stopped", None

            with trio.move_on_after(100):
                r = await coro.resume(coro.create(leaf))
            return r

        ok, what, err = await coro.safewrap(body)()
        assert (ok, what) == (True, "leaf caught")
        assert isinstance(err, CoroutineError)
        await trio.sleep(0)

    run(main)


def _ends_after_transfer():
    """c0 transfers to c1, which returns: the chain ends without transferring control."""
    c1 = coro.create(lambda: "c1 done")
    c0 = coro.create(lambda: coro.transfer(c1))
    return c0, c1


@pytest.mark.parametrize("how", ["wrap", "safewrap"])
def test_ending_inside_a_scope_of_a_waiting_coroutine_unwinds_it_before_main_gets_it(how):
    async def main():
        log = []
        scopes = []
        c0, c1 = _ends_after_transfer()

        async def b0(*_):
            with trio.CancelScope() as scope:
                scopes.append(scope)
                try:
                    await coro.resume(c0)
                finally:
                    log.append("b0 unwound")

        gen = coro.wrap(b0) if how == "wrap" else coro.safewrap(b0)
        with trio.CancelScope() as outer:
            with pytest.raises(CoroutineError, match=ENDED):
                async for _ in gen:
                    pass
            # main is not left inside b0's scope: cancelling it does not reach main
            scopes[0].cancel()
            await trio.sleep(0)
        assert not outer.cancelled_caught
        assert log == ["b0 unwound"]
        assert [coro.status(c) for c in (gen.coroutine, c0, c1)] == ["dead", "suspended", "dead"]
        with pytest.raises(CoroutineError, match=ENDED):  # c0 is free: main may continue it
            await coro.transfer(c0, "c0 returns this")
        assert coro.status(c0) == "dead"

    run(main)


def test_ending_inside_a_scope_of_a_transfer_entered_coroutine_reaches_main_through_it():
    async def main():
        c0, c1 = _ends_after_transfer()

        async def holder():
            with trio.CancelScope():
                await coro.resume(c0)

        h = coro.create(holder)
        with trio.CancelScope() as outer:
            with pytest.raises(CoroutineError, match=ENDED):
                await coro.transfer(h)
            await trio.sleep(0)
        assert not outer.cancelled_caught
        assert coro.status(h) == "dead"

    run(main)


def test_ending_inside_a_scope_is_raised_at_the_innermost_call_under_it():
    async def main():
        c0, c1 = _ends_after_transfer()

        async def middle():  # opens nothing: waits under its resumer's scope
            await coro.resume(c0)
            return "not reached"

        async def holder():
            m = coro.create(middle)
            with trio.CancelScope():
                r = await coro.resume(m)
            await trio.sleep(0)
            return r, coro.status(m)

        ok, r, status_m = await coro.resume(coro.create(holder))
        assert ok is True
        assert r[0] is False and is_error(r[1], ENDED)  # middle died of it
        assert status_m == "dead"

    run(main)


def test_cancelled_transfer_entered_coroutine_unwinds_to_the_scope_that_was_cancelled():
    async def main():
        async def c1_body():
            scope.cancel()
            await trio.sleep(0)  # trio.Cancelled, for holder's scope

        c1 = coro.create(c1_body)
        c0 = coro.create(lambda: coro.transfer(c1))
        scope = None

        async def holder():
            nonlocal scope
            with trio.CancelScope() as scope:
                await coro.resume(c0)
            return "holder goes on", scope.cancelled_caught

        with trio.CancelScope() as outer:
            assert await coro.resume(coro.create(holder)) == (True, "holder goes on", True)
            await trio.sleep(0)
        assert not outer.cancelled_caught
        assert (coro.status(c1), coro.status(c0)) == ("dead", "suspended")

    run(main)


def test_ending_inside_a_scope_is_raised_in_the_chain_of_the_coroutine_that_opened_it():
    async def main():
        log = []
        u = coro.create(lambda: "u returns")
        t = coro.create(lambda: coro.transfer(u))
        r = coro.create(lambda: coro.yield_("r"))

        async def q_body():  # entered by transfer inside x's scope
            with trio.CancelScope():  # q opens a scope of its own around a call...
                await coro.resume(r)
            try:  # ...and now waits outside it, under x's scope, not on x's way down
                await coro.resume(t)
            except CoroutineError as e:
                log.append(("q", str(e)))

        q = coro.create(q_body)
        a = coro.create(lambda: coro.transfer(q))

        async def x_body():
            with trio.CancelScope():
                try:
                    await coro.resume(a)
                except CoroutineError as e:
                    log.append(("x", str(e)))
            return "x done"

        x = coro.create(x_body)
        assert await coro.resume(x) == (True, "x done")
        assert log == [("x", ENDED)]
        assert [coro.status(c) for c in (q, t, u)] == ["normal", "suspended", "dead"]

    run(main)


def test_ending_whose_resumer_waits_under_other_scopes_is_raised_in_the_scope_holder():
    async def main():
        log = []

        async def returner():
            await coro.transfer(None, "parked")  # to main; waiter still waits for it
            return "values for waiter"

        async def waiter():
            log.append(await coro.resume(ret))
            return "waiter done"

        async def holder():
            c0 = coro.create(lambda: coro.transfer(ret))  # ret ends under holder's scope
            try:
                with trio.CancelScope():
                    await coro.resume(c0)
            except CoroutineError as e:
                log.append(str(e))
            return "holder done"

        ret = coro.create(returner)
        w = coro.create(waiter)
        assert await coro.resume(w) == (True, "parked")
        assert await coro.resume(coro.create(holder)) == (True, "holder done")
        assert log == ["coroutine ended while the call waiting for it was made under "
                       "other trio cancel scopes"]
        assert (coro.status(ret), coro.status(w)) == ("dead", "normal")
        # waiter's call was made under main's scopes: main may still end it
        with pytest.raises(CoroutineError, match=ENDED):
            await coro.transfer(w, "late")
        assert log[-1] == (True, "late") and coro.status(w) == "dead"

    run(main)


def test_scope_opened_and_closed_before_yielding_is_fine():
    async def main():
        async def body():
            with trio.move_on_after(100):
                await trio.sleep(0)
            with trio.CancelScope() as cs:
                cs.cancel()
                await trio.sleep(1)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep, 0)
            got = await coro.yield_("ok", cs.cancelled_caught)
            return got

        co = coro.create(body)
        assert await coro.resume(co) == (True, "ok", True)
        assert await coro.resume(co, "x") == (True, "x")

    run(main)


def test_coroutine_adopts_the_scopes_of_each_resumer():
    async def main():
        async def body():
            await coro.yield_(1)
            await trio.sleep(0)
            await coro.yield_(2)
            return 3

        co = coro.create(body)
        with trio.move_on_after(100):
            assert await coro.resume(co) == (True, 1)
        assert await coro.resume(co) == (True, 2)
        with trio.CancelScope():
            assert await coro.resume(co) == (True, 3)

    run(main)


def test_coroutine_resumed_inside_the_callers_cancel_scope_is_cancelled_by_it():
    async def main():
        log = []

        async def sleeper():
            try:
                await trio.sleep_forever()
            finally:
                log.append("sleeper finally")

        co = coro.create(sleeper)
        with trio.move_on_after(0.05) as cs:
            await coro.resume(co)
            log.append("not reached")
        assert cs.cancelled_caught
        assert log == ["sleeper finally"]
        assert coro.status(co) == "dead"

        # the same with the scope opened by a coroutine around its own resume
        async def outer_body():
            inner = coro.create(sleeper)
            with trio.move_on_after(0.05) as scope:
                await coro.resume(inner)
            await coro.yield_(scope.cancelled_caught, coro.status(inner))
            return "outer done"

        outer = coro.create(outer_body)
        assert await coro.resume(outer) == (True, True, "dead")
        assert await coro.resume(outer) == (True, "outer done")
        assert log == ["sleeper finally", "sleeper finally"]

    run(main)


# ---------------------------------------------------------------------------
# Cancellation


def test_cancelling_the_driving_task_unwinds_a_three_deep_chain():
    async def main():
        log = []
        ready = trio.Event()

        async def c_body():
            try:
                ready.set()
                await trio.sleep_forever()
            finally:
                log.append("c finally")

        def make(name, callee):
            async def body():
                try:
                    try:
                        r = await coro.resume(callee)
                        log.append((name, "returned", r))
                    except BaseException as e:
                        log.append((name, "raised", type(e)))
                        raise
                finally:
                    log.append(name + " finally")

            return coro.create(body)

        co_c = coro.create(c_body)
        co_b = make("b", co_c)
        co_a = make("a", co_b)

        async def driver():
            try:
                r = await coro.resume(co_a)
                log.append(("main", "returned", r))
            except BaseException as e:
                log.append(("main", "raised", type(e)))
                raise

        async with trio.open_nursery() as nursery:
            nursery.start_soon(driver)
            await ready.wait()
            nursery.cancel_scope.cancel()

        assert log == [
            "c finally",
            ("b", "raised", trio.Cancelled), "b finally",
            ("a", "raised", trio.Cancelled), "a finally",
            ("main", "raised", trio.Cancelled),
        ]
        assert [coro.status(c) for c in (co_a, co_b, co_c)] == ["dead"] * 3
        assert coro.running() == (coro.main, True)

    run(main)


def test_cancellation_in_a_transfer_entered_coroutine_reaches_main_as_cancelled():
    async def main():
        log = []
        ready = trio.Event()

        async def y_body():
            try:
                ready.set()
                await trio.sleep_forever()
            finally:
                log.append("y finally")

        async def x_body():
            await coro.transfer(co_y)

        co_x = coro.create(x_body)
        co_y = coro.create(y_body)

        async def driver():
            try:
                log.append(("main returned", await coro.transfer(co_x)))
            except BaseException as e:
                log.append(("main raised", type(e)))
                raise

        async with trio.open_nursery() as nursery:
            nursery.start_soon(driver)
            await ready.wait()
            nursery.cancel_scope.cancel()
        assert log == ["y finally", ("main raised", trio.Cancelled)]
        assert coro.status(co_y) == "dead"
        assert coro.status(co_x) == "suspended"

    run(main)


# ---------------------------------------------------------------------------
# Limits


def test_limits_100000_transfers_in_a_cycle_use_constant_stack():
    n_transfers = 100_000
    counter = [0]
    depths = {}
    samples = {0, 1, 2, 3, n_transfers // 2, n_transfers - 2, n_transfers - 1}

    async def step(i):
        while True:
            n = counter[0]
            if n in samples:
                depths[n] = (frame_depth(), len(inspect.stack(0)))
            if n == n_transfers:
                await coro.transfer(None, "done")
            counter[0] = n + 1
            await coro.transfer(cos[(i + 1) % 3])

    cos = [coro.create(functools.partial(step, i)) for i in range(3)]

    async def main():
        assert await coro.transfer(cos[0]) == "done"

    run(main)
    assert counter[0] == n_transfers
    assert set(depths) == samples
    assert len(set(depths.values())) == 1, depths


def test_limits_200_deep_resume_chain_works():
    depth = 200

    async def main():
        seen = []

        async def level(n):
            if n == depth:
                seen.append(coro.status(top))
                got = await coro.yield_("bottom")
                return n, got
            co = coro.create(level)
            r = await coro.resume(co, n + 1)
            if n == depth - 1:
                assert r == (True, "bottom")
                r = await coro.resume(co, "again")
            return r[1:]

        top = coro.create(level)
        assert await coro.resume(top, 1) == (True, depth, "again")
        assert seen == ["normal"]

    run(main)


def _check_outer_chain_still_works():
    async def leaf(x):
        got = await coro.yield_(x + 1)
        return got * 2

    async def mid(x):
        co = coro.create(leaf)
        r1 = await coro.resume(co, x)
        r2 = await coro.resume(co, r1[1])
        return r2[1]

    return mid


@pytest.fixture(params=["default", 300])
def recursion_limit(request):
    old = sys.getrecursionlimit()
    if request.param != "default":
        sys.setrecursionlimit(request.param)
    try:
        yield sys.getrecursionlimit()
    finally:
        sys.setrecursionlimit(old)


def test_limits_unbounded_nesting_returns_recursion_error_from_the_innermost_resume(
        recursion_limit):
    cap = recursion_limit + 50

    async def main():
        async def level(n):
            if n > cap:
                return "no limit", n
            co = coro.create(level)
            r = await coro.resume(co, n + 1)
            if r[0] is False:
                return "limit", n, r[1]
            return r[1:]

        async def top():
            result = await level(1)
            got = await coro.yield_(result)
            # afterwards, the outer chain still works
            r = await coro.resume(coro.create(_check_outer_chain_still_works()), got)
            return [r]

        co_top = coro.create(top)
        ok, result = await coro.resume(co_top)
        assert ok is True
        assert result[0] == "limit", result[:2]
        _, n, err = result
        assert isinstance(err, RecursionError)
        assert 200 <= n <= recursion_limit
        assert await coro.resume(co_top, 5) == (True, [(True, 12)])
        assert await coro.resume(coro.create(_check_outer_chain_still_works()), 1) == (True, 4)

    run(main)


def test_limits_unbounded_nesting_makes_a_wrap_call_raise_recursion_error(recursion_limit):
    cap = recursion_limit + 50

    async def main():
        async def level(n):
            if n > cap:
                return "no limit", n
            w = coro.wrap(level)
            try:
                return await w(n + 1)
            except RecursionError as e:
                return "limit", n, e

        w_top = coro.wrap(level)
        result = await w_top(1)
        assert result[0] == "limit", result[:2]
        _, n, err = result
        assert isinstance(err, RecursionError)
        assert 200 <= n <= recursion_limit
        assert await coro.wrap(_check_outer_chain_still_works())(1) == 4

    run(main)


def test_limits_unreferenced_suspended_coroutine_is_collected_and_its_finally_runs():
    async def main():
        log = []

        async def inner():
            try:
                await coro.yield_("inner")
            finally:
                log.append("inner finally")

        async def body():
            co_inner = coro.create(inner)
            try:
                await coro.resume(co_inner)
                await coro.yield_("outer")
            finally:
                log.append("outer finally")

        async def by_transfer():
            try:
                await coro.transfer(None, "parked")
            finally:
                log.append("transfer finally")

        async def generator():
            try:
                await coro.yield_("gen")
            finally:
                log.append("wrap finally")

        co = coro.create(body)
        assert await coro.resume(co) == (True, "outer")
        ref = weakref.ref(co)
        co2 = coro.create(by_transfer)
        assert await coro.transfer(co2) == "parked"
        ref2 = weakref.ref(co2)
        w = coro.wrap(generator)
        assert await w() == "gen"
        ref3 = weakref.ref(w.coroutine)
        del co, co2, w
        gc.collect()
        assert ref() is None
        assert ref2() is None
        assert ref3() is None
        assert sorted(log) == ["inner finally", "outer finally", "transfer finally",
                               "wrap finally"]

    run(main)


def test_coroutines_collected_after_trio_run_leave_nothing_to_the_next_run():
    import cosched._coro as core

    unraisable = []
    keep = []

    async def first():
        async def sleeper():
            await trio.sleep(0)

        async def body():
            try:
                await coro.yield_(1)
            finally:  # runs at collection, outside trio: it cannot await (Python says so)
                await coro.resume(coro.create(sleeper))

        async def gen():
            try:
                await coro.yield_(2)
            finally:
                await coro.wrap(sleeper)()

        co = coro.create(body)
        w = coro.wrap(gen)
        assert (await coro.resume(co), await w()) == ((True, 1), 2)
        keep.extend([co, w, keep])  # a cycle: only the collector frees them

    trio.run(first)
    old_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        keep = None
        gc.collect()
        gc.collect()
    finally:
        sys.unraisablehook = old_hook
    assert unraisable  # the finally blocks did try to await
    assert core._chain.get() is None

    async def second():
        with pytest.raises(CoroutineError, match=OUTSIDE) as info:
            await coro.yield_()
        assert type(info.value) is CoroutineError
        assert coro.running() == (coro.main, True)
        assert coro.status(coro.main) == "running" and not coro.isyieldable()
        co = coro.create(lambda: coro.yield_(5))
        return await coro.resume(co), coro.status(co)

    assert run(second) == ((True, 5), "suspended")


def test_a_driver_outside_trio_keeps_its_chain_out_of_the_callers_context():
    import types as pytypes

    import cosched._coro as core

    @pytypes.coroutine
    def event_loop_trap():
        return (yield "not a cosched trap")

    log = []

    async def body():
        try:
            log.append(await event_loop_trap())
            log.append(coro.current() is co)
            await coro.yield_("done")
        finally:
            log.append("finally")

    co = coro.create(body)
    driver = coro.resume(co)
    assert driver.send(None) == "not a cosched trap"  # forwarded to whoever drives main
    assert core._chain.get() is None and coro.status(co) == "running"
    with pytest.raises(StopIteration) as stop:
        driver.send("sent back")
    assert stop.value.value == (True, "done")
    assert log == ["sent back", True] and core._chain.get() is None

    # Dropped while it forwards, the driver closes the coroutine it forwards for.
    co = coro.create(body)
    driver = coro.resume(co)
    driver.send(None)
    del driver
    gc.collect()
    assert coro.status(co) == "dead"
    assert log[-1] == "finally" and core._chain.get() is None


def test_a_driver_from_outside_trio_collected_inside_a_chain_leaves_that_chain_alone():
    import types as pytypes

    @pytypes.coroutine
    def event_loop_trap():
        return (yield "not a cosched trap")

    log = []

    async def parked():
        try:
            await event_loop_trap()
        finally:
            log.append("parked closed")

    stale = [coro.resume(coro.create(parked))]
    stale[0].send(None)  # outside trio, it now forwards for its coroutine

    async def main():
        async def body():
            stale.clear()  # collected while this chain runs, in this task's context
            gc.collect()
            await coro.yield_("chain intact")
            return coro.current() is co

        co = coro.create(body)
        return await coro.resume(co), await coro.resume(co)

    assert run(main) == ((True, "chain intact"), (True, True))
    assert log == ["parked closed"]


# ---------------------------------------------------------------------------
# Misuse, then correct use, in the same chain


def test_misuse_then_correct_use_in_the_same_chain():
    async def main():
        dead = coro.create(lambda: None)
        await coro.resume(dead)
        log = []

        async def x_body():
            # entered by transfer: yielding is the wrong place
            try:
                await coro.yield_("wrong")
            except CoroutineError as e:
                log.append(("x yield", is_error(e, NOT_RESUMED)))
            got = await coro.transfer(co_a, "x back")
            await coro.transfer(co_a, "x again", got)

        async def b_body(arg):
            log.append(("b resume dead", is_error((await coro.resume(dead))[1], DEAD)))
            log.append(("b resume self", is_error((await coro.resume(co_b))[1], NONSUSP)))
            log.append(("b resume a", is_error((await coro.resume(co_a))[1], NONSUSP)))
            try:
                await coro.transfer(co_b)
            except CoroutineError as e:
                log.append(("b transfer self", is_error(e, SELF_TRANSFER)))
            try:
                await coro.transfer(dead)
            except CoroutineError as e:
                log.append(("b transfer dead", is_error(e, DEAD_TRANSFER)))
            try:
                await coro.close(co_b)
            except CoroutineError as e:
                log.append(("b close self", is_error(e, CLOSE_RUNNING)))
            try:
                await coro.close(co_a)
            except CoroutineError as e:
                log.append(("b close a", is_error(e, CLOSE_NORMAL)))
            # correct use afterwards
            got = await coro.yield_("b yields", arg)
            got2 = await coro.transfer(co_a, "b transfers", got)
            return "b returns", got2

        async def a_body():
            got = await coro.transfer(co_x)
            log.append(("a got", got))
            r1 = await coro.resume(co_b, 1)
            r2 = await coro.resume(co_b, 2)
            r3 = await coro.resume(co_b, 3)
            log.append(("a resumes", r1, r2, r3, coro.status(co_b)))
            got = await coro.transfer(co_x, "to x")
            log.append(("a got", got))
            await coro.yield_("a yields")
            return "a done"

        co_x = coro.create(x_body)
        co_b = coro.create(b_body)
        co_a = coro.create(a_body)
        assert await coro.resume(co_a) == (True, "a yields")
        assert await coro.resume(co_a) == (True, "a done")
        assert log == [
            ("x yield", True),
            ("a got", "x back"),
            ("b resume dead", True),
            ("b resume self", True),
            ("b resume a", True),
            ("b transfer self", True),
            ("b transfer dead", True),
            ("b close self", True),
            ("b close a", True),
            ("a resumes", (True, "b yields", 1), (True, "b transfers", 2),
             (True, "b returns", 3), "dead"),
            ("a got", ("x again", "to x")),
        ]
        # main is unharmed too
        with pytest.raises(CoroutineError, match=OUTSIDE):
            await coro.yield_()
        assert coro.running() == (coro.main, True)
        assert await coro.resume(coro.create(lambda a: a), "fine") == (True, "fine")

    run(main)


def test_return_of_a_tuple_subclass_gives_its_items_as_values():
    from collections import namedtuple
    Pair = namedtuple("Pair", "a b")

    async def main():
        co = coro.create(lambda: Pair(1, 2))
        return await coro.resume(co)

    assert run(main) == (True, 1, 2)


def test_transfer_to_a_coroutine_waiting_in_another_trio_task_is_refused():
    async def main():
        gate = trio.Event()

        async def waiter():
            await coro.resume(sleeper)      # parent stays "normal" in task A meanwhile

        async def sleeper_body():
            await gate.wait()

        sleeper = coro.create(sleeper_body)
        parent = coro.create(waiter)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(coro.resume, parent)
            await trio.testing.wait_all_tasks_blocked()
            assert coro.status(parent) == "normal"
            with pytest.raises(coro.CoroutineError, match="another trio task"):
                await coro.transfer(parent, "hijack")
            gate.set()
        return coro.status(parent), coro.status(sleeper)

    assert run(main) == ("dead", "dead")


def test_task_spawned_from_a_coroutine_that_has_since_yielded_resumes_as_main():
    async def main():
        results = []
        async with trio.open_nursery() as nursery:
            async def driver():
                results.append(await coro.resume(coro.create(lambda x: x * 2), 21))
                results.append(coro.running())
                with pytest.raises(CoroutineError, match="attempt to yield from outside a coroutine"):
                    await coro.yield_()

            async def job():
                nursery.start_soon(driver)
                await coro.yield_("suspended")

            results.append(await coro.resume(coro.create(job)))
        return results

    assert run(main) == [(True, "suspended"), (True, 42), (coro.main, True)]


def test_yield_awaited_after_the_coroutine_lost_its_resumer_raises_not_resumed():
    async def main():
        async def body():
            late = coro.yield_("early")  # made while resumed, awaited later
            await coro.yield_("first")   # this yield drops the resumer link
            with pytest.raises(CoroutineError, match=NOT_RESUMED):
                await late
            await coro.transfer(None, "recovered")

        co = coro.create(body)
        first = await coro.resume(co)
        again = await coro.transfer(co)
        return first, again, coro.status(co)

    assert run(main) == ((True, "first"), "recovered", "suspended")


def test_stack_of_follows_a_trio_task_through_its_driver_into_the_coroutine():
    async def main():
        entered = trio.Event()

        async def deepest():
            entered.set()
            await trio.sleep_forever()

        async def outer():
            await coro.resume(coro.create(deepest))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(coro.resume, coro.create(outer), name="driver")
            await entered.wait()
            await trio.testing.wait_all_tasks_blocked()
            task = next(t for t in nursery.child_tasks if t.name == "driver")
            names = [fn for _, _, fn in stack_of(task.coro)]
            nursery.cancel_scope.cancel()
        return names

    names = [name.rsplit(".", 1)[-1] for name in run(main)]
    assert names[:3] == ["outer", "deepest", "sleep_forever"]


def test_switches_of_counts_each_passing_of_control_in_the_task():
    async def main():
        task = trio.lowlevel.current_task()

        async def inner():
            await coro.yield_()

        async def outer():
            await coro.resume(coro.create(inner))  # outer->inner, inner->outer
            await coro.yield_()                    # outer->main

        async def bad():
            with pytest.raises(CoroutineError):
                await coro.transfer(coro.running()[0])  # refused: no switch
            await coro.yield_()

        counts = [switches_of(task)]
        await coro.resume(coro.create(lambda: coro.yield_()))  # main->co, co->main
        counts.append(switches_of(task))
        await coro.resume(coro.create(outer))                  # + 4
        counts.append(switches_of(task))
        await coro.resume(coro.create(bad))                    # + 2
        counts.append(switches_of(task))
        async with trio.open_nursery() as nursery:             # a child task counts its own
            nursery.start_soon(coro.resume, coro.create(outer))
        counts.append(switches_of(task))
        return counts

    assert run(main) == [0, 2, 6, 8, 8]
