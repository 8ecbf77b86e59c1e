"""Benchmark of coschedd at scale: task cost and the control plane, against baselines.

How to run it (not collected by pytest), with the project's virtualenv::

    python tests/bench/bench_scale.py                 # 1k, 10k, 100k tasks, 3 runs each
    python tests/bench/bench_scale.py --sizes 1000,10000 --runs 1
    python tests/bench/bench_scale.py --million       # one daemon with 1,000,000 tasks

Every daemon is a real ``coschedd`` (step_limit 0, log level warning) on a
temporary folder, stopped with SIGTERM. For each size N, per run:

- ``rss/task``: (RSS with N parked tasks - RSS of the same daemon before the
  spawn) / N, against a plain trio program whose N tasks ``await
  trio.sleep(3600)`` (same measure). Target: at most 1.5x.
- ``spawn/task``: the job's own timing of its N ``task.spawn`` calls and the
  children's first steps (two checkpoints after the last: trio runs the tasks
  of a batch in a random order, so a fixed sleep there measured the first steps
  in half the runs only), against the plain program's N ``start_soon`` and
  first steps, timed alike. Target:
  at most 2x. ``spawn cpu`` is the same window in CPU time of the whole
  process (the daemon's: every thread, the history writer's too), which time
  the VM gives to others does not inflate.
- ``start``: launch of the spawn until ``status --json`` shows all N (wall),
  against the plain program's start. ``gc`` is the longest collector pause
  the daemon measured (``daemon.gc`` in status), after start and after stop
  (the daemon logs its collector figures, "supervisor stopped", when it stops).
- ``status``/``status --json``: the whole ``coschedctl`` command, against the
  floor: ``python -c pass`` plus ``json.dumps`` of the same answer in this
  process. Target: at most 1.5x.
- ``stall``: the longest round trip of ``ping`` requests sent back to back on
  another connection, by a process of its own, while one ``status --json`` runs
  (its output goes to /dev/null: on two cores the bench reading it would be one
  more busy process) (the loop's longest block, as a client sees it). Target: 50 ms. ``block``: the longest run of
  the daemon's event loop between two I/O waits in that time, as the daemon
  measured it (``daemon.loop``; 0 when none reached 20 ms). Target: 20 ms.
- ``filtered``: ``status --state suspended`` matching none of the N.
- ``ping``: ``coschedctl ping`` against ``python -c pass`` (target 2x).

Ratios are printed with min/median over the runs; absolute figures drift on a
shared machine, ratios less so.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil

PY = sys.executable
BIN = Path(PY).parent
COSCHEDD, COSCHEDCTL = str(BIN / "coschedd"), str(BIN / "coschedctl")

SPAWNER = """
    import time

    import trio

    async def child(task):
        await trio.sleep(3600)

    async def main(task):
        began, cpu = time.perf_counter(), time.process_time()
        for i in range(task.config["n"]):
            task.spawn(child)
            if i % 1000 == 999:
                await trio.sleep(0)   # let the daemon answer meanwhile
        await trio.sleep(0)           # the last children's first steps (as the plain program):
        await trio.sleep(0)           # they run in the batch after the spawn, in either order
        task.state["spawn_cpu"] = time.process_time() - cpu
        task.state["spawn_seconds"] = time.perf_counter() - began
        await trio.sleep(3600)
"""

PLAIN = """
import resource, sys, time, trio, psutil
N = int(sys.argv[1])
async def sleeper():
    await trio.sleep(3600)
async def main():
    p = psutil.Process()
    await trio.sleep(0.2)
    before = p.memory_info().rss
    began, cpu = time.perf_counter(), time.process_time()
    async with trio.open_nursery() as n:
        for i in range(N):
            n.start_soon(sleeper)
            if i % 1000 == 999:
                await trio.sleep(0)
        await trio.sleep(0)
        await trio.sleep(0)
        cpu = time.process_time() - cpu
        spawn = time.perf_counter() - began
        await trio.sleep(0.5)
        print(spawn, p.memory_info().rss - before, cpu, flush=True)
        n.cancel_scope.cancel()
