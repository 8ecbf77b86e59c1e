"""Benchmark of a real coschedd: idle, status, downloader, wake-up cost, many children.

How to run it (it is not collected by pytest), with the project's virtualenv::

    python tests/bench/bench_daemon.py                # every part, full windows
    python tests/bench/bench_daemon.py --quick        # shorter windows, fewer rounds
    python tests/bench/bench_daemon.py --only wakeup,children   # some parts only

Parts: idle, status, downloader, wakeup, children, follow (all by default).

Every daemon is a real ``coschedd`` process on a temporary folder (its config,
jobs folder and runtime folder live there; JSON logs at level warning go to a
file in it and the warning/error lines are counted). Daemons are always stopped
(SIGTERM, wait, SIGKILL). The script exits 0 unless a daemon fails to start.

What it measures and how to read it:

1. idle: one job spawns 999 children (half ``trio.sleep(3600)``, half ``recv``
   on a socketpair) and sleeps, so 1,000 tasks wait. Nothing talks to the daemon
   during the window. ``cpu growth`` is the daemon's user+system CPU over the
   window (target: < 10 ms per 10 s). Then ``strace -f -c`` watches a second
   window of the same length; its table is printed verbatim and the verdict lists
   every syscall but ``epoll_wait`` (an idle trio loop should make none, or one
   ``epoll_wait`` per deadline; the watchdog is off, so no ``sendto``/``sendmsg``).
2. status: one job spawns 10,000 sleeping children (``ready after`` counts from
   launch until ``coschedctl --json status ROOT`` reports them all alive).
   ``coschedctl status`` and ``--json status`` are timed end to end as
   subprocesses, best of 3 (target 1 s); ``coschedctl ping`` is the floor
   (interpreter start, connect) and ``status in-process`` (``cosched.ctl.call``
   from here) the daemon's share. ``rss per task`` is (rss with the tasks - rss
   of an empty daemon) / 10,000.
3. downloader: ``jobs/downloader.py`` is imported from its file and its
   ``main(task)`` run in this process (a stub ``task`` carries the config), with
   8 local downloads delayed 0.1..0.8 s, in mode "concurrent" and "blocking".
   The third row is a busy-polling baseline written here: non-blocking sockets
   and a loop calling ``recv`` on every connection, swallowing BlockingIOError,
   never waiting; its server (downloader's own ``serve``) runs in a thread. CPU
   is ``time.process_time`` (whole process, server included) across the run;
   wall and CPU are each the best of 3 rounds (1 with --quick).
   Concurrent wall should be close to the longest delay, blocking to the sum;
   concurrent CPU / blocking CPU should be about 1, busy-polling / blocking large.
4. wakeup: 1,000 tasks each run ``while True: await trio.sleep(0.001)`` and add
   one to a shared counter per wake-up (a list item: cheap, and the same in
   both programs). Three subjects run the same code: a plain trio program
   (``trio.run`` in a subprocess, no cosched), a coschedd whose job spawns the
   1,000 as its children (the root measures), and a coschedd with ``[jobs]
   step_limit = 0`` (the step guard's instrument and watchdog stay installed;
   only the limit is off). Each round starts a fresh process of each, one after
   another, the order rotating from round to round. After a warm-up (1 s; 0.5 s
   with --quick) the measuring code, running inside that process (in the
   daemon: the job's root, started by ``coschedctl resume``; nothing else talks
   to the daemon meanwhile), reads the counter and ``time.process_time`` (the
   whole process: every thread, user + system) at both ends of a window (5 s;
   1.5 s with --quick). ``us/wake`` is CPU microseconds per wake-up. The loop
   cannot keep up with 1,000 wake-ups per ms, so it is CPU-bound: ``cpu/wall``
   well below 1 means the process waited for a CPU (other load on the machine).
   Best and median of 3 rounds; the ratios divide the daemon's figure by plain
   trio's (target: at most 1.15x, judged on the best rounds: other load only
   adds CPU time, and on a busy machine the medians scatter by 10% and more).
5. children: a job spawns 100,000 children that just return, in batches of 100
   started together and joined (``task.spawn(child)`` then ``await
   kid.join()``). At 0, 10k, 25k, 50k, 75k and 100k children the root yields to
   the daemon, so it is suspended and nothing runs; the bench then reads the
   daemon's RSS (psutil) and resumes it (``coschedctl resume`` answers at the
   next mark). ``growth 10k->100k`` should be near 0: ended tasks are kept up to
   1,000 in the registry and ended children are pruned from their parent
   (``status`` lists at most 1,001 tasks at the end; the root has no children).
6. follow: the wakeup job of [4] in a fresh coschedd, once as it is and once with
   one ``coschedctl --json events -f`` client following the daemon's event stream
   (subscribed before the measurement starts, reading everything it is sent), the
   order alternating over 3 rounds. Wake-ups are not state changes, so the
   follower should cost nothing: ``follower / none`` near 1.00x (best rounds).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from functools import partial
from pathlib import Path

import psutil
import trio

from cosched.ctl import call

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RESULTS: list[tuple[str, str, str]] = []  # (measurement, value, comparison)

JOB = """
import trio

