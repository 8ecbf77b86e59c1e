"""Every control request against one daemon of many tasks: does any hold the event loop?

How to run it (not collected by pytest), with the project's virtualenv::

    python tests/bench/bench_requests.py                # 100,000 tasks
    python tests/bench/bench_requests.py --tasks 10000

One real ``coschedd`` (the one bench_scale.py starts: step_limit 0, log level
warning) runs a job whose children each print a line and log one record, so
every task has a log buffer and the history holds a start per task. Then each
request of the table below is made once with ``coschedctl --json`` (its output
to /dev/null), and the daemon's own measure of its event loop (``daemon.loop``:
every run between two I/O waits of 20 ms or more) says the longest block while
it ran. Target: none (no request holds the loop for 20 ms; the answer's wall
time grows with what it holds, the loop's blocks must not). A SIGHUP reload
ends the table.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scale  # noqa: E402  (its Daemon and coschedctl helpers)

PRINTER = """
    import time

    import trio

    async def child(task, i):
        print("hello from", i)
        task.log.info("child up", i=i)
        await trio.sleep(3600)

    async def main(task):
        began, cpu = time.perf_counter(), time.process_time()
        for i in range(task.config["n"]):
            task.spawn(child, i)
            if i % 1000 == 999:
                await trio.sleep(0)
        await trio.sleep(0.05)
        task.state["spawn_cpu"] = time.process_time() - cpu
        task.state["spawn_seconds"] = time.perf_counter() - began
        await trio.sleep(3600)
"""


def requests(n: int) -> list[list[str]]:
    mid, third = str(n // 2), str(n // 3)
    return [["ping"], ["status"], ["status", "--state", "waiting"], ["status", "--job", "many"],
            ["status", "--limit", "5"], ["show", "many"], ["show", mid], ["jobs"], ["metrics"],
            ["logs", "many"], ["logs", "many", "-n", "5000"], ["logs", mid], ["events"],
            ["events", "--job", "many", "-n", "1000"], ["tree"], ["tree", mid],
            ["history", "many"], ["history", mid], ["history", "nosuch"],
            ["history", "--limit", "5000"], ["reload"], ["kill", mid], ["restart", third],
            ["status", "--state", "killed"]]


def blocks_since(d: bench_scale.Daemon, since: float) -> list[float]:
    """The loop's blocks (seconds) the daemon measured since ``since`` (CLOCK_MONOTONIC)."""
    loop = bench_scale.ctl_json(d.sock, "status", "--state", "suspended")["daemon"]["loop"]
    return [s for at, s in loop["recent_long"] if at >= since]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=100_000)
    n = ap.parse_args().tasks
    bench_scale.SPAWNER = PRINTER
    d = bench_scale.Daemon(n)
    worst = 0.0
    try:
        bench_scale.ctl(d.sock, "start", "many")
        while "spawn_seconds" not in (bench_scale.ctl_json(d.sock, "show", "many")
                                      .get("task_state") or {}):
            time.sleep(0.5)
        time.sleep(2)   # the history writer's last batch
        print(f"{n:,} tasks, each with a log buffer and a recorded start\n")
        print(f"  {'request':<40} {'wall':>8}  longest loop block")
        for args in requests(n):
            since = time.monotonic()
            wall, proc = bench_scale.ctl(d.sock, "--json", *args, kept=False)
            found = blocks_since(d, since)
            worst = max([worst, *found])
            block = f"{max(found) * 1e3:.0f} ms ({len(found)})" if found else "none >= 20 ms"
            print(f"  {' '.join(args):<40} {wall * 1e3:6.0f} ms  {block}"
                  + ("" if proc.returncode in (0, 1) else f"  exit {proc.returncode}"), flush=True)
        since = time.monotonic()
        d.proc.send_signal(signal.SIGHUP)
        time.sleep(3)
        found = blocks_since(d, since)
        worst = max([worst, *found])
        print(f"  {'SIGHUP (reload)':<40} {'':>8}  "
              + (f"{max(found) * 1e3:.0f} ms" if found else "none >= 20 ms"))
    finally:
        d.stop()
    print(f"\nlongest block: {worst * 1e3:.0f} ms" if worst else "\nno block of 20 ms or more")
    return 0


if __name__ == "__main__":
    sys.exit(main())
