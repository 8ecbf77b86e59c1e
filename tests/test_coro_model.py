"""Model-based test of transfer, safewrap, close and cancel scopes.

Lua has none of these, so the differential test (test_coro_lua.py) cannot check
them. Here an executable model of the coroutine contract -- written from the
contract (the coroutine guide in the README), in plain Python generators, sharing
no code with cosched -- runs the same random programs as cosched.coro under trio,
and the traces must be equal: what every operation returned or raised, in order,
the statuses at the end, and, after each of main's operations, that main still
runs under exactly the cancel scopes it opened (trio's own state is checked).

Programs use every switching call (resume, yield_, transfer to coroutines and to
main, wrap calls, safewrap calls and yield_fn from any coroutine, close), queries,
errors, returns, trio checkpoints, ``with trio.CancelScope()`` blocks (which may
cancel themselves: trio.Cancelled then arrives at the next checkpoint under them)
and cleanup blocks whose ``finally`` switches too. The normal test command runs a seeded,
bounded number of programs (on the C switch path here; tests/test_speedups.py runs
this file again on the pure-Python one); ``make fuzz`` runs many more with fresh
seeds (COSCHED_FUZZ_EXAMPLES). Hypothesis shrinks a failing program.
"""

import functools
import os

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cosched import coro
from cosched.coro import CoroutineError

FUZZ = int(os.environ.get("COSCHED_FUZZ_EXAMPLES", "0"))
EXAMPLES = FUZZ or 250
BUDGET = 100     # operations a program may run; later ones do nothing, identically in both
MAX_DEPTH = 8    # nesting calls the harnesses allow; deeper ones record "deep"

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
CLOSING_OTHER = "cannot transfer to a coroutine that is closing another"
MAIN_CLOSING = "cannot transfer to main while it is closing a coroutine"
ENDED_UNDER_SCOPES = ("coroutine ended while the call waiting for it was made under other "
                      "trio cancel scopes")


def scope_opened(what):
    return (f"cannot {what} with a trio cancel scope or nursery opened inside the coroutine "
            "still open (close it before switching)")


def scope_other(what):
    return (f"cannot {what} to a coroutine whose pending call was made under other trio "
            "cancel scopes (or in another trio task)")


def being_closed(what):
    return f"cannot {what} from a coroutine that is being closed"


# ---------------------------------------------------------------------------
# Programs: bodies F[j] (operations and a terminator), coroutine slots C[i], wraps
# W[i] and safewraps S[i] made from bodies at the start, and main's operations.
# An operation is (label, kind, *params); labels are unique.

VALUES = st.lists(st.integers(0, 9), max_size=2).map(tuple)
END = st.one_of(st.none(), st.tuples(st.just("return"), VALUES),
                st.tuples(st.just("error"), st.integers(0, 9)))


# How often each operation is drawn, by where it runs: main yields little (it may
# not); cleanup code mostly switches (close refuses that); bodies do everything.
WEIGHTS = {
    "main": {"resume": 4, "transfer": 3, "call": 2, "swcall": 3, "close": 2, "status": 1,
             "sleep": 1, "yield": 1, "swyield": 1, "scope": 2, "cleanup": 1},
    "body": {"resume": 3, "yield": 3, "transfer": 4, "call": 1, "swcall": 2, "swyield": 3,
             "close": 2, "status": 1, "running": 1, "new": 1, "sleep": 1, "scope": 3,
             "cleanup": 2},
    "final": {"resume": 2, "transfer": 2, "yield": 1, "swyield": 1, "close": 1, "status": 1},
}