async def sleeper(task):
    await trio.sleep(3600)

async def waiter(task):
    a, b = trio.socket.socketpair()
    with a, b:
        await a.recv(1)

async def main(task):
    for i in range({children}):
        task.spawn(waiter if {sockets} and i % 2 else sleeper)
    await trio.sleep(3600)
"""
IDLE_JOB = JOB.format(children=999, sockets=True)  # 500 sleep, 499 recv, the root sleeps
MANY_JOB = JOB.format(children=9999, sockets=False)


class DaemonError(Exception):
    """A coschedd did not start or did not reach its tasks."""


def row(name: str, value: str, comparison: str = "") -> None:
    RESULTS.append((name, value, comparison))
    print(f"  {name}: {value}  {comparison}".rstrip(), flush=True)


def tool(name: str) -> str:
    return str(BIN / name) if (BIN / name).exists() else shutil.which(name) or name


def ctl(sock: Path, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    done = subprocess.run([tool("coschedctl"), "--socket", str(sock), "--timeout", "120", *args],
                          capture_output=True, text=True)
    return time.perf_counter() - t0, done


@contextlib.contextmanager
def daemon(jobs: dict[str, str], config: str = ""):
    """A coschedd on a temporary folder with these job files (``config``: more TOML).

    Yields (psutil.Process, socket path, launch time); stops it however the block ends."""
    with tempfile.TemporaryDirectory(prefix="cosched-bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "jobs").mkdir()
        for name, code in jobs.items():
            (tmp / "jobs" / f"{name}.py").write_text(code)
        (tmp / "coschedd.toml").write_text(
            f'[daemon]\njobs_dir = "{tmp / "jobs"}"\nruntime_dir = "{tmp / "run"}"\n'
            f'state_dir = "{tmp / "state"}"\n'
            '[log]\nformat = "json"\nlevel = "warning"\n' + config)
        sock = tmp / "run" / "coschedd.sock"
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "COSCHED_CONFIG")}
        logfile = open(tmp / "coschedd.log", "w+")
        proc = subprocess.Popen([tool("coschedd"), "--config", str(tmp / "coschedd.toml")],
                                stdout=logfile, stderr=subprocess.STDOUT, env=env)
        launched = time.perf_counter()
        try:
            while not sock.exists():  # a job's first step may run before the bind: be patient
                if proc.poll() is not None or time.perf_counter() - launched > 300:
                    logfile.seek(0)
                    raise DaemonError(f"coschedd did not start (exit {proc.poll()}): "
                                      f"{logfile.read()[-2000:]}")
                time.sleep(0.05)
            print(f"  (control socket bound {time.perf_counter() - launched:.2f} s after launch)")
            yield psutil.Process(proc.pid), sock, launched
        finally:
            t0 = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            logfile.seek(0)
            notes = [json.loads(line) for line in logfile if line.startswith("{")]
            logfile.close()
            print(f"  (stopped in {time.perf_counter() - t0:.2f} s, exit {proc.returncode}; "
                  f"{len(notes)} warning/error log lines)")
            for note in notes[:3]:
                print(f"  log: {note.get('level')}: {note.get('event')}"
                      + (f" ({note['seconds']} s)" if "seconds" in note else ""))


def wait_for_tasks(sock: Path, root: str, count: int, launched: float, limit: float = 300.0) -> float:
    """Poll the cheap ``status ROOT`` until the daemon counts >= count alive tasks; seconds
    since launch. A call blocks while a job step runs (the spawning loop), hence the limit."""
    while time.perf_counter() - launched < limit:
        _, done = ctl(sock, "--json", "status", root)
        if done.returncode == 0 and json.loads(done.stdout)["daemon"]["num_tasks"] >= count:
            ready = time.perf_counter() - launched
            time.sleep(1.0)  # let the children take their first step and settle
            return ready
        time.sleep(0.25)
    raise DaemonError(f"fewer than {count} tasks after {limit:.0f} s")


def cpu_ms(p: psutil.Process) -> float:
    t = p.cpu_times()
    return (t.user + t.system) * 1000


def bench_idle(window: float) -> None:
    print(f"\n[1] idle daemon with 1,000 tasks ({window:g} s windows)")
    with daemon({"idle": IDLE_JOB}) as (proc, sock, launched):
        row("1 ready after", f"{wait_for_tasks(sock, 'idle', 1000, launched):.2f} s", "(since launch)")
        status = json.loads(ctl(sock, "--json", "status")[1].stdout)
        waits = Counter(t["waiting_on"] for t in status["tasks"])
        row("1 alive tasks", str(status["daemon"]["num_tasks"]),
            "waiting on: " + ", ".join(f"{k} x{v}" for k, v in waits.items()))
        time.sleep(1.0)
        before = cpu_ms(proc)
        time.sleep(window)
        grown = cpu_ms(proc) - before
        target = window  # ms: 10 ms per 10 s
        row("1a idle cpu growth", f"{grown:.1f} ms / {window:g} s",
            f"target < {target:g} ms: {'ok' if grown < target else 'OVER'}")
        if not shutil.which("strace"):
            print("  strace is not installed (Debian/Ubuntu: apt-get install strace); skipped")
            row("1b idle syscalls", "skipped", "strace missing")
            return
        out = subprocess.run(["timeout", "-s", "INT", f"{window:g}", "strace", "-f", "-c",
                              "-p", str(proc.pid)], capture_output=True, text=True).stderr
        print(textwrap.indent(out.rstrip(), "    "))
        calls = re.findall(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", out, re.M)
        others = [f"{name} x{n}" for n, name in calls if name not in ("epoll_wait", "total")]
        verdict = ("strace could not attach" if "attached" not in out else
                   "no syscalls at all" if not calls else
                   "only epoll_wait" if not others else "other syscalls: " + ", ".join(others))
        total = sum(int(n) for n, name in calls if name != "total")
        row("1b idle syscalls", f"{total} calls", verdict)


def bench_status() -> None:
    print("\n[2] coschedctl status with 10,000 tasks")
    with daemon({}) as (proc, sock, launched):
        if ctl(sock, "--json", "status")[1].returncode:
            raise DaemonError("the empty daemon does not answer status")
        empty_rss = proc.memory_info().rss
    with daemon({"many": MANY_JOB}) as (proc, sock, launched):
        row("2 ready after", f"{wait_for_tasks(sock, 'many', 10_000, launched):.2f} s",
            "(since launch: 9,999 spawns in one step)")
        rss = proc.memory_info().rss
        row("2 rss per task", f"{(rss - empty_rss) / 10_000:.0f} B",
            f"(rss {rss / 2**20:.1f} MiB vs empty daemon {empty_rss / 2**20:.1f} MiB)")
        for label, args in (("ping", ["ping"]), ("status", ["status"]),
                            ("--json status", ["--json", "status"])):
            runs = [ctl(sock, *args) for _ in range(3)]
            if any(done.returncode for _, done in runs):
                row(f"2 {label}", "FAILED", runs[0][1].stderr.strip()[:200])
                continue
            best = min(t for t, _ in runs)
            size = len(runs[0][1].stdout.encode())
            verdict = "floor: interpreter start + connect" if label == "ping" else \
                f"target < 1 s: {'ok' if best < 1 else 'OVER'}"
            row(f"2 {label}", f"{best * 1000:.0f} ms ({size / 1024:.0f} KiB out)", verdict)
        inproc = []
        for _ in range(3):  # the daemon's share: no interpreter start, no rendering
            t0 = time.perf_counter()
            call(str(sock), "status", {}, 120.0)
            inproc.append(time.perf_counter() - t0)
        row("2 status in-process", f"{min(inproc) * 1000:.0f} ms", "(cosched.ctl.call: request, answer, decode)")
        row("2 rss after status calls", f"{proc.memory_info().rss / 2**20:.1f} MiB")


# --- [3] downloader --------------------------------------------------------------

DELAYS = [round(0.1 * (i + 1), 1) for i in range(8)]
PATHS = [f"/delay/{d}/65536" for d in DELAYS]


def load_downloader():
    spec = importlib.util.spec_from_file_location("bench_downloader", ROOT / "jobs" / "downloader.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class StubTask:
    class log:  # noqa: N801 - stands in for a structlog logger
        info = warning = staticmethod(lambda *a, **kw: None)

    def __init__(self, config: dict) -> None:
        self.config = config


def busy_poll(dl) -> dict:
    """The seed's first dispatcher: non-blocking sockets, recv on each in turn, never wait."""
    ready, box = threading.Event(), {}

    async def server():
        with trio.CancelScope() as box["scope"]:
            async with trio.open_nursery() as n:
                listeners = await n.start(partial(trio.serve_tcp, dl.serve, 0, host=dl.HOST))
                box["port"] = listeners[0].socket.getsockname()[1]
                box["token"] = trio.lowlevel.current_trio_token()
                ready.set()

    thread = threading.Thread(target=lambda: trio.run(server), daemon=True)
    thread.start()
    ready.wait()
    conns, sizes = {}, {}
    for path in PATHS:
        s = socket.create_connection((dl.HOST, box["port"]))
        s.sendall(b"GET %s HTTP/1.0\r\n\r\n" % path.encode())
        s.setblocking(False)
        conns[path], sizes[path] = (s, bytearray()), 0
    while conns:
        for path, (s, buf) in list(conns.items()):
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            if data:
                buf += data
            else:
                s.close()
                sizes[path] = len(buf.partition(b"\r\n\r\n")[2])
                del conns[path]
    trio.from_thread.run_sync(box["scope"].cancel, trio_token=box["token"])
    thread.join(5)
    return sizes


