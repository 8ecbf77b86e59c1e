"""The coroutine core behind ``cosched.coro``: coroutine objects, traps, and the chain driver.

Design principles
-----------------
1. **One flat driver per chain.** A switching call made from main (``resume``,
   ``transfer``, a wrap call, ``close``) becomes the *driver*: a loop that runs the
   whole chain of coroutines entered from it. Inside a coroutine, switching calls
   never call each other; they yield a small trap to that driver, which switches by
   sending into another Python coroutine object. Python and C stacks stay flat, so
   ``transfer`` cycles forever and deep ``resume`` chains cost memory, not stack.
2. **Everything else belongs to the event loop.** A yielded value that is not one of
   our traps came from trio (or another loop) deep inside the running coroutine; the
   driver forwards it unchanged (``value = yield msg``, ``throw`` too), so I/O
   suspends only this chain and never reaches a resumer (cross-yield by construction).
3. **Validate in the caller, transition in the driver.** Each switching call checks
   its arguments synchronously in the caller's frame, then yields exactly one trap;
   the driver performs the transition and the cancel-scope checks, which need the
   trio task. Misuse raises where it happened and leaves no state behind. An
   ending cannot be refused: when the outcome of a body may not go where the rules
   send it, it is raised at the pending call ``_blocker`` names instead.
4. **Status is state.** A coroutine's ``_state`` is its status (``initial`` reads as
   ``suspended``); the switch that changes who runs writes it, nothing recomputes it.
5. **The switch path is lean.** Traps are preallocated singletons; payloads travel
   in two slots of the chain object; slots everywhere; ``type(x) is T`` checks.
   Exceptions are delivered wrapped in ``_Delivery`` so Python's close-on-
   GeneratorExit never fires on an outer frame and any other thrown exception is
   recognisably the event loop's.

This module is the complete reference implementation. When the C extension
``cosched._speedups`` is built (and ``COSCHED_PURE_PYTHON`` is not set), it replaces
the switch path only -- the coroutine and chain fields, ``_trap``, ``_drive`` and the
hot case of ``yield_`` -- and calls back into the helpers here for every other
transition, so both run the same rules.

Which code is "in a coroutine" is tracked per trio task by the context variable
``_chain``, holding the task's one ``_Chain`` (trio runs each task in its own
context); its ``current`` is None while main runs. A task spawned from inside a
coroutine inherits the variable; its first trap then reaches trio instead of a
driver, trio throws ``TypeError`` back, and the call recovers by running as main
(``_Rejected``). Calls that would fail or answer without switching double-check the
task first, so the inherited value is never trusted for an answer.
"""

from __future__ import annotations

import os
import sys
import types
import weakref
from contextvars import ContextVar
from inspect import isawaitable

try:  # the event loop is optional for the core; trio is what the scope rules talk about
    from trio.lowlevel import current_task as _trio_current_task
except ImportError:  # pragma: no cover
    _trio_current_task = None
try:  # trio.lowlevel.current_task() reads this; reading it directly saves a call and a try
    from trio._core._run import GLOBAL_RUN_CONTEXT as _TRIO_RUN
    from trio._core._run import Task as _TrioTask
except ImportError:  # pragma: no cover
    _TRIO_RUN = _TrioTask = None

_speedups = None
if not os.environ.get("COSCHED_PURE_PYTHON"):
    try:
        from cosched import _speedups
    except ImportError:  # not built: the pure-Python switch path below runs
        _speedups = None

__all__ = [
    "Coroutine", "CoroutineError", "Wrapped", "SafeWrapped", "main",
    "create", "resume", "yield_", "transfer", "status", "running", "current",
    "isyieldable", "wrap", "safewrap", "close",
]


class CoroutineError(RuntimeError):
    """Misuse of a coroutine: raised or returned by every rule of the contract."""


# Status values. ``_INITIAL`` is "suspended and never started".
_INITIAL = "initial"
_SUSPENDED = "suspended"
_RUNNING = "running"
_NORMAL = "normal"
_DEAD = "dead"

_DEAD_MSG = "cannot resume dead coroutine"
_NONSUSP_MSG = "cannot resume non-suspended coroutine"
_SELF_TRANSFER_MSG = "cannot transfer to the running coroutine"
_SW_GONE_MSG = "cannot yield: the safewrap caller is no longer waiting"


