"""Differential test of cosched.coro against real Lua 5.4 (run through lupa).

Random coroutine programs -- create, resume, yield, wrap calls, close, status,
running, isyieldable, errors, cleanup blocks (``finally`` / ``<close>``), nested
resumes, values -- are rendered to Lua source and run by Lua 5.4, and interpreted
on ``cosched.coro`` under trio. Both record the same trace: what every operation
returned or raised, in order. The traces must be equal once the deliberate
differences of the contract from Lua are normalised away; DIFFERENCES below is the
one place that lists them, and the code that applies each one names it.

The normal test command runs a seeded, bounded number of programs (on the C switch
path here; tests/test_speedups.py runs this file again on the pure-Python one).
``make fuzz`` runs many more with fresh seeds (COSCHED_FUZZ_EXAMPLES). Hypothesis
shrinks a failing program, and the failure shows its Lua source and the first
event where the traces part.
"""

import functools
import os
import re

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lupa import lua54

from cosched import coro
from cosched.coro import CoroutineError

# Where cosched.coro deliberately differs from Lua 5.4, and how this test deals with it.
DIFFERENCES = {
    "packing": "Lua returns several values; yield_, transfer and wrap calls return them "
               "packed (none -> None, one -> itself, several -> a tuple), a body returns a "
               "tuple for several. Traces hold lists of values; the programs use integers "
               "only, so unpacking is unambiguous.",
    "main": "Lua's main thread is a thread object; cosched has coro.main. Both show as "
            "'main' in traces; coroutines are named in the order running() first sees them.",
    "positions": "Lua prefixes string errors with the source position (error(), "
                 "coroutine.wrap); cosched messages carry none. Prefixes are stripped.",
    "unwinding": "A Lua coroutine that dies of an error keeps its to-be-closed variables "
                 "open until coroutine.close (coroutine.wrap closes them itself); Python "
                 "runs a body's finally blocks while the exception propagates, and a later "
                 "close() still returns (False, error) once. The Lua harness closes such a "
                 "coroutine as soon as resume reports the error, and answers the next close "
                 "with that error once.",
    "collection": "Python runs the finally blocks of an unreferenced suspended coroutine "
                  "when it is collected; Lua runs no __close then. The harnesses keep every "
                  "coroutine referenced until main ends and record nothing after.",
    "not generated": "Lua's generic for over a wrap (it stops at a nil first value and takes "
                     "a return value as an item; async for stops when the body finishes); "
                     "nesting near the limits (Lua's 'C stack overflow' vs RecursionError); "
                     "switching inside cleanup code; isyieldable(co); values that are nil/None "
                     "or tables; transfer and safewrap, which Lua lacks (test_coro_model.py).",
}

FUZZ = int(os.environ.get("COSCHED_FUZZ_EXAMPLES", "0"))
EXAMPLES = FUZZ or 120
BUDGET = 80      # operations a program may run; later ones do nothing, identically in both
MAX_DEPTH = 8    # resume/wrap nesting the harnesses allow; deeper calls record "deep"

# ---------------------------------------------------------------------------
# Programs
#
# A program has bodies F[j] (operation lists plus a terminator), coroutine slots C[i]
# and wrap slots W[i] made from bodies at the start, and main's operations.
# An operation is (label, kind, *params); labels are unique and tie events to code.

VALUES = st.lists(st.integers(0, 9), max_size=3).map(tuple)


@st.composite
def operations(draw, nb, nc, nw, nest):
    kinds = ["resume"] * 4 + ["yield"] * 4 + ["status", "running", "isyieldable", "close",
                                               "close", "new"]
    kinds += ["call"] * 3 if nw else []
    kinds += ["cleanup"] * 2 if nest else []
    ops = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(kinds))
        slot = st.integers(-1, nc - 1)  # -1 is main
        if kind == "resume":
            ops.append((kind, draw(slot), draw(VALUES)))
        elif kind == "yield":
            ops.append((kind, draw(VALUES)))
        elif kind == "call":
            ops.append((kind, draw(st.integers(0, nw - 1)), draw(VALUES)))
        elif kind in ("status", "close"):
            ops.append((kind, draw(slot)))
        elif kind == "new":
            ops.append((kind, draw(st.integers(0, nc - 1)), draw(st.integers(0, nb - 1))))
        elif kind == "cleanup":
            ops.append((kind, draw(operations(nb, nc, nw, nest - 1))))
        else:
            ops.append((kind,))
    return tuple(ops)


END = st.one_of(st.none(), st.tuples(st.just("return"), VALUES),
                st.tuples(st.just("error"), st.integers(0, 9)))