@st.composite
def operations(draw, shape, nest, role):
    nb, nc, nw, ns = shape
    kinds = [k for k, n in WEIGHTS[role].items() for _ in range(n)
             if (nw or k != "call") and (ns or k not in ("swcall", "swyield"))
             and (nest or k not in ("scope", "cleanup"))]
    slot = st.integers(-1 if role != "main" else 0, nc - 1)  # -1 is main
    ops = []
    for _ in range(draw(st.integers(0 if role != "body" else 1, 5))):
        kind = draw(st.sampled_from(kinds))
        if kind in ("resume", "transfer"):
            ops.append((kind, draw(slot), draw(VALUES)))
        elif kind == "yield":
            ops.append((kind, draw(VALUES)))
        elif kind == "call":
            ops.append((kind, draw(st.integers(0, nw - 1)), draw(VALUES)))
        elif kind in ("swcall", "swyield"):
            ops.append((kind, draw(st.integers(0, ns - 1)), draw(VALUES)))
        elif kind in ("status", "close"):
            ops.append((kind, draw(st.integers(-1, nc - 1))))
        elif kind == "new":
            ops.append((kind, draw(st.integers(0, nc - 1)), draw(st.integers(0, nb - 1))))
        elif kind == "scope":
            inner = list(draw(operations(shape, nest - 1, role)))
            if draw(st.integers(0, 2)) == 0:  # cancel this scope somewhere inside it
                inner.insert(draw(st.integers(0, len(inner))), ("cancel",))
            ops.append((kind, tuple(inner)))
        elif kind == "cleanup":
            ops.append((kind, draw(operations(shape, nest - 1, role)),
                        draw(operations(shape, 0, "final"))))
        else:
            ops.append((kind,))
    return tuple(ops)


@st.composite
def programs(draw):
    shape = (draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(0, 1)),
             draw(st.integers(0, 2)))
    nb, nc, nw, ns = shape
    body = st.tuples(operations(shape, 2, "body"), END)
    return label({
        "bodies": tuple(draw(body) for _ in range(nb)),
        "coros": tuple(draw(st.integers(0, nb - 1)) for _ in range(nc)),
        "wraps": tuple(draw(st.integers(0, nb - 1)) for _ in range(nw)),
        "safewraps": tuple(draw(st.integers(0, nb - 1)) for _ in range(ns)),
        "main": (draw(operations(shape, 2, "main")),
                 draw(st.one_of(st.none(), st.tuples(st.just("error"), st.integers(0, 9))))),
    })


def label(prog):
    """Number every operation, in order, as (label, kind, *params)."""
    counter = iter(range(1, 100_000))

    def number(ops, scope=None):
        out = []
        for op in ops:
            if op[0] == "scope":
                lab = next(counter)
                out.append((lab, "scope", number(op[1], lab)))
            elif op[0] == "cancel":
                out.append((next(counter), "cancel", scope))
            elif op[0] == "cleanup":
                lab = next(counter)
                out.append((lab, "cleanup", number(op[1]), number(op[2])))
            else:
                out.append((next(counter), *op))
        return tuple(out)

    prog = dict(prog)
    prog["bodies"] = tuple((number(ops), end) for ops, end in prog["bodies"])
    prog["main"] = (number(prog["main"][0]), prog["main"][1])
    return prog


def render(prog):
    """The program as pseudo-Python, for failure reports."""
    out = []

    def block(ops, pad):
        for lab, kind, *params in ops:
            if kind == "scope":
                out.append(f"{pad}with CancelScope():  # {lab}")
                block(params[0], pad + "    ")
            elif kind == "cleanup":
                out.append(f"{pad}try:  # {lab}")
                block(params[0], pad + "    ")
                out.append(f"{pad}finally:")
                block(params[1], pad + "    ")
            else:
                out.append(f"{pad}{kind}{tuple(params)}  # {lab}")
        if not ops:
            out.append(f"{pad}pass")

    for j, (ops, end) in enumerate(prog["bodies"]):
        out.append(f"F{j}:")
        block(ops, "    ")
        out.append(f"    {end}")
    out.append(f"C = {prog['coros']}  W = {prog['wraps']}  S = {prog['safewraps']}")
    out.append("main:")
    block(prog["main"][0], "    ")
    out.append(f"    {prog['main'][1]}")
    return "\n".join(out)


# ---------------------------------------------------------------------------
# The harness both sides share: how each operation is recorded. The model and
# cosched differ only in how a switching call is made (``switch``) and in what
# the queries read.


class UserError(Exception):
    pass


class Harness:
    def __init__(self, prog):
        self.prog = prog
        self.trace = []
        self.budget = BUDGET
        self.depth = 0
        self.names = {}
        self.done = False  # nothing is recorded once main has ended

    def rec(self, *event):
        if not self.done:
            self.trace.append(event)

    def tick(self):
        self.budget -= 1
        return self.budget >= 0 and not self.done

    def name(self, co):
        return self.names.setdefault(co, f"co{len(self.names) + 1}")

    def end(self, term):
        if term is None:
            return ()
        if term[0] == "return":
            return tuple(term[1])
        raise UserError(f"U:{term[1]}")