class _Trap:
    """A message from a switching call to its chain's driver. Singletons only."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<cosched trap {self.name}>"


# Suspending traps: the caller becomes "suspended".
YIELD = _Trap("yield")
TRANSFER = _Trap("transfer")
SAFEYIELD = _Trap("safewrap-yield")
# Nesting traps: the caller becomes "normal" until its callee gives control back.
RESUME = _Trap("resume")
WRAP = _Trap("wrap")
ITER = _Trap("wrap-iter")
SAFECALL = _Trap("safewrap")
SAFEITER = _Trap("safewrap-iter")
CLOSE = _Trap("close")


class _Delivery(BaseException):
    """Carries an exception into a pending switching call, which re-raises it."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _MainType:
    """``coro.main``: stands for whatever code runs outside every coroutine."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "coro.main"

    def __reduce__(self) -> str:
        return "main"


main = _MainType()


class Coroutine(_speedups.CoroutineBase if _speedups else object):
    """A coroutine made by :func:`create`. Drive it with the module functions."""

    # With _speedups the same fields live in the C base (same names and meaning).
    __slots__ = () if _speedups else (
        "_fn",        # body callable until the first start, then None
        "_co",        # the Python coroutine object while started and not dead
        "_state",     # _INITIAL/_SUSPENDED/_RUNNING/_NORMAL/_DEAD: the status, stored once
        "_resumer",   # Coroutine or _Chain that resumed it and still waits for it, else None
        "_awaits",    # while _NORMAL: the coroutine its pending call waits for (a
                      # SafeWrapped for a safewrap call: see _callee)
        "_pending",   # the trap of its pending call (how a delivery is formatted)
        "_entry_cs",  # trio cancel status when it last gained control from a suspension
        "_call_cs",   # trio cancel status its pending nesting call was made under
        "_depth",     # resume nesting depth (main = 0)
        "_error",     # what it died of, kept for close(); None after a clean end or close
        "_closing",   # 0, or 1 while close() runs its cleanup, 2 once that cleanup tried to switch
        "_sw",        # the SafeWrapped it is the body of, else None
        "__weakref__",
    )

    if not _speedups:   # (the C base makes it whole: one is made at every task start)
        def __init__(self, fn) -> None:
            self._fn = fn
            self._co = None
            self._state = _INITIAL
            self._resumer = None
            self._awaits = None
            self._pending = None
            self._entry_cs = None
            self._call_cs = None
            self._depth = 0
            self._error = None
            self._closing = 0
            self._sw = None

    def __repr__(self) -> str:
        s = _SUSPENDED if self._state is _INITIAL else self._state
        return f"<cosched coroutine {s} at {id(self):#x}>"


class _Chain(_speedups.ChainBase if _speedups else object):
    """Main's side of a trio task's chains: the pending call main made, and the driver's scratch.

    One per trio task, kept in the ``_chain`` context variable and reused by each
    switching call main makes; ``current is None`` means main is running. It is the
    ``_resumer`` of the coroutine main entered, so it carries the same fields a
    coroutine's pending call does.
    """

    __slots__ = () if _speedups else (
        "task",      # the trio task driving the chain (None outside trio)
        "current",   # the coroutine executing (or awaiting I/O) in this chain
        "target",    # trap payload: what the switching call names (cleared once read)
        "args",      # trap payload: the values it passes (cleared once read)
        "_state", "_pending", "_awaits", "_call_cs", "_depth", "_resumer",
        "switches",  # how many times control passed between coroutines (or main) in this task
        "_holders",  # coroutines waiting in a nesting call made under a scope they opened,
                     # in call order (None when empty); emptied whenever main gets control,
                     # since no scope opened inside the chain can be open then
    )

    if not _speedups:   # (the C base makes it whole)
        def __init__(self, kind: _Trap, task) -> None:
            self.task = task
            self.current = None
            self.target = None
            self.args = None
            self._state = _NORMAL
            self._pending = kind
            self._awaits = None
            self._call_cs = task._cancel_status if task is not None else None
            self._depth = 0
            self._resumer = None
            self.switches = 0
            self._holders = None


_chain: ContextVar[_Chain | None] = ContextVar("cosched_chain", default=None)
# The coroutine that last transferred control to main in this context, weakly: a
# dispatcher that drives chains needs it to continue them (see last_transfer_to_main).
_handed_off: ContextVar = ContextVar("cosched_handed_off", default=None)


def _current_task():
    """The trio task running this code, or None outside trio."""
    if _TRIO_RUN is not None:
        return getattr(_TRIO_RUN, "task", None)
    if _trio_current_task is None:  # pragma: no cover
        return None
    try:  # pragma: no cover
        return _trio_current_task()
    except RuntimeError:  # pragma: no cover
        return None


def _active_chain() -> _Chain | None:
    """The chain whose coroutine is executing in this trio task, or None in main."""
    m = _chain.get()
    if m is not None and (m.current is None or m.task is not _current_task()):
        return None  # inherited from the task that spawned this one
    return m


def _depth_limit() -> int:
    return max(200, sys.getrecursionlimit())


def _pack(vals: tuple):
    n = len(vals)
    return None if n == 0 else vals[0] if n == 1 else vals


def _unpack(result) -> tuple:
    """A body's return value as values: None -> none, any tuple -> its items, else one."""
    return () if result is None else tuple(result) if isinstance(result, tuple) else (result,)


async def _await_any(awaitable):
    return await awaitable


async def _immediately(value):
    return value


def _body(fn, args):
    """The Python coroutine object that runs ``fn(*args)`` as a coroutine body."""
    r = fn(*args)
    if type(r) is types.CoroutineType:
        return r
    if isawaitable(r):
        return _await_any(r)
    return _immediately(r)


# --------------------------------------------------------------------------------------
# The driver


def _callee(node):
    """The coroutine node's pending nesting call waits for, if any.

    A safewrap call waits for the safewrap: its ``yield_fn`` may be called from
    whichever coroutine the call resumed, and the call ends however it ends. So
    ``node._awaits is sw`` says exactly whether node's latest call is to sw and
    still pending; the coroutine behind it is where sw resumes.
    """
    a = node._awaits
    return a._point if type(a) is SafeWrapped else a