trio.run(main)
"""


def ctl(sock: Path, *args: str, timeout: float = 600,
        kept: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    """The time of a whole coschedctl command, and its output (unless not ``kept``: then
    it goes to /dev/null, so that reading it is no work of this process)."""
    began = time.perf_counter()
    out = subprocess.PIPE if kept else subprocess.DEVNULL
    proc = subprocess.run([COSCHEDCTL, "--socket", str(sock), "--timeout", str(timeout), *args],
                          stdout=out, stderr=subprocess.PIPE, text=True, timeout=timeout + 30)
    return time.perf_counter() - began, proc


def ctl_json(sock: Path, *args: str) -> dict:
    _, proc = ctl(sock, "--json", *args)
    if proc.returncode:
        raise RuntimeError(f"coschedctl {args}: {proc.stderr}")
    return json.loads(proc.stdout)


class Daemon:
    def __init__(self, n: int):
        self.dir = Path(tempfile.mkdtemp(prefix="cosched-scale-"))
        os.chmod(self.dir, 0o755)
        (self.dir / "jobs").mkdir()
        (self.dir / "jobs" / "many.py").write_text(textwrap.dedent(SPAWNER))
        (self.dir / "coschedd.toml").write_text(textwrap.dedent(f"""
            [daemon]
            jobs_dir = "jobs"
            runtime_dir = "run"
            state_dir = "state"
            stop_timeout = 60
            [log]
            format = "json"
            level = "warning"
            [jobs]
            restart = "no"
            step_limit = 0
            autostart = false
            [job.many]
            config = {{ n = {n} }}
        """))
        self.sock = self.dir / "run" / "coschedd.sock"
        self.log = open(self.dir / "log", "wb")
        self.proc = subprocess.Popen([COSCHEDD, "--config", str(self.dir / "coschedd.toml")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + 30
        while ctl(self.sock, "ping")[1].returncode:
            if time.monotonic() > deadline:
                raise RuntimeError("coschedd did not start")
            time.sleep(0.05)

    def stop(self) -> float:
        began = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(600)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        return time.perf_counter() - began

    def stop_gc(self) -> float:
        for line in (self.dir / "log").read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if str(rec.get("event")).startswith("supervisor stopped") and "gc" in rec:
                return max(rec["gc"]["longest_pause"])
        return 0.0   # logged at info only (level warning here): no pause over 100 ms


PING_LOOP = """
import selectors, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rb")
sel = selectors.DefaultSelector()
sel.register(sys.stdin, selectors.EVENT_READ)
print("ready", flush=True)
i, longest = 0, 0.0
while not sel.select(0):
    i += 1
    began = time.perf_counter()
    s.sendall(b'{"id": %d, "cmd": "ping"}\\n' % i)
    f.readline()
    longest = max(longest, time.perf_counter() - began)