@st.composite
def programs(draw):
    nb, nc, nw = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(0, 2))
    bodies = tuple((draw(operations(nb, nc, nw, 2)), draw(END)) for _ in range(nb))
    main_end = draw(st.one_of(st.none(), st.tuples(st.just("error"), st.integers(0, 9))))
    return label({
        "bodies": bodies,
        "coros": tuple(draw(st.integers(0, nb - 1)) for _ in range(nc)),
        "wraps": tuple(draw(st.integers(0, nb - 1)) for _ in range(nw)),
        "main": (draw(operations(nb, nc, nw, 2)), main_end),
    })


def label(prog):
    """Number every operation, in order, as (label, kind, *params)."""
    counter = iter(range(1, 10_000))

    def number(ops):
        out = []
        for op in ops:
            if op[0] == "cleanup":
                out.append((next(counter), "cleanup", number(op[1])))
            else:
                out.append((next(counter), *op))
        return tuple(out)

    prog = dict(prog)
    prog["bodies"] = tuple((number(ops), end) for ops, end in prog["bodies"])
    prog["main"] = (number(prog["main"][0]), prog["main"][1])
    return prog


# ---------------------------------------------------------------------------
# Lua

LUA_PRELUDE = """
local T, C, W, F, DEAD_ERR = {}, {}, {}, {}, {}
local MAIN = coroutine.running()
local budget, depth, names, nnames = %(budget)d, 0, {}, 0
local function rec(...) T[#T + 1] = {...} end
local function tick() budget = budget - 1; return budget >= 0 end
local function target(c) if c < 0 then return MAIN end return C[c] end
local function name(co)
  if co == MAIN then return "main" end
  if not names[co] then nnames = nnames + 1; names[co] = "co" .. nnames end
  return names[co]
end
local function op_resume(l, c, ...)
  if not tick() then return end
  if depth >= %(maxd)d then rec(l, "deep") return end
  local co = target(c)
  local was = coroutine.status(co)
  depth = depth + 1
  local r = table.pack(coroutine.resume(co, ...))
  depth = depth - 1
  if r[1] then rec(l, "resume", true, {table.unpack(r, 2, r.n)}) return end
  if was == "suspended" and coroutine.status(co) == "dead" then
    coroutine.close(co)  -- DIFFERENCES["unwinding"]
    DEAD_ERR[co] = r[2]
  end
  rec(l, "resume", false, r[2])
end
local function op_yield(l, ...)
  if not tick() then return end
  local r = table.pack(pcall(coroutine.yield, ...))
  if r[1] then rec(l, "yield", "ok", {table.unpack(r, 2, r.n)})
  else rec(l, "yield", "raise", r[2]) end
end
local function op_call(l, w, ...)
  if not tick() then return end
  if depth >= %(maxd)d then rec(l, "deep") return end
  depth = depth + 1
  local r = table.pack(pcall(W[w], ...))
  depth = depth - 1
  if r[1] then rec(l, "call", "ok", {table.unpack(r, 2, r.n)})
  else rec(l, "call", "raise", r[2]) end
end
local function op_close(l, c)
  if not tick() then return end
  local co = target(c)
  local ok, a, b = pcall(coroutine.close, co)
  if not ok then rec(l, "close", "raise", a) return end
  local e = DEAD_ERR[co]  -- DIFFERENCES["unwinding"]
  if e ~= nil then DEAD_ERR[co] = nil; rec(l, "close", "ok", false, e) return end
  if a then rec(l, "close", "ok", true) else rec(l, "close", "ok", false, b) end
end
local function op_status(l, c)
  if tick() then rec(l, "status", coroutine.status(target(c))) end
end
local function op_running(l)
  if tick() then local co, m = coroutine.running(); rec(l, "running", name(co), m) end
end
local function op_isyieldable(l)
  if tick() then rec(l, "isyieldable", coroutine.isyieldable()) end
end
local function op_new(l, c, j)
  if tick() then C[c] = coroutine.create(F[j]) end
end
local function cleanup(l)
  return setmetatable({}, {__close = function() rec(l, "cleanup") end})
end
"""