def _release(dest) -> None:
    """dest's pending nesting call finishes: the coroutine it waited for loses its link."""
    a = dest._awaits
    if a is not None:
        dest._awaits = None
        if type(a) is SafeWrapped:  # only the body gets a link, from a call it entered
            a = a.coroutine
        if a._resumer is dest:
            a._resumer = None


def _arrive(dest, vals: tuple, err: BaseException | None, ending: bool):
    """Format what dest's pending call receives: (value, None), or (None, exc) to raise there."""
    kind = dest._pending
    if kind is CLOSE:  # only ever reached by the ending of the coroutine it closes
        if err is None:
            return (True,), None
        return ((False, err), None) if isinstance(err, Exception) else (None, err)
    if err is None:
        if kind is RESUME:
            return (True,) + vals, None
        if ending and (kind is ITER or kind is SAFEITER):
            return None, StopAsyncIteration()
        return _pack(vals), None
    if kind is RESUME and isinstance(err, Exception):
        return (False, err), None
    return None, err


def _scope_error(m: _Chain, cur, dest, what: str):
    """Check the cancel-scope rules for cur handing control to dest; return an error or None.

    cur must not leave a scope it opened (its entry status must be current), and
    a pending nesting call may only get control back under the scopes it was made
    in -- which also keeps a call made in one trio task from returning in another.
    """
    cs = m.task._cancel_status
    if cur is not m and cs is not cur._entry_cs:
        return CoroutineError(
            f"cannot {what} with a trio cancel scope or nursery opened inside the "
            "coroutine still open (close it before switching)")
    if dest._state is _NORMAL and cs is not dest._call_cs:
        return CoroutineError(
            f"cannot {what} to a coroutine whose pending call was made under other trio "
            "cancel scopes (or in another trio task)")
    return None


def _enter(m: _Chain, cur, kind: _Trap, target, args: tuple):
    """cur (a coroutine, or the chain for main) makes a nesting call; return (next, value, exc)."""
    cs = m.task._cancel_status if m.task is not None else None
    if cur is not m and cs is not cur._entry_cs:  # cur opened a scope around this call
        _hold(m, cur)
    if kind is SAFECALL or kind is SAFEITER:
        sw = awaited = target
        target = sw._point
        sw._caller = cur
        if target._state is _INITIAL:
            args = (sw._yield, *args)
        if target is sw.coroutine:
            target._resumer = cur
    else:
        awaited = target
        target._resumer = cur
    cur._state = _NORMAL
    cur._pending = kind
    cur._awaits = awaited
    cur._call_cs = cs
    target._depth = cur._depth + 1
    target._entry_cs = cs
    target._state = _RUNNING
    if kind is CLOSE:
        target._closing = 1
        return target, None, _Delivery(GeneratorExit())
    if target._fn is not None:
        return target, args, None
    return target, _pack(args), None


def _hold(m: _Chain, co: Coroutine) -> None:
    """co, still running, makes a nesting call inside a scope it opened: note it as a holder.

    Holders nest like the scopes they opened, so the ones that no longer hold one
    (their call returned; they may since wait again, outside their scopes) are
    the latest: they are dropped here, and all of them when main runs.
    """
    h = m._holders
    if h is None:
        m._holders = [co]
        return
    while h and (h[-1]._state is not _NORMAL or h[-1]._call_cs is h[-1]._entry_cs):
        h.pop()
    h.append(co)


def _blocker(m: _Chain, dest):
    """The coroutine an ending must be raised in instead of reaching dest, or None.

    A pending call may get control back only under the scopes it was made in, and
    a pending close only with the outcome of the coroutine it closes. An ending
    cannot be refused (there is no one left to raise in), so when the chain ends
    elsewhere than where it was entered -- a coroutine entered by transfer inside
    another's scope returns -- its outcome is raised at the innermost pending call
    made under the current scopes instead: it unwinds those scopes as any
    exception would, and travels on by the ordinary rules. Likewise an ending that
    would reach a pending close is raised in the coroutine being closed, as if its
    cleanup had raised it.
    """
    task = m.task
    if task is not None and task._cancel_status is not dest._call_cs:
        cs = task._cancel_status
        for x in reversed(m._holders or ()):
            if x._state is _NORMAL and x._call_cs is cs and x._entry_cs is not cs:
                # x opened the innermost scope and waits under it
                a = _callee(x)
                while a is not None and a._state is _NORMAL and a._call_cs is cs:
                    x, a = a, _callee(a)
                return x
    if dest._pending is CLOSE:
        a = dest._awaits
        if a is not None and a._state is _NORMAL:
            return a
    return None


def _leave(m: _Chain, cur, kind: _Trap, dest, vals: tuple):
    """cur suspends and hands vals to dest (a coroutine or a chain); return (next, value, exc)."""
    if dest is None:  # a yield_() awaited after its coroutine lost its resumer
        return cur, None, _Delivery(CoroutineError(
            "attempt to yield from a coroutine that was not resumed"))
    if m.task is not None:
        err = _scope_error(m, cur, dest, "yield" if kind is not TRANSFER else "transfer")
        if err is not None:
            return cur, None, err if cur is m else _Delivery(err)
    if type(dest) is _Chain and dest is not m:
        return cur, None, _Delivery(CoroutineError(
            "cannot switch to a resumer that waits in another trio task"))
    if cur is not m:
        cur._state = _SUSPENDED
        cur._pending = kind
        if dest is m and m.task is not None:
            _handed_off.set(weakref.ref(cur))
    s = dest._state
    if s is _NORMAL:
        _release(dest)
        value, exc = _arrive(dest, vals, None, False)  # values never make an exception here
    elif s is _INITIAL:
        dest._depth = cur._depth
        value, exc = vals, None
    else:
        dest._depth = cur._depth
        value, exc = _pack(vals), None
    if dest is not m:
        dest._state = _RUNNING
        if s is not _NORMAL and m.task is not None:
            dest._entry_cs = m.task._cancel_status
    return dest, value, exc