print(longest, flush=True)
"""


class Pinger:
    """Pings back to back on one connection, from a process of its own (the bench's
    reading of a status answer holds its GIL, which must not lengthen a round trip),
    until stopped; then the longest round trip."""

    def __init__(self, sock: Path):
        self.proc = subprocess.Popen([PY, "-c", PING_LOOP, str(sock)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline() == "ready\n"

    def stop(self) -> float:
        out, _ = self.proc.communicate("stop\n", timeout=60)
        return float(out)


def python_pass() -> float:
    return min(timed([PY, "-c", "pass"]) for _ in range(5))


def timed(cmd: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(cmd, capture_output=True, check=True)
    return time.perf_counter() - began


def plain_trio(n: int) -> tuple[float, float, float]:
    """(spawn seconds, RSS bytes, spawn CPU seconds) of the plain program."""
    out = subprocess.run([PY, "-c", PLAIN, str(n)], capture_output=True, text=True, check=True)
    spawn, rss, cpu = out.stdout.split()
    return float(spawn), float(rss), float(cpu)


def one_run(n: int, floor_start: float) -> dict:
    d = Daemon(n)
    try:
        base = d.ps.memory_info().rss
        began = time.perf_counter()
        ctl(d.sock, "start", "many")
        while True:   # small requests only: a full status would inflate the RSS measured
            s = ctl_json(d.sock, "status", "--state", "suspended")   # (the children are "many"'s)
            if s["daemon"]["num_tasks"] >= n + 1 and "spawn_seconds" in (
                    ctl_json(d.sock, "show", "many").get("task_state") or {}):
                break
            time.sleep(0.2)
        start = time.perf_counter() - began
        spawned = ctl_json(d.sock, "show", "many")["task_state"]
        spawn, spawn_cpu = spawned["spawn_seconds"], spawned["spawn_cpu"]
        time.sleep(0.5)
        rss = d.ps.memory_info().rss - base
        start_gc = max(ctl_json(d.sock, "status", "--state", "suspended")["daemon"]["gc"]["longest_pause"])
        table = min(ctl(d.sock, "status")[0] for _ in range(3))
        raw, data = None, None
        for _ in range(3):
            t, proc = ctl(d.sock, "--json", "status")
            raw = t if raw is None else min(raw, t)
            data = proc.stdout
        obj = json.loads(data)
        dumps_began = time.perf_counter()
        json.dumps(obj)
        floor = floor_start + time.perf_counter() - dumps_began
        pinger = Pinger(d.sock)
        time.sleep(0.2)
        during = time.monotonic()   # CLOCK_MONOTONIC: the daemon's clock too
        ctl(d.sock, "--json", "status", kept=False)   # (two cores: no fourth busy process)
        stall = pinger.stop()
        loop = ctl_json(d.sock, "status", "--state", "suspended")["daemon"]["loop"]
        block = max([s for at, s in loop["recent_long"] if at >= during], default=0.0)
        filtered = min(ctl(d.sock, "status", "--state", "suspended")[0] for _ in range(3))
        ping = min(ctl(d.sock, "ping")[0] for _ in range(5))
        stop_time = d.stop()
        return {"rss": rss / n, "spawn": spawn / n, "spawn_cpu": spawn_cpu / n, "start": start,
                "start_gc": start_gc,
                "table": table, "json": raw, "floor": floor, "stall": stall, "block": block,
                "filtered": filtered, "ping": ping, "stop": stop_time, "stop_gc": d.stop_gc()}
    finally:
        if d.proc.poll() is None:
            d.stop()


def ratio_line(name: str, ours: list[float], base: list[float], unit: str, scale: float) -> None:
    r = [a / b for a, b in zip(ours, base)]
    print(f"  {name:<22} {statistics.median(ours) * scale:10.2f} {unit:<3} vs "
          f"{statistics.median(base) * scale:10.2f} {unit:<3}  ratio min {min(r):.2f} "
          f"median {statistics.median(r):.2f}")


def plain_line(name: str, values: list[float], unit: str, scale: float) -> None:
    print(f"  {name:<22} min {min(values) * scale:10.2f} {unit}  median "
          f"{statistics.median(values) * scale:10.2f} {unit}")


def bench_size(n: int, runs: int, floor_start: float) -> None:
    ours, plain = [], []
    for _ in range(runs):   # alternated, so that a slow spell of the machine hits both
        ours.append(one_run(n, floor_start))
        plain.append(plain_trio(n))
    print(f"\n{n:,} parked tasks ({runs} runs)")
    ratio_line("rss per task", [o["rss"] for o in ours], [p[1] / n for p in plain], "KB", 1e-3)
    ratio_line("spawn per task", [o["spawn"] for o in ours], [p[0] / n for p in plain], "us", 1e6)
    ratio_line("spawn cpu per task", [o["spawn_cpu"] for o in ours], [p[2] / n for p in plain],
               "us", 1e6)
    ratio_line("status (table)", [o["table"] for o in ours], [o["floor"] for o in ours], "ms", 1e3)
    ratio_line("status --json", [o["json"] for o in ours], [o["floor"] for o in ours], "ms", 1e3)
    ratio_line("ping", [o["ping"] for o in ours], [floor_start] * runs, "ms", 1e3)
    ratio_line("start (wall)", [o["start"] for o in ours], [p[0] for p in plain], "s", 1)
    plain_line("stop (SIGTERM)", [o["stop"] for o in ours], "s", 1)
    plain_line("longest gc, start", [o["start_gc"] for o in ours], "ms", 1e3)
    plain_line("longest gc, stop", [o["stop_gc"] for o in ours], "ms", 1e3)
    plain_line("ping rtt during status", [o["stall"] for o in ours], "ms", 1e3)
    plain_line("loop block in status", [o["block"] for o in ours], "ms", 1e3)
    plain_line("status --state (0 hit)", [o["filtered"] for o in ours], "ms", 1e3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--million", action="store_true", help="one run with 1,000,000 tasks")
    args = ap.parse_args()
    # As installed: pip writes cosched's .pyc files, python -c pass has the standard
    # library's. Without them (an editable install under PYTHONDONTWRITEBYTECODE=1)
    # every coschedctl run would compile its modules first, and the ratios show that.
    import compileall
    compileall.compile_dir(str(Path(__file__).resolve().parents[2] / "cosched"), quiet=1)
    floor_start = python_pass()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus; python -c pass: "
          f"{floor_start * 1e3:.1f} ms")
    if args.million:
        o = one_run(1_000_000, floor_start)
        print(f"\n1,000,000 parked tasks: rss {o['rss'] * 1e6 / 2**30:.2f} GiB in all "
              f"({o['rss'] / 1e3:.2f} KB per task), start {o['start']:.1f} s, "
              f"status --json {o['json']:.1f} s (floor {o['floor']:.1f} s), "
              f"filtered status {o['filtered'] * 1e3:.0f} ms, longest ping rtt during status "
              f"{o['stall'] * 1e3:.0f} ms (longest loop block the daemon measured then "
              f"{o['block'] * 1e3:.0f} ms), longest gc pause {o['start_gc'] * 1e3:.0f} ms, "
              f"stop {o['stop']:.1f} s (gc {o['stop_gc'] * 1e3:.0f} ms)")
        return 0
    for n in map(int, args.sizes.split(",")):
        bench_size(n, args.runs, floor_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
