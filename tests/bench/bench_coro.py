"""Benchmark of ``cosched.coro`` switching cost and memory, next to baselines.

What it measures, in one process and one run (nanoseconds per operation):

* ``cosched.coro``: a resume->yield round trip driven from main, the same
  round trip nested inside a running coroutine, a transfer ping-pong pair
  (A->B->A), and one item of ``async for`` over ``coro.wrap(gen)``;
* baselines: a plain generator ``send`` round trip, a greenlet switch pair,
  a trio checkpoint and an asyncio ``sleep(0)``;
* memory: bytes per suspended coroutine (``tracemalloc``, 10,000 of them),
  next to 10,000 suspended plain Python coroutine objects (the floor Python
  imposes) and 10,000 suspended greenlets (their saved C-stack slices are
  heap copies, so tracemalloc sees them; the live C stack is not counted).

How to run it (it is not collected by pytest)::

    python tests/bench/bench_coro.py                 # 7 rounds of 100,000 iterations
    python tests/bench/bench_coro.py --quick         # 3 rounds of 20,000
    python tests/bench/bench_coro.py --json          # the results as one JSON object
    python tests/bench/bench_coro.py --instructions  # also count instructions per op

``--instructions`` runs each subject under valgrind's callgrind twice (5,000 and
15,000 iterations) and divides the difference by 10,000: CPU instructions per
operation, start-up excluded (with PYTHONHASHSEED=0, so dict probing repeats).
Unlike times, these counts barely move from run to run whatever else the machine
does, so they show what a change did on a noisy machine; they do not see cache
misses, which time does.

Each timing is the best of R rounds; the subjects run round-robin within each
round, so machine drift affects all of them alike, and the garbage collector is
off while a loop is timed. Every loop includes its own ``for`` overhead.

How to read the ratios: ``x greenlet`` is ns/op divided by the greenlet switch
pair (two C-level stack switches), ``x gen`` by the generator ``send`` round
trip (the cheapest switch pure Python offers), ``x trio`` by a trio checkpoint
(the cost of one trip through the event loop). A ratio of 1.0 means "as cheap
as the baseline", below 1.0 cheaper. The targets printed at the end are stated
against the greenlet pair and in bytes; the script reports, it always exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import tracemalloc
import types
from concurrent.futures import ThreadPoolExecutor

import trio

from cosched import _coro, coro

try:
    import greenlet
except ImportError:  # pragma: no cover - greenlet is an optional test dependency
    greenlet = None

MEM_COUNT = 10_000
TARGET_RATIO = 1.2
TARGET_BYTES = 768


# --- subjects: each takes n and returns the nanoseconds its loop of n operations took


def _in_trio(fn):
    """A subject that runs ``async fn(n)`` under trio.run; fn times its own loop."""
    return lambda n: trio.run(fn, n)


async def _spin():
    yield_ = coro.yield_
    while True:
        await yield_()


async def resume_loop(n):
    co, resume = coro.create(_spin), coro.resume
    t0 = time.perf_counter_ns()
    for _ in range(n):
        await resume(co)
    return time.perf_counter_ns() - t0


async def resume_nested(n):
    ok, elapsed = await coro.resume(coro.create(resume_loop), n)
    if not ok:
        raise elapsed
    return elapsed


async def transfer_pingpong(n):
    transfer = coro.transfer

    async def ping():
        t0 = time.perf_counter_ns()
        for _ in range(n):
            await transfer(b)
        await transfer(None, time.perf_counter_ns() - t0)

    async def pong():
        while True:
            await transfer(a)

    a, b = coro.create(ping), coro.create(pong)
    return await transfer(a)


async def wrap_iter(n):
    async def gen():
        yield_ = coro.yield_
        for i in range(n):
            await yield_(i)

    t0 = time.perf_counter_ns()
    async for _ in coro.wrap(gen):
        pass
    return time.perf_counter_ns() - t0


def gen_send(n):
    def gen():
        while True:
            yield

    send = gen().send
    send(None)
    t0 = time.perf_counter_ns()
    for _ in range(n):
        send(None)
    return time.perf_counter_ns() - t0


def greenlet_pair(n):
    def body():
        back = g.parent.switch
        while True:
            back()

    g = greenlet.greenlet(body)
    switch = g.switch
    t0 = time.perf_counter_ns()
    for _ in range(n):
        switch()
    return time.perf_counter_ns() - t0


async def trio_checkpoint(n):
    checkpoint = trio.lowlevel.checkpoint
    t0 = time.perf_counter_ns()
    for _ in range(n):
        await checkpoint()
    return time.perf_counter_ns() - t0


async def _asyncio_loop(n):
    sleep = asyncio.sleep
    t0 = time.perf_counter_ns()
    for _ in range(n):
        await sleep(0)
    return time.perf_counter_ns() - t0


# (key, label, subject or None when unavailable); the ratio columns divide by the last three
SUBJECTS = [
    ("resume_main", "resume->yield round trip, from main", _in_trio(resume_loop)),
    ("resume_nested", "resume->yield round trip, nested", _in_trio(resume_nested)),
    ("transfer", "transfer ping-pong (A->B->A)", _in_trio(transfer_pingpong)),
    ("wrap_iter", "async for over wrap (per item)", _in_trio(wrap_iter)),
    ("gen_send", "generator send round trip", gen_send),
    ("greenlet", "greenlet switch pair", greenlet_pair if greenlet else None),
    ("trio", "trio checkpoint", _in_trio(trio_checkpoint)),
    ("asyncio", "asyncio.sleep(0)", lambda n: asyncio.run(_asyncio_loop(n))),
]


def count_instructions(keys, small=5_000, large=15_000):
    """Instructions per op for each subject, from two callgrind runs of this script.

    Returns {key: instructions} and an error string, or None when valgrind is missing.
    """
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return {}, "valgrind not installed"

    def collected(key, n):
        proc = subprocess.run(
            [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null",
             sys.executable, __file__, "--run-subject", key, str(n)],
            capture_output=True, text=True, check=False,
            env=dict(os.environ, PYTHONHASHSEED="0"))
        m = re.search(r"Collected : (\d+)", proc.stderr)
        if proc.returncode != 0 or m is None:
            raise RuntimeError(f"callgrind run of {key} failed: {proc.stderr[-300:]}")
        return int(m.group(1))

    jobs = [(key, n) for key in keys for n in (small, large)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        counts = dict(zip(jobs, pool.map(lambda job: collected(*job), jobs)))
    return {key: (counts[key, large] - counts[key, small]) / (large - small) for key in keys}, None


def measure(n, repeats):
    """Best ns/op per subject over round-robin rounds (round 0 is a short warm-up).

    Returns (best, errors): a subject that raises is reported, not retried.
    """
    best, errors = {}, {}
    for rnd in range(repeats + 1):
        iters = n if rnd else min(n, 1000)
        for key, _, fn in SUBJECTS:
            if fn is None or key in errors:
                continue
            gc.collect()
            gc.disable()
            try:
                ns = fn(iters) / iters
            except Exception as e:  # noqa: BLE001 - the script reports, it does not gate
                errors[key] = f"{type(e).__name__}: {e}"
                best.pop(key, None)
                continue
            finally:
                gc.enable()
            if rnd and ns < best.get(key, float("inf")):
                best[key] = ns
    return best, errors


# --- memory: bytes per suspended object, MEM_COUNT of each kept alive


async def _coro_body():
    await coro.yield_()


async def _coro_suspended():
    co = coro.create(_coro_body)
    await coro.resume(co)
    return co


@types.coroutine
def _bare_yield():
    yield


async def _plain_body():
    await _bare_yield()


async def _plain_suspended():
    c = _plain_body()
    c.send(None)
    return c


async def _greenlet_suspended():
    g = greenlet.greenlet(lambda: greenlet.getcurrent().parent.switch())
    g.switch()
    return g


MEMORY = [
    ("coro", "cosched.coro coroutine", _coro_suspended),
    ("python_coroutine", "plain Python coroutine (floor)", _plain_suspended),
    ("greenlet", "greenlet", _greenlet_suspended if greenlet else None),
]


async def _measure_memory():
    result = {}
    for key, _, make in MEMORY:
        if make is None:
            continue
        keep = [None] * MEM_COUNT  # allocated before the baseline: not counted
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(MEM_COUNT):
            keep[i] = await make()
        gc.collect()
        result[key] = (tracemalloc.get_traced_memory()[0] - before) / MEM_COUNT
        if key == "coro":  # sanity check: each one must be parked at its yield
            result["coro_not_suspended"] = sum(coro.status(c) != "suspended" for c in keep)
    return result


def measure_memory():
    tracemalloc.start()
    try:
        return trio.run(_measure_memory)
    finally:
        tracemalloc.stop()


# --- report


def _ratio(a, b):
    return None if a is None or b is None else a / b


def _fmt(x, spec=".2f"):
    return "n/a" if x is None else format(x, spec)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 rounds of 20,000 iterations")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object")
    ap.add_argument("--instructions", action="store_true",
                    help="also count CPU instructions per op with valgrind (about 2 minutes)")
    ap.add_argument("--run-subject", nargs=2, metavar=("KEY", "N"), help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.run_subject:  # one subject's loop, for a callgrind run
        key, count = opts.run_subject
        dict((k, fn) for k, _, fn in SUBJECTS)[key](int(count))
        return 0
    n, repeats = (20_000, 3) if opts.quick else (100_000, 7)

    best, errors = measure(n, repeats)
    instr = {}
    if opts.instructions:
        try:
            instr, err = count_instructions([k for k, _, fn in SUBJECTS if fn is not None])
        except RuntimeError as e:
            err = str(e)
        if err:
            errors["instructions"] = err
    try:
        mem = measure_memory()
    except Exception as e:  # noqa: BLE001
        mem, errors["memory"] = {}, f"{type(e).__name__}: {e}"
    bases = {"greenlet": best.get("greenlet"), "gen_send": best.get("gen_send"),
             "trio": best.get("trio")}
    g, coro_bytes = bases["greenlet"], mem.get("coro")
    targets = {
        f"resume->yield (main) <= {TARGET_RATIO} x greenlet pair":
            _ratio(best.get("resume_main"), g),
        f"resume->yield (nested) <= {TARGET_RATIO} x greenlet pair":
            _ratio(best.get("resume_nested"), g),
    }
    verdicts = {k: None if r is None else r <= TARGET_RATIO for k, r in targets.items()}
    verdicts[f"bytes per suspended coroutine <= {TARGET_BYTES}"] = (
        None if coro_bytes is None else coro_bytes <= TARGET_BYTES)
    env = {
        "python": platform.python_version(), "trio": trio.__version__,
        "greenlet": greenlet.__version__ if greenlet else None,
        "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "iterations": n, "repeats": repeats,
        "switch_path": "C" if _coro._speedups is not None else "pure Python",
    }
    gi = instr.get("greenlet")
    if gi:
        targets_instr = {
            "resume->yield (main), instructions": _ratio(instr.get("resume_main"), gi),
            "resume->yield (nested), instructions": _ratio(instr.get("resume_nested"), gi),
        }
    else:
        targets_instr = {}

    if opts.json:
        ratios = {k: {b: _ratio(v, bv) for b, bv in bases.items()} for k, v in best.items()}
        print(json.dumps({**env, "ns_per_op": best, "ratios": ratios,
                          "instructions_per_op": instr, "instruction_ratios": targets_instr,
                          "bytes_per_suspended": mem, "targets": verdicts,
                          "errors": errors}, indent=2))
        return 0

    print(" ".join(f"{k}={v}" for k, v in env.items()))
    head = f"\n{'subject':<40}{'ns/op':>10}{'x greenlet':>12}{'x gen':>8}{'x trio':>8}"
    print(head + (f"{'instr/op':>10}{'x greenlet':>12}" if instr else ""))
    for key, label, fn in SUBJECTS:
        if key in errors:
            print(f"{label:<40}  error: {errors[key]}")
        elif fn is None:
            print(f"{label:<40}  greenlet not installed")
        else:
            v = best[key]
            print(f"{label:<40}{v:>10.1f}"
                  + "".join(f"{_fmt(_ratio(v, bv)):>{w}}" for bv, w in zip(bases.values(), (12, 8, 8)))
                  + (f"{_fmt(instr.get(key), '.0f'):>10}{_fmt(_ratio(instr.get(key), gi)):>12}"
                     if instr else ""))
    if "instructions" in errors:
        print(f"instructions: {errors['instructions']}")
    print(f"\n{'bytes per suspended object (x10,000)':<40}{'bytes':>10}")
    for key, label, make in MEMORY:
        print(f"{label:<40}{_fmt(mem.get(key), '.1f'):>10}"
              + ("  (greenlet not installed)" if make is None else ""))
    if mem.get("coro_not_suspended"):
        print(f"WARNING: {mem['coro_not_suspended']} of the cosched coroutines were not suspended")
    if "memory" in errors:
        print(f"memory: error: {errors['memory']}")
    print()
    for name, ok in verdicts.items():
        print(f"{'n/a ' if ok is None else 'PASS' if ok else 'FAIL'}  {name}")
    for name, r in targets_instr.items():
        print(f"{'n/a ' if r is None else 'PASS' if r <= TARGET_RATIO else 'FAIL'}  {name}: "
              f"{_fmt(r)} x greenlet pair")
    return 0


if __name__ == "__main__":
    main()
    sys.exit(0)