def _end(m: _Chain, co: Coroutine, vals: tuple, err: BaseException | None):
    """co's body returned vals or raised err: return (next, value, exc) for the driver."""
    co._state = _DEAD
    co._co = None
    dest = co._resumer
    co._resumer = None
    if co._closing:  # close() ran its cleanup: the closer gets (True,) or (False, exc)
        tried = co._error if co._closing == 2 else None
        co._closing = 0
        co._error = None
        if dest is None:  # pragma: no cover - a closer always waits
            dest = m
        if tried is not None:
            err = tried
        elif type(err) is GeneratorExit:
            err = None
        return _deliver(m, dest, (), err)
    co._error = err if err is not None and type(err) is not GeneratorExit else None
    sw = co._sw
    if sw is not None:
        caller = sw._waiting()
        sw._caller = None
        if caller is not None:
            dest = caller
    if dest is None:
        dest = m
        if err is None:
            err = CoroutineError("coroutine ended without transferring control")
    elif type(dest) is _Chain and dest is not m:
        dest = m
        err = CoroutineError("coroutine ended while its resumer waits in another trio task")
    return _deliver(m, dest, vals, err)


def _deliver(m: _Chain, dest, vals: tuple, err: BaseException | None):
    """An ending's outcome goes to dest's pending call, or is raised where _blocker says."""
    x = _blocker(m, dest)
    if x is not None:
        if err is None:
            err = CoroutineError(
                "coroutine ended while the call waiting for it was made under other trio "
                "cancel scopes")
        _release(x)
        x._state = _RUNNING
        return x, None, _Delivery(err)
    _release(dest)
    value, exc = _arrive(dest, vals, err, True)
    if dest is m:
        return dest, value, exc
    dest._state = _RUNNING
    return dest, value, None if exc is None else _Delivery(exc)


@types.coroutine
def _drive(kind: _Trap, target, args: tuple):
    """Main's switching call: run the chain it enters until control comes back to main.

    Returns what main's pending call receives, or raises it. ``err`` always holds
    what is to be thrown into ``co`` as is: a ``_Delivery`` for a pending switching
    call, a raw exception for an event-loop trap, a raw one for main.
    """
    task = _current_task()
    m = outer = _chain.get()
    if task is None or m is None or m.task is not task or m.current is not None:
        # First chain of this task (or an inherited variable): one _Chain per task,
        # kept in the context and reused by every later switching call from main.
        # Outside trio no task owns the context (it may be the thread's own, which
        # the next trio.run copies, or a finalizer's): the chain is in it only
        # while this driver runs, and the caller's value comes back whenever
        # control leaves the driver.
        m = _Chain(kind, task)
        _chain.set(m)
    else:
        m._pending = kind
        m._call_cs = None if task is None else task._cancel_status
    try:
        if kind is RESUME:  # the common entry, inlined (see _enter)
            m._awaits = co = target
            co._resumer = m
            co._depth = 1
            co._entry_cs = m._call_cs
            co._state = _RUNNING
            value = args if co._fn is not None else (
                None if not args else args[0] if len(args) == 1 else args)
            err = None
        elif kind is TRANSFER:
            co, value, err = _leave(m, m, kind, target, args)
        else:
            co, value, err = _enter(m, m, kind, target, args)
        while co is not m:
            if co is not m.current:  # control passes to another coroutine
                m.switches += 1
                m.current = co
            try:
                if err is None:
                    if co._fn is not None:  # first start: value holds the arguments
                        fn = co._fn
                        co._fn = None
                        co._co = _body(fn, value)
                        value = None
                    msg = co._co.send(value)
                else:
                    msg = co._co.throw(err)
                    err = None
            except StopIteration as e:
                co, value, err = _end(m, co, _unpack(e.value), None)
                continue
            except BaseException as e:  # noqa: BLE001 - delivered to the resumer by the rules
                co, value, err = _end(m, co, (), e)
                continue
            if type(msg) is not _Trap:
                # An event-loop trap from deep inside co: forward it unchanged.
                if task is None:
                    _chain.set(outer)
                try:
                    value = yield msg
                except GeneratorExit:
                    _abandon(co)
                    raise
                except BaseException as e:  # noqa: BLE001 - thrown in raw, as trio expects
                    err = e
                if task is None:
                    _chain.set(m)
                continue
            args = m.args
            m.args = None
            if msg is YIELD:
                # The hot path, inlined: hand the values to the resumer waiting for co.
                dest = co._resumer
                if (type(dest) is Coroutine or dest is m) and (
                        task is None or task._cancel_status is co._entry_cs is dest._call_cs):
                    co._state = _SUSPENDED
                    co._pending = YIELD
                    co._resumer = None
                    dest._awaits = None
                    if dest._pending is RESUME:
                        value = (True,) + args
                    else:
                        value = None if not args else args[0] if len(args) == 1 else args
                    if dest is not m:
                        dest._state = _RUNNING
                    co = dest
                else:
                    co, value, err = _leave(m, co, msg, dest, args)
                continue
            target = m.target
            m.target = None
            if msg is RESUME or msg is WRAP or msg is ITER:
                # The other hot path, inlined: start or continue target nested under co.
                cs = None if task is None else task._cancel_status
                if cs is not co._entry_cs:  # co opened a scope around this call
                    _hold(m, co)
                co._state = _NORMAL
                co._pending = msg
                co._awaits = target
                co._call_cs = cs
                target._resumer = co
                target._depth = co._depth + 1
                target._entry_cs = cs
                target._state = _RUNNING
                value = args if target._fn is not None else (
                    None if not args else args[0] if len(args) == 1 else args)
                co = target
            elif msg is TRANSFER:
                if target is not None and target._state is not _NORMAL and (
                        task is None or task._cancel_status is co._entry_cs):
                    # To a suspended or new coroutine, inlined (see _leave).
                    co._state = _SUSPENDED
                    co._pending = TRANSFER
                    target._depth = co._depth
                    target._entry_cs = co._entry_cs
                    target._state = _RUNNING
                    value = args if target._fn is not None else (
                        None if not args else args[0] if len(args) == 1 else args)
                    co = target
                else:
                    co, value, err = _leave(m, co, msg, m if target is None else target, args)
            elif msg is SAFEYIELD:
                co, value, err = _safe_leave(m, co, target, args)
            else:
                co, value, err = _enter(m, co, msg, target, args)
        if m.current is not None:  # ...and back to main
            m.switches += 1
        if err is not None:
            raise err
        return value
    finally:
        m.current = None  # main runs again: the chain stays for the next call, idle
        m._call_cs = m._awaits = m._holders = None
        if task is None and _chain.get() is m:  # not when closed from a finalizer elsewhere
            _chain.set(outer)