def message(e):
    if isinstance(e, (UserError, CoroutineError, ModelError)):
        return str(e)
    if isinstance(e, (trio.Cancelled, ModelCancelled)):
        return "Cancelled"
    return f"unexpected {type(e).__name__}: {e}"


# ---------------------------------------------------------------------------
# The model


class ModelError(Exception):
    """CoroutineError, in the model."""


class ModelCancelled(BaseException):
    """trio.Cancelled, in the model."""


class Closing(BaseException):
    """Thrown in to close a coroutine: GeneratorExit is raised where it lands.

    Thrown as itself, GeneratorExit would make Python close the generators the
    body delegates to from the outside in, and cleanup that switches would fail.
    """


class Node:
    """Main, or a coroutine: the state of a pending call."""

    def __init__(self):
        self.status = "suspended"
        self.pending = None      # kind of its pending call
        self.awaits = None       # while normal: the MCo (or MSafe) its pending call waits for
        self.call_path = None    # the scopes its pending nesting call was made under


class MCo(Node):
    def __init__(self, j, sw=None):
        super().__init__()
        self.j = j
        self.gen = None
        self.started = False
        self.resumer = None
        self.entry = ()          # the scopes it adopted when it last gained control
        self.closing = False
        self.tried = None        # the switch its close cleanup tried, refused
        self.error = None        # what it died of, for close()
        self.sw = sw


class MSafe:
    def __init__(self, co):
        self.co = co
        self.point = co          # where the next call resumes
        self.caller = None       # the node that made the latest call
        self.started = False

    def waiting(self):
        """The latest call's maker while that call is pending."""
        c = self.caller
        return c if c is not None and c.awaits is self else None


