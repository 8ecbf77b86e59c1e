"""Benchmark of a real coschedd: idle cost, status with many tasks, the downloader.

How to run it (it is not collected by pytest), with the project's virtualenv::

    python tests/bench/bench_daemon.py            # 10 s idle windows
    python tests/bench/bench_daemon.py --quick    # 3 s idle windows

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
import shutil
import signal
import socket
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
def daemon(jobs: dict[str, str]):
    """A coschedd on a temporary folder with these job files.

    Yields (psutil.Process, socket path, launch time); stops it however the block ends."""
    with tempfile.TemporaryDirectory(prefix="cosched-bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "jobs").mkdir()
        for name, code in jobs.items():
            (tmp / "jobs" / f"{name}.py").write_text(code)
        (tmp / "coschedd.toml").write_text(
            f'[daemon]\njobs_dir = "{tmp / "jobs"}"\nruntime_dir = "{tmp / "run"}"\n'
            '[log]\nformat = "json"\nlevel = "warning"\n')
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s idle windows instead of 10 s")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited: 500 socketpairs need fds
    print(f"Python {platform.python_version()}, trio {trio.__version__}, psutil {psutil.__version__}")
    print(f"{platform.platform()}, {os.cpu_count()} CPUs, fd limit {hard}")
    status = 0
    for bench in (partial(bench_idle, 3.0 if args.quick else 10.0), bench_status,
                  partial(bench_downloader, 1 if args.quick else 3)):
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