def bench_downloader(rounds: int) -> None:
    print(f"\n[3] downloader: {len(PATHS)} downloads of 64 KiB, delays {DELAYS[0]}..{DELAYS[-1]} s, "
          f"best of {rounds}")
    dl = load_downloader()
    runs = {}
    for _ in range(rounds):
        for mode in ("concurrent", "blocking", "busy-polling"):
            w0, c0 = time.perf_counter(), time.process_time()
            got = busy_poll(dl) if mode == "busy-polling" else \
                trio.run(dl.main, StubTask({"paths": PATHS, "mode": mode}))
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            assert sorted(got.values()) == [65536] * len(PATHS), got
            best = runs.get(mode, (wall, cpu))
            runs[mode] = (min(wall, best[0]), min(cpu, best[1]))
    longest, total = max(DELAYS), sum(DELAYS)
    for mode, (wall, cpu) in runs.items():
        row(f"3 {mode}", f"wall {wall:.3f} s, cpu {cpu * 1000:.1f} ms",
            f"wall / longest delay {wall / longest:.2f}, wall / sum of delays {wall / total:.2f}")
    blocking_cpu = runs["blocking"][1]
    row("3 cpu ratios", f"concurrent/blocking {runs['concurrent'][1] / blocking_cpu:.2f}",
        f"busy-polling/blocking {runs['busy-polling'][1] / blocking_cpu:.1f}")