class Model(Harness):
    """The contract, step by step: a trampoline over generators, one per coroutine."""

    def __init__(self, prog):
        super().__init__(prog)
        self.main = Node()
        self.main.status = "main"
        self.path = ()           # the scopes open now: (id, ...)
        self.owner = {}          # scope id -> the node that opened it
        self.cancelled = set()   # scope ids cancelled
        self.active = {}         # (scope label, node) -> the id of that open scope
        self.cur = self.main
        self.C = [MCo(j) for j in prog["coros"]]
        self.W = [MCo(j) for j in prog["wraps"]]
        self.made = list(self.C)  # as cosched's harness keeps them
        self.S = []
        for j in prog["safewraps"]:
            co = MCo(j)
            co.sw = MSafe(co)
            self.S.append(co.sw)

    # -- the trampoline

    def run(self):
        self.main.gen = self.main_body()
        node, how, payload = self.main, "send", None
        while True:
            self.cur = node
            try:
                req = node.gen.send(payload) if how == "send" else node.gen.throw(payload)
            except StopIteration as e:
                if node is self.main:
                    return self.trace
                node, how, payload = self.ending(node, e.value, None)
                continue
            except BaseException as e:  # noqa: BLE001 - endings carry any exception
                assert node is not self.main, f"main raised {e!r}"
                node, how, payload = self.ending(node, (), e)
                continue
            node, how, payload = getattr(self, "do_" + req[0])(node, *req[1:])

    def enter(self, co, values):
        """Control goes to co with values for its pending call (or its start)."""
        co.status = "running"
        if not co.started:
            co.started = True
            co.gen = self.body(co, values)
            return co, "send", None
        return co, "send", values

    def release(self, node):
        """node's pending nesting call returns: what it waited for loses its link."""
        a, node.awaits = node.awaits, None
        if isinstance(a, MSafe):
            a = a.co
        if a is not None and a.resumer is node:
            a.resumer = None

    def arrive(self, node, values, exc):
        """What node's pending call receives: ("send", value) or ("throw", exc)."""
        if node is not self.main:
            node.status = "running"
        kind = node.pending
        if kind == "close":
            if exc is None:
                return node, "send", (True,)
            return (node, "send", (False, exc)) if isinstance(exc, Exception) else (
                node, "throw", exc)
        if exc is None:
            return node, "send", (True, *values) if kind == "resume" else values
        if kind == "resume" and isinstance(exc, Exception):
            return node, "send", (False, exc)
        return node, "throw", exc

    def nest(self, cur, kind, co, values, awaited=None):
        """cur makes a nesting call entering co."""
        if cur is not self.main:
            cur.status = "normal"
        cur.pending, cur.awaits, cur.call_path = kind, awaited or co, self.path
        co.entry = self.path
        return self.enter(co, values)

    def scope_error(self, cur, dest, what):
        if cur is not self.main and self.path != cur.entry:
            return ModelError(scope_opened(what))
        if (dest is self.main or dest.status == "normal") and self.path != dest.call_path:
            return ModelError(scope_other(what))
        return None

    def leave(self, cur, kind, dest, values):
        """cur suspends in kind; values go to dest."""
        if cur is not self.main:
            cur.status, cur.pending = "suspended", kind
        if dest is self.main or dest.status == "normal":
            self.release(dest)
            return self.arrive(dest, values, None)
        dest.entry = self.path
        return self.enter(dest, values)

    def closing_error(self, cur, what):
        err = ModelError(being_closed(what))
        if cur.tried is None:
            cur.tried = err
        return err

    # -- the switching calls

    def do_resume(self, cur, co, values):
        if co is self.main:
            return cur, "send", (False, ModelError(NONSUSP))
        if co.status == "dead":
            return cur, "send", (False, ModelError(DEAD))
        if co.status != "suspended":
            return cur, "send", (False, ModelError(NONSUSP))
        co.resumer = cur
        return self.nest(cur, "resume", co, values)

    def do_call(self, cur, co, values):
        if co.status != "suspended":
            return cur, "throw", ModelError(DEAD if co.status == "dead" else NONSUSP)
        co.resumer = cur
        return self.nest(cur, "call", co, values)

    def do_yield(self, cur, values):
        if cur is self.main:
            return cur, "throw", ModelError(OUTSIDE)
        if cur.closing:
            return cur, "throw", self.closing_error(cur, "yield")
        dest = cur.resumer
        if dest is None:
            return cur, "throw", ModelError(NOT_RESUMED)
        err = self.scope_error(cur, dest, "yield")
        if err is not None:
            return cur, "throw", err
        cur.resumer = None
        return self.leave(cur, "yield", dest, values)

    def do_transfer(self, cur, co, values):
        if co is self.main:
            if cur is self.main:
                return cur, "throw", ModelError(SELF_TRANSFER)
            if cur.closing:
                return cur, "throw", self.closing_error(cur, "transfer")
            if self.main.pending == "close":
                return cur, "throw", ModelError(MAIN_CLOSING)
        elif co.status == "dead":
            return cur, "throw", ModelError(DEAD_TRANSFER)
        elif co.status == "running":
            return cur, "throw", ModelError(SELF_TRANSFER)
        elif co.status == "normal" and co.pending == "close":
            return cur, "throw", ModelError(CLOSING_OTHER)
        elif cur is not self.main and cur.closing:
            return cur, "throw", self.closing_error(cur, "transfer")
        if cur is self.main:
            cur.pending, cur.awaits, cur.call_path = "transfer", None, self.path
        err = self.scope_error(cur, co, "transfer")
        if err is not None:
            return cur, "throw", err
        return self.leave(cur, "transfer", co, values)

    def do_swcall(self, cur, sw, values):
        if sw.co.status == "dead":
            return cur, "throw", ModelError(DEAD)
        p = sw.point
        if p.status != "suspended":
            return cur, "throw", ModelError(DEAD if p.status == "dead" else NONSUSP)
        sw.caller = cur
        if p is sw.co:
            p.resumer = cur
        return self.nest(cur, "swcall", p, values, awaited=sw)

    def do_swyield(self, cur, sw, values):
        if cur is self.main:
            return cur, "throw", ModelError(OUTSIDE)
        if cur.closing:
            return cur, "throw", self.closing_error(cur, "yield")
        dest = sw.waiting()
        if dest is None:
            return cur, "throw", ModelError(SW_GONE)
        err = self.scope_error(cur, dest, "yield")
        if err is not None:
            return cur, "throw", err
        sw.point, sw.caller = cur, None
        return self.leave(cur, "swyield", dest, values)

    def do_close(self, cur, co):
        if co is self.main:
            return cur, "throw", ModelError(CLOSE_RUNNING if cur is self.main else CLOSE_NORMAL)
        if co.status == "suspended" and not co.started:
            co.status = "dead"
            return cur, "send", (True,)
        if co.status == "dead":
            err, co.error = co.error, None
            return cur, "send", (True,) if err is None else (False, err)
        if co.status != "suspended":
            return cur, "throw", ModelError(
                CLOSE_RUNNING if co.status == "running" else CLOSE_NORMAL)
        co.resumer = cur
        co.closing = True
        self.nest(cur, "close", co, None)
        return co, "throw", Closing()

    # -- endings

    def ending(self, co, values, exc):
        co.status, co.gen = "dead", None
        dest, co.resumer = co.resumer, None
        if co.closing:  # the closer gets (True,) or (False, error)
            co.closing, co.error = False, None
            if co.tried is not None:
                exc, co.tried = co.tried, None
            elif isinstance(exc, GeneratorExit):
                exc = None
            return self.deliver(dest, (), exc)
        co.error = None if isinstance(exc, GeneratorExit) else exc  # close() reports it
        if co.sw is not None:
            caller = co.sw.waiting()
            co.sw.caller = None
            if caller is not None:
                dest = caller
        if dest is None:
            dest = self.main
            if exc is None:
                exc = ModelError(ENDED)
        return self.deliver(dest, values, exc)

    def deliver(self, dest, values, exc):
        """An ending's outcome reaches dest's pending call, unless something stands between:

        scopes opened by a coroutine that dest's call was not made under (the outcome
        is raised at the innermost call waiting under the open scopes), or, for a
        pending close, the coroutine being closed (the outcome is raised in it).
        """
        stop = None
        if self.path != dest.call_path and self.path and self.owner[self.path[-1]] is not self.main:
            stop = self.owner[self.path[-1]]
            assert stop.status == "normal" and stop.call_path == self.path, "model: scope owner"
            while True:
                a = stop.awaits.point if isinstance(stop.awaits, MSafe) else stop.awaits
                if a is None or a.status != "normal" or a.call_path != self.path:
                    break
                stop = a
            if exc is None:
                exc = ModelError(ENDED_UNDER_SCOPES)
        elif dest.pending == "close" and dest.awaits is not None and dest.awaits.status == "normal":
            stop = dest.awaits
        if stop is not None:
            self.release(stop)
            stop.status = "running"
            return stop, "throw", exc
        self.release(dest)
        return self.arrive(dest, values, exc)

    # -- the interpreter of bodies (generators: a switching call yields a request)

    def body(self, co, args):
        self.rec("start", co.j, list(args))
        ops, term = self.prog["bodies"][co.j]
        if co.sw is not None:
            co.sw.started = True
        yield from self.block(ops)
        return self.end(term)

    def main_body(self):
        ops, term = self.prog["main"]
        try:
            yield from self.block(ops)
            self.end(term)
        except (Exception, ModelCancelled) as e:  # a Cancelled can outlive its scope (see
            self.rec("main-end", False, message(e))  # Cosched.main)
        else:
            self.rec("main-end", True, "")
        self.rec("final", [self.status_of(c) for c in self.C + self.W] +
                 [self.status_of(s.co) for s in self.S])
        self.done = True
        yield from ()

    def status_of(self, x):
        if x is self.main:
            return "running" if self.cur is self.main else "normal"
        return x.status

    def slot(self, c):
        return self.main if c < 0 else self.C[c]

    def block(self, ops):
        for op in ops:
            if self.done:
                return
            yield from getattr(self, "op_" + op[1])(op[0], *op[2:])

    def op_scope(self, lab, ops):
        sid = lab, len(self.owner)
        self.owner[sid] = self.cur
        self.active[lab, self.cur] = sid
        self.path += (sid,)
        try:
            yield from self.block(ops)
        except ModelCancelled:
            # trio: the outermost cancelled scope on the way catches trio.Cancelled
            if sid not in self.cancelled or self.cancelled.intersection(self.path[:-1]):
                raise
        finally:
            assert self.path[-1] == sid, "model: scope stack"
            self.path = self.path[:-1]
            del self.active[lab, self.owner[sid]]

    def op_cancel(self, lab, scope):
        if self.tick():
            self.cancelled.add(self.active[scope, self.cur])
        yield from ()

    def op_cleanup(self, lab, ops, final):
        try:
            yield from self.block(ops)
        finally:
            self.rec(lab, "cleanup")
            yield from self.block(final)

    def switch(self, lab, kind, req, nests):
        """Make a switching call; record what it returned or raised."""
        if not self.tick():
            return
        if nests and self.depth >= MAX_DEPTH:
            return self.rec(lab, "deep")
        self.depth += nests
        try:
            got = yield req
        except Closing:
            raise GeneratorExit from None
        except Exception as e:
            return self.rec(lab, kind, "raise", message(e))
        finally:
            self.depth -= nests
        if kind in ("resume", "close"):
            return self.rec(lab, kind, "ok", got[0], list(got[1:]) if got[0] else message(got[1]))
        self.rec(lab, kind, "ok", list(got))

    def op_resume(self, lab, c, vals):
        yield from self.switch(lab, "resume", ("resume", self.slot(c), vals), 1)

    def op_yield(self, lab, vals):
        yield from self.switch(lab, "yield", ("yield", vals), 0)

    def op_transfer(self, lab, c, vals):
        yield from self.switch(lab, "transfer", ("transfer", self.slot(c), vals), 0)

    def op_call(self, lab, w, vals):
        yield from self.switch(lab, "call", ("call", self.W[w], vals), 1)

    def op_swcall(self, lab, s, vals):
        yield from self.switch(lab, "swcall", ("swcall", self.S[s], vals), 1)

    def op_swyield(self, lab, s, vals):
        if not self.S[s].started:
            if self.tick():
                self.rec(lab, "swyield", "unset")
            return
        yield from self.switch(lab, "swyield", ("swyield", self.S[s], vals), 0)

    def op_close(self, lab, c):
        yield from self.switch(lab, "close", ("close", self.slot(c)), 1)

    def op_status(self, lab, c):
        if self.tick():
            self.rec(lab, "status", self.status_of(self.slot(c)))
        yield from ()

    def op_running(self, lab):
        if self.tick():
            cur = self.cur
            self.rec(lab, "running", *(("main", True) if cur is self.main else (
                self.name(cur), False)))
        yield from ()

    def op_new(self, lab, c, j):
        if self.tick():
            self.C[c] = MCo(j)
            self.made.append(self.C[c])
        yield from ()

    def op_sleep(self, lab):
        if self.tick() and self.cancelled.intersection(self.path):
            raise ModelCancelled()
        yield from ()