def _abandon(co: Coroutine) -> None:
    """Main itself is being closed while co runs: close co's Python coroutine with it."""
    co._state = _DEAD
    co._resumer = None
    c, co._co = co._co, None
    c.close()


def _safe_leave(m: _Chain, co: Coroutine, sw: SafeWrapped, vals: tuple):
    dest = sw._waiting()
    if dest is None:  # pragma: no cover - yield_fn checked it just before trapping
        return co, None, _Delivery(CoroutineError(_SW_GONE_MSG))
    nxt, value, exc = _leave(m, co, SAFEYIELD, dest, vals)
    if nxt is not co:
        sw._point = co
        sw._caller = None
    return nxt, value, exc


class _Rejected(CoroutineError):
    """The event loop bounced a trap: no driver runs this task (it inherited the context
    of a coroutine when it was spawned). Callers that can run as main catch it."""


@types.coroutine
def _trap(kind: _Trap):
    """The one place that yields to a chain driver: hand it ``kind``, return what comes back.

    The caller has put the payload in its chain's ``target``/``args`` first. An
    exception delivered by the driver arrives wrapped and is raised here, at the
    innermost pending call (so cleanup code above may still await).
    """
    try:
        return (yield kind)
    except _Delivery as d:
        exc = d.exc
    except TypeError as e:
        exc = _rejected(e)
        if exc is e:
            raise
    raise exc


def _rejected(e: TypeError) -> BaseException:
    """What a trap raises when the event loop throws ``e`` back at it.

    trio throws TypeError("...unrecognized yield message <cosched trap ...>") when a
    trap reaches it: this task inherited a chain it does not run. Anything else is
    returned unchanged, to be re-raised as it is.
    """
    if "cosched trap" not in str(e) or _chain.get() is None:
        return e
    _chain.set(None)
    err = _Rejected("attempt to yield from outside a coroutine")
    err.__suppress_context__ = True
    return err


def _own_chain() -> _Chain | None:
    """This task's running chain; forgets one inherited from the task that spawned it."""
    m = _chain.get()
    if m is None or m.current is None:
        return None
    if m.task is not _current_task():
        _chain.set(None)
        return None
    return m


def _resumable(co) -> bool:
    return type(co) is Coroutine and (co._state is _SUSPENDED or co._state is _INITIAL)


# --------------------------------------------------------------------------------------
# The switching calls. Each validates in the caller's frame, then either drives the
# chain (called from main) or traps to the driver (called inside a coroutine). The
# hot ones trust a live chain in the context variable and learn about an inherited
# one from _Rejected; calls that answer without switching check the task first.


def create(fn) -> Coroutine:
    """A new coroutine running ``fn``; nothing runs until it is resumed or transferred to."""
    if not callable(fn):
        raise TypeError(f"create: expected a callable, got {type(fn).__name__}")
    return Coroutine(fn)


def _not_a_coroutine(fname: str, x) -> TypeError:
    return TypeError(f"{fname}: expected a coroutine, got {type(x).__name__}")


def _refusal(co) -> CoroutineError:
    return CoroutineError(_DEAD_MSG if co is not main and co._state is _DEAD else _NONSUSP_MSG)


def _too_deep() -> RecursionError:
    return RecursionError(f"coroutine stack overflow: resume nested deeper than {_depth_limit()}")