# --- [4] wake-up cost --------------------------------------------------------------

SLEEPERS = """
import time
import trio

async def sleeper(task, counter):
    while True:
        await trio.sleep(0.001)
        counter[0] += 1

async def measure(counter, warmup, window):
    await trio.sleep(warmup)
    n0, c0, t0 = counter[0], time.process_time(), time.perf_counter()
    await trio.sleep(window)
    n1, c1, t1 = counter[0], time.process_time(), time.perf_counter()
    return {{"wakeups": n1 - n0, "cpu": c1 - c0, "wall": t1 - t0}}
"""
WAKEUP_JOB = SLEEPERS + """
from cosched import coro

async def main(task):
    counter = [0]
    for _ in range({tasks}):
        task.spawn(sleeper, counter)
    await coro.yield_("ready")   # the bench's resume starts the measurement
    return await measure(counter, {warmup}, {window})
"""
WAKEUP_PLAIN = SLEEPERS + """
import json

async def main():
    counter = [0]
    async with trio.open_nursery() as nursery:
        for _ in range({tasks}):
            nursery.start_soon(sleeper, None, counter)
        print(json.dumps(await measure(counter, {warmup}, {window})))
        nursery.cancel_scope.cancel()

trio.run(main)
"""
SLEEPING_TASKS = 1000