def lua_source(prog):
    out = [LUA_PRELUDE % {"budget": BUDGET, "maxd": MAX_DEPTH}]

    def args(vals):
        return "".join(f", {v}" for v in vals)

    def block(ops, indent):
        pad = "  " * indent
        for op in ops:
            lab, kind = op[0], op[1]
            if kind == "cleanup":
                out.append(f"{pad}do local _ <close> = cleanup({lab})")
                block(op[2], indent + 1)
                out.append(f"{pad}end")
            elif kind in ("resume", "call"):
                out.append(f"{pad}op_{kind}({lab}, {op[2]}{args(op[3])})")
            elif kind == "yield":
                out.append(f"{pad}op_yield({lab}{args(op[2])})")
            elif kind == "new":
                out.append(f"{pad}op_new({lab}, {op[2]}, {op[3]})")
            elif kind in ("status", "close"):
                out.append(f"{pad}op_{kind}({lab}, {op[2]})")
            else:
                out.append(f"{pad}op_{kind}({lab})")

    def end(term, indent):
        pad = "  " * indent
        if term is None:
            return
        if term[0] == "return":
            out.append(f"{pad}return {', '.join(map(str, term[1]))}")
        else:
            out.append(f'{pad}error("U:{term[1]}", 0)')

    for j, (ops, term) in enumerate(prog["bodies"]):
        out.append(f"F[{j}] = function(...)")
        out.append(f'  rec("start", {j}, {{...}})')
        block(ops, 1)
        end(term, 1)
        out.append("end")
    for i, j in enumerate(prog["coros"]):
        out.append(f"C[{i}] = coroutine.create(F[{j}])")
    for i, j in enumerate(prog["wraps"]):
        out.append(f"W[{i}] = coroutine.wrap(F[{j}])")
    out.append("local function main()")
    block(prog["main"][0], 1)
    end(prog["main"][1], 1)
    out.append("end")
    out.append('local ok, e = pcall(main)')
    out.append('rec("main-end", ok, ok and "" or e)')
    out.append(f'for i = 0, {len(prog["coros"]) - 1} do rec("final", i, coroutine.status(C[i])) end')
    out.append("return T")
    return "\n".join(out)


POSITION = re.compile(r"^(?:[\w.]+:\d+: )+")  # DIFFERENCES["positions"]


def from_lua(x):
    """A Lua value of a trace as Python: sequences as lists, errors without positions."""
    if lua54.lua_type(x) == "table":
        return [from_lua(x[i]) for i in range(1, len(x) + 1)]
    if isinstance(x, str):
        return POSITION.sub("", x)
    return x


def run_lua(prog):
    trace = lua54.LuaRuntime().execute(lua_source(prog), name="=prog")
    return [tuple(event) for event in from_lua(trace)]


# ---------------------------------------------------------------------------
# cosched


class UserError(Exception):
    pass


def unpack(packed):
    """DIFFERENCES["packing"]: packed values as a list."""
    return [] if packed is None else list(packed) if isinstance(packed, tuple) else [packed]


def message(e):
    if isinstance(e, (UserError, CoroutineError)):
        return str(e)
    return f"unexpected {type(e).__name__}: {e}"  # never equal to a Lua message