def _nest_call(kind: _Trap, co, args: tuple):
    """What a resume or wrap call of co awaits when co can be entered from here: the
    driver when main calls, the trap when a coroutine does; else None (co is not
    suspended, or the caller's chain is nested too deep)."""
    if type(co) is not Coroutine or (co._state is not _SUSPENDED and co._state is not _INITIAL):
        return None
    m = _chain.get()
    if m is None or m.current is None:
        return _drive(kind, co, args)
    d = m.current._depth
    if d < 200 or d < _depth_limit():
        m.target = co
        m.args = args
        return _trap(kind)
    if _own_chain() is None:  # deep, but in the task that spawned this one: main here
        return _drive(kind, co, args)
    return None


def _nest_refusal(co) -> BaseException:
    """Why _nest_call gave None for co (a Coroutine, or main): nested too deep, or not suspended."""
    return _too_deep() if _resumable(co) else _refusal(co)


async def resume(co, *args):
    """Resume ``co`` with ``args``; return ``(True, *values)`` or ``(False, exc)``."""
    call = _nest_call(RESUME, co, args)
    if call is None:
        if type(co) is not Coroutine and co is not main:
            raise _not_a_coroutine("resume", co)
        return (False, _nest_refusal(co))
    try:
        return await call
    except _Rejected:  # the chain in the context was inherited: this task is main
        return await _drive(RESUME, co, args)


def yield_(*values):
    """Suspend the running coroutine, handing ``values`` to its resumer; await the result.

    The one switching call that is not an ``async def``: it only ever runs inside a
    coroutine, so it checks at once and returns the trap itself, which keeps a
    suspended coroutine one frame smaller and the hottest switch one call shorter.
    """
    m = _chain.get()
    if m is not None and m.current is not None:
        cur = m.current
        if cur._resumer is not None and not cur._closing:
            m.args = values
            return _trap(YIELD)
        if _own_chain() is not None:
            if cur._closing:
                raise _closing_switch(cur, "yield")
            raise CoroutineError("attempt to yield from a coroutine that was not resumed")
    raise CoroutineError("attempt to yield from outside a coroutine")


def _closing_switch(cur: Coroutine, what: str) -> CoroutineError:
    err = CoroutineError(f"cannot {what} from a coroutine that is being closed")
    if cur._closing == 1:
        cur._closing = 2
        cur._error = err
    return err


def _transfer_refused(target, m: _Chain | None):
    """The error transfer raises for target, or None when the transfer may go ahead."""
    if target is None or target is main:
        if m is None:
            return CoroutineError(_SELF_TRANSFER_MSG)
        if m.current._closing:
            return _closing_switch(m.current, "transfer")
        if m._pending is CLOSE:  # main's pending close may only end with that coroutine
            return CoroutineError("cannot transfer to main while it is closing a coroutine")
        return None
    if type(target) is not Coroutine:
        return _not_a_coroutine("transfer", target)
    s = target._state
    if s is _DEAD:
        return CoroutineError("cannot transfer to a dead coroutine")
    if s is _RUNNING:
        return CoroutineError(_SELF_TRANSFER_MSG)
    if s is _NORMAL and target._pending is CLOSE:
        return CoroutineError("cannot transfer to a coroutine that is closing another")
    if m is not None and m.current._closing:
        return _closing_switch(m.current, "transfer")
    return None


def _transfer_call(target, values: tuple):
    """The trap a transfer awaits from a coroutine to a suspended coroutine, else None."""
    m = _chain.get()
    if (m is not None and m.current is not None and type(target) is Coroutine
            and (target._state is _SUSPENDED or target._state is _INITIAL)
            and not m.current._closing):
        m.target = target
        m.args = values
        return _trap(TRANSFER)
    return None


async def transfer(target, *values):
    """Suspend the caller and run ``target`` with ``values`` (``None``/``main``: to main)."""
    call = _transfer_call(target, values)
    if call is not None:
        try:
            return await call
        except _Rejected:
            return await _drive(TRANSFER, target, values)
    m = _own_chain()
    err = _transfer_refused(target, m)
    if err is not None:
        raise err
    if m is None:
        return await _drive(TRANSFER, target, values)
    m.target = None if target is main else target
    m.args = values
    return await _trap(TRANSFER)


async def _nest(kind: _Trap, co, args: tuple):
    """A wrap-style call (wrap, safewrap, close) from anywhere, once validated."""
    m = _chain.get()
    if m is not None and m.current is not None:
        d = m.current._depth
        if d < 200 or d < _depth_limit():
            m.target = co
            m.args = args
            try:
                return await _trap(kind)
            except _Rejected:
                return await _drive(kind, co, args)
        if _own_chain() is not None:
            raise _too_deep()
    return await _drive(kind, co, args)


class Wrapped:
    """``wrap(fn)``: awaiting ``w(*args)`` resumes the coroutine; ``async for`` iterates it."""

    __slots__ = ("coroutine", "__weakref__")

    def __init__(self, fn) -> None:
        self.coroutine = create(fn)

    async def __call__(self, *args):
        call = _nest_call(WRAP, self.coroutine, args)
        if call is None:
            raise _nest_refusal(self.coroutine)
        try:
            return await call
        except _Rejected:
            return await _drive(WRAP, self.coroutine, args)

    def __aiter__(self):
        return self

    async def __anext__(self):
        call = _nest_call(ITER, self.coroutine, ())
        if call is None:
            if self.coroutine._state is _DEAD:
                raise StopAsyncIteration
            raise _nest_refusal(self.coroutine)
        try:
            return await call
        except _Rejected:
            return await _drive(ITER, self.coroutine, ())

    def __repr__(self) -> str:
        return f"<cosched wrap of {self.coroutine!r}>"