# ---------------------------------------------------------------------------
# cosched


class Cosched(Harness):
    """The same programs on cosched.coro, recording the same trace."""

    def __init__(self, prog):
        super().__init__(prog)
        self.C = [coro.create(self.fn(j)) for j in prog["coros"]]
        self.W = [coro.wrap(self.fn(j)) for j in prog["wraps"]]
        self.S = [coro.safewrap(functools.partial(self.sw_body, s, j))
                  for s, j in enumerate(prog["safewraps"])]
        self.YF = [None] * len(self.S)
        self.made = list(self.C)  # collected coroutines would run their finally blocks
        self.main_cs = []
        self.active = {}  # (scope label, coroutine or None) -> that open CancelScope

    def fn(self, j):
        return functools.partial(self.body, j)

    async def body(self, j, *args):
        self.rec("start", j, list(args))
        ops, term = self.prog["bodies"][j]
        await self.block(ops)
        return self.end(term)

    async def sw_body(self, s, j, yield_fn, *args):
        self.YF[s] = yield_fn
        return await self.body(j, *args)

    def status_of(self, co):
        return coro.status(co)

    def slot(self, c):
        return coro.main if c < 0 else self.C[c]

    async def block(self, ops):
        for op in ops:
            if self.done:  # a collected coroutine's finally, after the run
                return
            await getattr(self, "op_" + op[1])(op[0], *op[2:])
            if self.main_cs and coro.current() is None:
                # main runs under exactly the scopes it opened
                if trio.lowlevel.current_task()._cancel_status is not self.main_cs[-1]:
                    self.rec(op[0], "main under foreign cancel scopes")

    async def op_scope(self, lab, ops):
        in_main = coro.current() is None
        key = lab, coro.current()
        with trio.CancelScope() as scope:
            self.active[key] = scope
            if in_main:
                self.main_cs.append(trio.lowlevel.current_task()._cancel_status)
            try:
                await self.block(ops)
            finally:
                self.active.pop(key, None)
                if in_main:
                    self.main_cs.pop()

    async def op_cancel(self, lab, scope):
        if self.tick():
            self.active[scope, coro.current()].cancel()

    async def op_cleanup(self, lab, ops, final):
        try:
            await self.block(ops)
        finally:
            self.rec(lab, "cleanup")
            await self.block(final)

    async def switch(self, lab, kind, call, nests):
        if not self.tick():
            return
        if nests and self.depth >= MAX_DEPTH:
            return self.rec(lab, "deep")
        self.depth += nests
        try:
            got = await call()
        except Exception as e:
            return self.rec(lab, kind, "raise", message(e))
        finally:
            self.depth -= nests
        if kind in ("resume", "close"):
            return self.rec(lab, kind, "ok", got[0], list(got[1:]) if got[0] else message(got[1]))
        self.rec(lab, kind, "ok", [] if got is None else list(got) if isinstance(
            got, tuple) else [got])

    async def op_resume(self, lab, c, vals):
        await self.switch(lab, "resume", lambda: coro.resume(self.slot(c), *vals), 1)

    async def op_yield(self, lab, vals):
        await self.switch(lab, "yield", lambda: coro.yield_(*vals), 0)

    async def op_transfer(self, lab, c, vals):
        target = None if c < 0 else self.C[c]
        await self.switch(lab, "transfer", lambda: coro.transfer(target, *vals), 0)

    async def op_call(self, lab, w, vals):
        await self.switch(lab, "call", lambda: self.W[w](*vals), 1)

    async def op_swcall(self, lab, s, vals):
        await self.switch(lab, "swcall", lambda: self.S[s](*vals), 1)

    async def op_swyield(self, lab, s, vals):
        if self.YF[s] is None:
            if self.tick():
                self.rec(lab, "swyield", "unset")
            return
        await self.switch(lab, "swyield", lambda: self.YF[s](*vals), 0)

    async def op_close(self, lab, c):
        await self.switch(lab, "close", lambda: coro.close(self.slot(c)), 1)

    async def op_status(self, lab, c):
        if self.tick():
            self.rec(lab, "status", coro.status(self.slot(c)))

    async def op_running(self, lab):
        if self.tick():
            co, is_main = coro.running()
            self.rec(lab, "running", "main" if is_main else self.name(co), is_main)

    async def op_new(self, lab, c, j):
        if self.tick():
            self.C[c] = coro.create(self.fn(j))
            self.made.append(self.C[c])

    async def op_sleep(self, lab):
        if self.tick():
            await trio.sleep(0)

    async def main(self):
        ops, term = self.prog["main"]
        self.main_cs.append(trio.lowlevel.current_task()._cancel_status)
        try:
            await self.block(ops)
            self.end(term)
        except (Exception, trio.Cancelled) as e:
            # trio.Cancelled reaches main when a coroutine switched away in a finally
            # block while it propagated, and was resumed outside its scope: the
            # contract propagates it (trio would too, from an async generator).
            self.rec("main-end", False, message(e))
        else:
            self.rec("main-end", True, "")
        self.rec("final", [coro.status(c) for c in self.C] +
                 [coro.status(w.coroutine) for w in self.W] +
                 [coro.status(s.coroutine) for s in self.S])
        self.done = True

    def run(self):
        async def main():
            with trio.fail_after(10):
                await self.main()

        trio.run(main)
        return self.trace