class CoschedRun:
    """Interprets a program on cosched.coro, recording the trace Lua records."""

    def __init__(self, prog):
        self.prog = prog
        self.trace = []
        self.budget = BUDGET
        self.depth = 0
        self.names = {}
        self.done = False  # DIFFERENCES["collection"]
        self.C = [coro.create(functools.partial(self.body, j)) for j in prog["coros"]]
        self.W = [coro.wrap(functools.partial(self.body, j)) for j in prog["wraps"]]
        self.made = list(self.C)  # DIFFERENCES["collection"]

    def rec(self, *event):
        if not self.done:
            self.trace.append(event)

    def tick(self):
        self.budget -= 1
        return self.budget >= 0 and not self.done

    def target(self, c):
        return coro.main if c < 0 else self.C[c]

    def name(self, co):
        return self.names.setdefault(co, f"co{len(self.names) + 1}")

    async def body(self, j, *args):
        self.rec("start", j, list(args))
        ops, term = self.prog["bodies"][j]
        await self.block(ops)
        return self.end(term)

    def end(self, term):
        if term is None:
            return None
        if term[0] == "return":
            return tuple(term[1])
        raise UserError(f"U:{term[1]}")

    async def block(self, ops):
        for op in ops:
            await getattr(self, "op_" + op[1])(op[0], *op[2:])

    async def op_cleanup(self, lab, ops):
        try:
            await self.block(ops)
        finally:
            self.rec(lab, "cleanup")

    async def op_resume(self, lab, c, vals):
        if not self.tick():
            return
        if self.depth >= MAX_DEPTH:
            return self.rec(lab, "deep")
        self.depth += 1
        r = await coro.resume(self.target(c), *vals)
        self.depth -= 1
        if r[0]:
            self.rec(lab, "resume", True, list(r[1:]))
        else:
            self.rec(lab, "resume", False, message(r[1]))

    async def op_yield(self, lab, vals):
        if not self.tick():
            return
        try:
            got = await coro.yield_(*vals)
        except Exception as e:
            return self.rec(lab, "yield", "raise", message(e))
        self.rec(lab, "yield", "ok", unpack(got))

    async def op_call(self, lab, w, vals):
        if not self.tick():
            return
        if self.depth >= MAX_DEPTH:
            return self.rec(lab, "deep")
        self.depth += 1
        try:
            got = await self.W[w](*vals)
        except Exception as e:
            self.depth -= 1
            return self.rec(lab, "call", "raise", message(e))
        self.depth -= 1
        self.rec(lab, "call", "ok", unpack(got))

    async def op_close(self, lab, c):
        if not self.tick():
            return
        try:
            r = await coro.close(self.target(c))
        except Exception as e:
            return self.rec(lab, "close", "raise", message(e))
        if r[0]:
            self.rec(lab, "close", "ok", True)
        else:
            self.rec(lab, "close", "ok", False, message(r[1]))

    async def op_status(self, lab, c):
        if self.tick():
            self.rec(lab, "status", coro.status(self.target(c)))

    async def op_running(self, lab):
        if self.tick():
            co, is_main = coro.running()
            self.rec(lab, "running", "main" if is_main else self.name(co), is_main)

    async def op_isyieldable(self, lab):
        if self.tick():
            self.rec(lab, "isyieldable", coro.isyieldable())

    async def op_new(self, lab, c, j):
        if self.tick():
            self.C[c] = coro.create(functools.partial(self.body, j))
            self.made.append(self.C[c])

    async def main(self):
        ops, term = self.prog["main"]
        try:
            await self.block(ops)
            self.end(term)
        except Exception as e:
            self.rec("main-end", False, message(e))
        else:
            self.rec("main-end", True, "")
        for i, co in enumerate(self.C):
            self.rec("final", i, coro.status(co))
        self.done = True


def run_cosched(prog):
    r = CoschedRun(prog)

    async def main():
        with trio.fail_after(10):
            await r.main()

    trio.run(main)
    return r.trace


# ---------------------------------------------------------------------------
# The tests


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def assert_same_trace(prog):
    lua, ours = run_lua(prog), run_cosched(prog)
    if lua != ours:
        i = first_difference(lua, ours)
        pytest.fail(
            f"traces part at event {i}:\n  Lua:     {lua[i:i + 3]}\n  cosched: {ours[i:i + 3]}\n"
            f"common prefix: {lua[:i]}\nLua source:\n{lua_source(prog)}")


@settings(max_examples=EXAMPLES, derandomize=not FUZZ, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(programs())
def test_random_programs_trace_as_in_lua(prog):
    assert_same_trace(prog)


def _prog(bodies, main, coros=(0,), wraps=()):
    return label({"bodies": bodies, "coros": coros, "wraps": wraps, "main": (main, None)})


@pytest.mark.parametrize("prog", [
    # generator: resume passes values in, yield passes them out, return ends it
    _prog(((( ("yield", (1, 2)), ("yield", ()), ("running",)), ("return", (7,))),),
          (("resume", 0, (5,)), ("resume", 0, (6, 7)), ("status", 0), ("resume", 0, ()),
           ("resume", 0, ()), ("status", 0), ("close", 0))),
    # an error kills the coroutine; its cleanup runs once; close reports the error once
    _prog(((( ("cleanup", (("yield", (1,)),)),), ("error", 3)),),
          (("resume", 0, ()), ("resume", 0, ()), ("close", 0), ("close", 0))),
    # close runs the cleanup of a suspended coroutine; misuse from main and inside
    _prog(((( ("cleanup", (("yield", ()), ("close", -1))),), None),),
          (("yield", ()), ("resume", -1, ()), ("close", -1), ("resume", 0, ()),
           ("close", 0), ("status", 0))),
    # nested wraps and a resume of a running / normal coroutine
    _prog((((("call", 0, (1,)), ("resume", 0, ())), ("return", (1, 2))),
           ((("resume", 0, ()), ("isyieldable",), ("yield", (4,))), ("return", ()))),
          (("resume", 0, ()), ("call", 0, ()), ("call", 0, ())), coros=(0,), wraps=(1,)),
], ids=["generator", "error-and-cleanup", "close-and-main", "nesting"])
def test_known_programs_trace_as_in_lua(prog):
    assert_same_trace(prog)