def wrap(fn) -> Wrapped:
    """A callable that resumes a new coroutine running ``fn`` and returns what it yields."""
    return Wrapped(fn)


class SafeWrapped:
    """``safewrap(fn)``: like wrap, but ``fn(yield_fn, *args)`` may cross-yield from any depth."""

    __slots__ = ("coroutine", "_point", "_caller", "_yield", "__weakref__")

    def __init__(self, fn) -> None:
        co = create(fn)
        co._sw = self
        self.coroutine = co
        self._point = co       # where the next call resumes: the body, or where yield_fn was called
        self._caller = None    # the coroutine or chain that made the latest call (see _waiting)
        self._yield = self._yield_fn

    def _waiting(self):
        """The maker of the latest call while that call is pending, else None.

        However the call ended (yield_fn, a plain yield or a transfer back to its
        maker, an ending, an exception), its maker no longer waits for this
        safewrap (see _callee).
        """
        c = self._caller
        return c if c is not None and c._state is _NORMAL and c._awaits is self else None

    async def _yield_fn(self, *values):
        m = _own_chain()
        if m is None:
            raise CoroutineError("attempt to yield from outside a coroutine")
        if m.current._closing:
            raise _closing_switch(m.current, "yield")
        if self._waiting() is None:
            raise CoroutineError(_SW_GONE_MSG)
        m.target = self
        m.args = values
        return await _trap(SAFEYIELD)

    async def _call(self, kind: _Trap, args: tuple):
        if self.coroutine._state is _DEAD:
            if kind is SAFEITER:
                raise StopAsyncIteration
            raise CoroutineError(_DEAD_MSG)
        if not _resumable(self._point):
            raise _refusal(self._point)
        return await _nest(kind, self, args)

    def __call__(self, *args):
        return self._call(SAFECALL, args)

    def __aiter__(self):
        return self

    def __anext__(self):
        return self._call(SAFEITER, ())

    def __repr__(self) -> str:
        return f"<cosched safewrap of {self.coroutine!r}>"


def safewrap(fn) -> SafeWrapped:
    """Like :func:`wrap`, but ``fn`` receives a ``yield_fn`` that always returns to the caller."""
    return SafeWrapped(fn)


async def close(co):
    """Close ``co``: run its pending cleanup; ``(True,)`` or ``(False, exc)``."""
    if type(co) is not Coroutine:
        if co is main:
            raise CoroutineError(
                "cannot close a running coroutine" if _active_chain() is None
                else "cannot close a normal coroutine")
        raise _not_a_coroutine("close", co)
    s = co._state
    if s is _INITIAL:
        co._state = _DEAD
        co._fn = None
        return (True,)
    if s is _DEAD:
        err, co._error = co._error, None
        return (True,) if err is None else (False, err)
    if s is _RUNNING:
        raise CoroutineError("cannot close a running coroutine")
    if s is _NORMAL:
        raise CoroutineError("cannot close a normal coroutine")
    return await _nest(CLOSE, co, ())


# --------------------------------------------------------------------------------------
# Queries


def status(co) -> str:
    """``"suspended"``, ``"running"``, ``"normal"`` or ``"dead"``."""
    if type(co) is Coroutine:
        s = co._state
        return _SUSPENDED if s is _INITIAL else s
    if co is main:
        return _RUNNING if _active_chain() is None else _NORMAL
    raise _not_a_coroutine("status", co)


def running():
    """``(co, False)`` inside a coroutine, ``(main, True)`` in main."""
    m = _active_chain()
    return (main, True) if m is None else (m.current, False)


def current():
    """The running coroutine, or ``None`` in main."""
    m = _active_chain()
    return None if m is None else m.current


def isyieldable(co=None) -> bool:
    """True for a coroutine, False for main; without an argument, for the running one."""
    if co is None:
        return _active_chain() is not None
    if type(co) is Coroutine:
        return True
    if co is main:
        return False
    raise _not_a_coroutine("isyieldable", co)


# --------------------------------------------------------------------------------------
# Introspection for dispatchers (not part of the coroutine contract)


def last_transfer_to_main() -> Coroutine | None:
    """The coroutine that most recently transferred (or safewrap-yielded) to main in this
    trio task, if it is still alive. A dispatcher continues it with ``transfer``."""
    ref = _handed_off.get()
    co = None if ref is None else ref()
    return co if co is not None and co._state is _SUSPENDED else None


def resume_call(co, args: tuple):
    """What ``await resume(co, *args)`` awaits when main calls it: the chain driver.

    For a dispatcher that runs a coroutine as the main of its own trio task (after
    ``release_chain()``, so no inherited chain is trusted) and awaits the driver
    directly: a task parked inside ``co`` then keeps no frame of ``resume``, which
    counts when a daemon holds a million of them. None when ``co`` is not a
    coroutine that can be resumed; ``resume`` gives the answer then.
    """
    return _drive(RESUME, co, args) if _resumable(co) else None