def wakeup_plain(warmup: float, window: float) -> dict:
    code = WAKEUP_PLAIN.format(tasks=SLEEPING_TASKS, warmup=warmup, window=window)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120 + warmup + window)
    if done.returncode:
        raise DaemonError(f"the plain trio program failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def wait_suspended(sock: Path, task: str, limit: float = 300.0) -> dict:
    """Poll ``show`` until the task is suspended at the daemon; its show answer."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        _, done = ctl(sock, "--json", "show", task)
        if done.returncode == 0 and (shown := json.loads(done.stdout))["state"] == "suspended":
            return shown
        time.sleep(0.25)
    raise DaemonError(f"task {task} did not suspend within {limit:.0f} s")


def resume(sock: Path, task: str) -> dict:
    """Resume a suspended task; the answer comes when it suspends again or ends."""
    _, done = ctl(sock, "--json", "resume", task)
    if done.returncode:
        raise DaemonError(f"resume {task} failed: {done.stderr.strip()[:300]}")
    answer = json.loads(done.stdout)
    if answer["outcome"] == "running":  # still working after the resume's own timeout
        answer = {"outcome": "yielded", "values": wait_suspended(sock, task)["yielded"]}
    return answer


def wakeup_daemon(warmup: float, window: float, config: str = "") -> dict:
    job = WAKEUP_JOB.format(tasks=SLEEPING_TASKS, warmup=warmup, window=window)
    with daemon({"wakeup": job}, config) as (proc, sock, launched):
        wait_suspended(sock, "wakeup")
        answer = resume(sock, "wakeup")
        if answer["outcome"] != "finished":
            raise DaemonError(f"the wakeup job did not finish: {answer}")
        return answer["values"][0]


def per_wakeup(m: dict) -> float:
    return m["cpu"] / m["wakeups"] * 1e6


def bench_wakeup(warmup: float, window: float, rounds: int = 3) -> None:
    print(f"\n[4] wake-up cost: {SLEEPING_TASKS:,} tasks in trio.sleep(0.001) loops, "
          f"{window:g} s windows after {warmup:g} s warm-up, {rounds} rounds")
    subjects = {"plain trio": partial(wakeup_plain, warmup, window),
                "coschedd": partial(wakeup_daemon, warmup, window),
                "coschedd step_limit=0": partial(wakeup_daemon, warmup, window,
                                                 "[jobs]\nstep_limit = 0\n")}
    runs: dict[str, list[dict]] = {name: [] for name in subjects}
    names = list(subjects)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # each first once
            m = subjects[name]()
            runs[name].append(m)
            print(f"  round {r + 1} {name}: {per_wakeup(m):.2f} us/wake, "
                  f"{m['wakeups']:,} wake-ups, cpu {m['cpu']:.2f} s / wall {m['wall']:.2f} s")
    figures = {}
    for name, ms in runs.items():
        costs = sorted(per_wakeup(m) for m in ms)
        figures[name] = (costs[0], statistics.median(costs))
        rate = statistics.median(m["wakeups"] / m["wall"] for m in ms)
        cpu = statistics.median(m["cpu"] / m["wall"] for m in ms)
        row(f"4 {name}", f"best {costs[0]:.2f} us/wake, median {figures[name][1]:.2f}",
            f"({rate:,.0f} wake-ups/s, cpu/wall {cpu:.2f})")
    starved = sum(m["cpu"] / m["wall"] < 0.9 for ms in runs.values() for m in ms)
    if starved:
        row("4 load", f"{starved} of {rounds * len(runs)} rounds got < 90% of a CPU",
            "other load on the machine: CPU per wake-up inflates; rerun when it is quiet")
    plain = figures["plain trio"]
    for name in ("coschedd", "coschedd step_limit=0"):
        best, median = (figures[name][i] / plain[i] for i in (0, 1))
        row(f"4 {name} / plain", f"best {best:.3f}x, median {median:.3f}x",
            f"target <= 1.15x: {'ok' if best <= 1.15 else 'OVER'} (best)")


# --- [5] 100,000 short-lived children ----------------------------------------------

MARKS = (0, 10_000, 25_000, 50_000, 75_000, 100_000)
CHILDREN_JOB = """
from cosched import coro

async def child(task):
    return None

async def main(task):
    done = 0
    for mark in {marks}:
        while done < mark:
            batch = [task.spawn(child) for _ in range(min({batch}, mark - done))]
            for kid in batch:
                await kid.join()
            done += len(batch)
        await coro.yield_(done)   # suspended: the bench reads the RSS, then resumes
    return done
"""


def bench_children(batch: int = 100) -> None:
    print(f"\n[5] {MARKS[-1]:,} short-lived children, spawned {batch} at a time and joined")
    job = CHILDREN_JOB.format(marks=MARKS, batch=batch)
    with daemon({"children": job}) as (proc, sock, launched):
        wait_suspended(sock, "children")
        rss = {0: proc.memory_info().rss}
        for prev, mark in zip(MARKS, MARKS[1:]):
            t0 = time.perf_counter()
            answer = resume(sock, "children")
            took = time.perf_counter() - t0
            rss[mark] = proc.memory_info().rss
            if answer["values"] != [mark]:
                raise DaemonError(f"the children job should have yielded {mark}: {answer}")
            row(f"5 rss at {mark // 1000}k", f"{rss[mark] / 2**20:.1f} MiB",
                f"({(mark - prev) / took:,.0f} children/s, the resume call included)")
        row("5 growth 10k->100k", f"{(rss[100_000] - rss[10_000]) / 2**20:+.2f} MiB",
            f"(rss at 0: {rss[0] / 2**20:.1f} MiB)")
        status = json.loads(ctl(sock, "--json", "status")[1].stdout)
        root = json.loads(ctl(sock, "--json", "show", "children")[1].stdout)
        row("5 registry", f"{len(status['tasks'])} tasks listed",
            f"({status['daemon']['num_tasks']} alive; "
            f"the root has {len(root['children'])} children)")


# --- [6] wake-up cost with a follower of `coschedctl events -f` ----------------------

def follower(sock: Path) -> subprocess.Popen:
    """`coschedctl --json events -f -n 1`, subscribed once its first line is read."""
    proc = subprocess.Popen([tool("coschedctl"), "--socket", str(sock), "--json", "events",
                             "-f", "-n", "1"], stdout=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    if not ready or not proc.stdout.readline():
        proc.kill()
        raise DaemonError("coschedctl events -f gave no first line")
    return proc


def wakeup_followed(warmup: float, window: float, follow: bool) -> dict:
    """The wakeup job in a fresh coschedd, with or without one events follower; the
    measurement plus the number of events the follower got after subscribing."""
    job = WAKEUP_JOB.format(tasks=SLEEPING_TASKS, warmup=warmup, window=window)
    with daemon({"wakeup": job}) as (proc, sock, launched):
        wait_suspended(sock, "wakeup")
        watcher = follower(sock) if follow else None
        try:
            answer = resume(sock, "wakeup")
        finally:
            if watcher is not None:
                watcher.terminate()
                heard = len(watcher.communicate(timeout=30)[0].splitlines())
        if answer["outcome"] != "finished":
            raise DaemonError(f"the wakeup job did not finish: {answer}")
        return dict(answer["values"][0], events=heard if follow else 0)


def bench_follow(warmup: float, window: float, rounds: int = 3) -> None:
    print(f"\n[6] wake-up cost of {SLEEPING_TASKS:,} busy tasks (trio.sleep(0.001) loops) "
          f"with and without one `coschedctl events -f` follower, {window:g} s windows, "
          f"{rounds} rounds")
    subjects = {"no follower": False, "events -f follower": True}
    runs: dict[str, list[dict]] = {name: [] for name in subjects}
    names = list(subjects)
    for r in range(rounds):
        for name in names[r % 2:] + names[:r % 2]:
            m = wakeup_followed(warmup, window, subjects[name])
            runs[name].append(m)
            print(f"  round {r + 1} {name}: {per_wakeup(m):.2f} us/wake, "
                  f"{m['wakeups']:,} wake-ups, cpu {m['cpu']:.2f} s / wall {m['wall']:.2f} s"
                  + (f", {m['events']} events streamed" if subjects[name] else ""))
    figures = {}
    for name, ms in runs.items():
        costs = sorted(per_wakeup(m) for m in ms)
        figures[name] = (costs[0], statistics.median(costs))
        row(f"6 {name}", f"best {costs[0]:.2f} us/wake, median {figures[name][1]:.2f}")
    best, median = (figures["events -f follower"][i] / figures["no follower"][i] for i in (0, 1))
    row("6 follower / none", f"best {best:.3f}x, median {median:.3f}x",
        "(wake-ups are no state changes: the follower should cost nothing)")


PARTS = ("idle", "status", "downloader", "wakeup", "children", "follow")


def parts_arg(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PARTS]
    if unknown or not names:
        what = f"unknown part {', '.join(map(repr, unknown))}" if unknown else "no part given"
        raise argparse.ArgumentTypeError(f"{what}; choose from {', '.join(PARTS)}")
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 s idle windows instead of 10 s, 1.5 s wake-up windows instead "
                             "of 5 s, 1 downloader round instead of 3")
    parser.add_argument("--only", type=parts_arg, default=list(PARTS), metavar="PART,...",
                        help=f"run only these parts ({', '.join(PARTS)})")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited: 500 socketpairs need fds
    print(f"Python {platform.python_version()}, trio {trio.__version__}, psutil {psutil.__version__}")
    print(f"{platform.platform()}, {os.cpu_count()} CPUs, fd limit {hard}")
    status = 0
    benches = {"idle": partial(bench_idle, 3.0 if args.quick else 10.0),
               "status": bench_status,
               "downloader": partial(bench_downloader, 1 if args.quick else 3),
               "wakeup": partial(bench_wakeup, *((0.5, 1.5) if args.quick else (1.0, 5.0))),
               "children": bench_children,
               "follow": partial(bench_follow, *((0.5, 1.5) if args.quick else (1.0, 5.0)))}
    for bench in (benches[name] for name in PARTS if name in args.only):
        try:
            bench()
        except (DaemonError, psutil.Error) as e:
            print(f"  FAILED: {e}")
            status = 1
    width = max((len(name) for name, _, _ in RESULTS), default=0)
    vwidth = max((len(value) for _, value, _ in RESULTS), default=0)
    print("\nsummary\n" + "\n".join(f"  {n.ljust(width)}  {v.ljust(vwidth)}  {c}".rstrip()
                                     for n, v, c in RESULTS))
    return status


if __name__ == "__main__":
    sys.exit(main())