# ---------------------------------------------------------------------------
# The tests


def assert_same_trace(prog):
    model = Model(prog).run()
    ours = Cosched(prog).run()
    if model != ours:
        i = next((k for k, (a, b) in enumerate(zip(model, ours, strict=False)) if a != b),
                 min(len(model), len(ours)))
        pytest.fail(f"traces part at event {i}:\n  model:   {model[i:i + 3]}\n"
                    f"  cosched: {ours[i:i + 3]}\ncommon prefix: {model[:i]}\n"
                    f"program:\n{render(prog)}")


@settings(max_examples=EXAMPLES, derandomize=not FUZZ, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(programs())
def test_random_programs_trace_as_the_model(prog):
    assert_same_trace(prog)


def _prog(bodies, main, coros=(0,), wraps=(), safewraps=()):
    return label({"bodies": bodies, "coros": coros, "wraps": wraps, "safewraps": safewraps,
                  "main": (main, None)})


KNOWN = {
    # symmetric: ping-pong through transfer, then back to main
    "transfer": _prog(
        ((( ("transfer", 1, (1,)), ("transfer", -1, (2,))), None),
         ((("transfer", 0, (3,)),), None)),
        (("transfer", 0, ()), ("status", 0), ("status", 1), ("transfer", 1, ())),
        coros=(0, 1)),
    # cross-yield: yield_fn from a coroutine nested in the safewrap body, then the
    # caller goes away and yield_fn is refused where it is called
    "safewrap": _prog(
        (((("resume", 0, ()), ("yield", ())), ("return", (9,))),
         ((("swyield", 0, (1,)), ("yield", ()), ("swyield", 0, (2,))), None)),
        (("swcall", 0, ()), ("swcall", 0, (5,)), ("resume", 0, ()), ("status", 0)),
        coros=(1,), safewraps=(0,)),
    # a transfer-entered coroutine ends inside a scope opened by a waiting coroutine
    "ending-in-scope": _prog(
        (((("scope", (("resume", 1, ()),)),), None),
         ((("transfer", 2, ()),), None),
         ((), ("return", (4,)))),
        (("call", 0, ()), ("status", 1), ("status", 2)),
        coros=(0, 1, 2), wraps=(0,)),
    # close: the cleanup tries to transfer to main; a nested coroutine ends into the close
    "close": _prog(
        (((("cleanup", (("yield", ()),), (("transfer", -1, (1,)),)),), None),
         ((("cleanup", (("yield", ()),), (("resume", 2, ()),)),), None),
         ((("transfer", 3, ()),), None),
         ((), None)),
        (("resume", 0, ()), ("close", 0), ("resume", 1, ()), ("close", 1), ("status", 1)),
        coros=(0, 1, 2, 3)),
    # while main closes C0, a coroutine its cleanup resumes may not transfer to main,
    # and one that ends after a transfer is raised in C0's cleanup
    "close-nested": _prog(
        (((("cleanup", (("yield", ()),), (("resume", 1, ()),)),), None),
         ((("transfer", -1, (1,)), ("transfer", 2, ())), None),
         ((), None)),
        (("resume", 0, ()), ("close", 0), ("status", 0), ("status", 1), ("status", 2)),
        coros=(0, 1, 2)),
    # a coroutine closing another is not a transfer target
    "closing-other": _prog(
        (((("close", 1),), ("return", (1,))),
         ((("cleanup", (("yield", ()),), (("resume", 2, ()),)),), None),
         ((("transfer", 0, (5,)),), None)),
        (("resume", 1, ()), ("resume", 0, ()), ("status", 1), ("status", 2)),
        coros=(0, 1, 2)),
    # a safewrap caller that got control back by a transfer no longer waits
    "safewrap-transfer": _prog(
        (((("swcall", 0, ()), ("yield", (1,))), None),
         ((("resume", 2, ()), ("swyield", 0, (3,))), None),
         ((("transfer", 0, (7,)),), None)),
        (("resume", 0, ()), ("transfer", 2, ()), ("status", 0), ("status", 2)),
        coros=(0, 1, 2), safewraps=(1,)),
    # a scope cancels itself; trio.Cancelled kills the coroutine resumed inside it, the
    # scope catches it; close() later reports what that coroutine died of
    "cancelled": _prog(
        (((("sleep",),), None),
         ((("scope", (("cancel",), ("resume", 1, ()))),), None)),
        (("resume", 0, ()), ("status", 1), ("close", 1), ("close", 1)),
        coros=(1, 0)),
}


@pytest.mark.parametrize("name", KNOWN)
def test_known_programs_trace_as_the_model(name):
    assert_same_trace(KNOWN[name])