def switches_of(trio_task) -> int:
    """How many times control has passed between coroutines (or main) in trio_task."""
    m = trio_task.context.get(_chain)
    return m.switches if m is not None and m.task is trio_task else 0


def release_chain() -> None:
    """Forget the calling trio task's chain, as a task whose coroutines are all done
    may: the chain refers to the task, the task's context to the chain, and that cycle
    would otherwise wait for the cyclic garbage collector."""
    _chain.set(None)
    _handed_off.set(None)


def stack_of(obj) -> list[tuple[str, int, str]]:
    """(file, line, function) of each frame an await chain is suspended in, outermost first.

    ``obj`` is a Coroutine or a Python coroutine/generator object (a trio task's
    ``coro``). It sees through chain drivers into the coroutine they run, and follows
    a normal coroutine into the one it waits for. Frames of this module are left out.
    """
    return [(code.co_filename, line_of(owner), code.co_qualname)
            for code, owner in points_of(obj)]


def line_of(owner) -> int:
    """The line a coroutine or generator from ``points_of`` is at."""
    frame = getattr(owner, "cr_frame", None) or getattr(owner, "gi_frame", None)
    return frame.f_lineno if frame is not None else 0


def points_of(obj, _budget: list[int] | None = None):
    """``(code, owner)`` of each frame of ``stack_of``, lazily: a caller looking for one
    frame stops there. Nothing here makes a frame object (CPython makes one when a
    suspended coroutine's ``cr_frame`` is read, and keeps it): ``line_of`` does, for
    the frames whose line is wanted."""
    budget = [10_000] if _budget is None else _budget   # a bound, should a chain loop
    while obj is not None and budget[0] > 0:
        budget[0] -= 1
        if type(obj) is types.CoroutineType:   # an async def frame: the common case
            if not obj.cr_suspended and obj.cr_frame is None:
                return   # finished
            if obj.cr_code.co_filename != __file__:
                yield obj.cr_code, obj
            obj = obj.cr_await
            continue
        if type(obj) is Coroutine:
            nxt = _callee(obj) if obj._state is _NORMAL else None
            if obj._co is not None:
                yield from points_of(obj._co, budget)
            obj = nxt
            continue
        m = _driven_chain(obj)
        if m is not False:
            # A chain driver: show the chain from the coroutine main entered, down the
            # coroutines waiting in nested calls, and the running one if a transfer
            # took control elsewhere.
            if m is None or m.current is None:
                return
            head = _callee(m) if m._awaits is not None else m.current
            yield from points_of(head, budget)
            while head is not None and head is not m.current:
                head = _callee(head) if head._state is _NORMAL else None
            if head is None:
                yield from points_of(m.current._co, budget)
            return
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None)
        if frame is None:
            return
        if frame.f_code.co_filename != __file__:
            yield frame.f_code, obj
        obj = getattr(obj, "cr_await", None) or getattr(obj, "gi_yieldfrom", None)


def driven_body(obj):
    """The Python coroutine a dispatcher's trio task runs, in the common shape: ``obj``
    (the task's own coroutine) awaits a chain driver (``resume_call``) whose chain runs
    one coroutine, with no nested call pending and no transfer elsewhere. None for any
    other shape (``points_of`` walks them all). A status of a million parked tasks takes
    this path for each, at a fraction of the generic walk's cost."""
    if type(obj) is not types.CoroutineType:
        return None
    m = _driven_chain(obj.cr_await)
    if not m or m.current is None or m._awaits is not m.current:
        return None
    co = m.current
    if type(co) is not Coroutine or co._state is _NORMAL or co._awaits is not None:
        return None
    return co._co


def _driven_chain(obj):
    """The chain obj drives if obj is a chain driver (None once it finished), else False."""
    if _speedups is not None and type(obj) is _speedups.Driver:
        return obj.chain
    frame = getattr(obj, "gi_frame", None)
    if frame is not None and frame.f_code is _py_drive.__code__:
        return frame.f_locals.get("m")
    return False


# --------------------------------------------------------------------------------------
# The C switch path: same transitions, the rare ones delegated to the helpers above.

_py_drive, _py_yield, _py_nest_call = _drive, yield_, _nest_call
if _speedups is not None:
    _speedups.setup(
        INITIAL=_INITIAL, SUSPENDED=_SUSPENDED, RUNNING=_RUNNING, NORMAL=_NORMAL,
        YIELD=YIELD, TRANSFER=TRANSFER, SAFEYIELD=SAFEYIELD, RESUME=RESUME, WRAP=WRAP,
        ITER=ITER, Trap=_Trap, Coroutine=Coroutine, Delivery=_Delivery, chain_var=_chain,
        run_context=_TRIO_RUN, Task=_TrioTask, new_chain=_Chain, enter=_enter, leave=_leave, end=_end,
        safe_leave=_safe_leave, abandon=_abandon, body=_body, unpack=_unpack,
        rejected=_rejected, yield_slow=_py_yield, nest_call=_py_nest_call, hold=_hold,
    )
    _trap, _drive, yield_ = _speedups.trap, _speedups.drive, _speedups.yield_
    _nest_call, _transfer_call = _speedups.nest_call, _speedups.transfer_call
