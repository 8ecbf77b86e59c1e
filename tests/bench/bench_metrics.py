"""Benchmark: how fast /metrics and /healthz answer while the daemon is busy with `status`.

How to run it (not collected by pytest), with the project's virtualenv::

    python tests/bench/bench_metrics.py [--tasks 10000] [--seconds 10]

A real coschedd runs one job that spawns ``--tasks`` sleeping children, with
``[metrics] listen`` on a free loopback port. Then, for ``--seconds``, one
thread asks for ``status`` over and over (``cosched.ctl.call``, the whole
answer each time) while another sends ``GET /healthz`` and ``GET /metrics``
alternately, 20 ms apart, timing each request from connect to the last byte.
A first window without load gives the baseline; a second one runs the same
while another thread scrapes /metrics over and over (the metrics are rendered
in chunks, so /healthz should barely notice); the third runs it during status. Printed: count,
median, 99th percentile and maximum latency of each kind, per window, and how
many status answers came back (and their mean time).
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from test_daemon import BASE_CONFIG, Daemon, merged  # noqa: E402

from cosched.ctl import call  # noqa: E402

SPAWNER = """
    import trio

    async def child(task):
        await trio.sleep(100000)

    async def main(task):
        for i in range(task.config["n"]):
            task.spawn(child)
            if i % 500 == 0:
                await trio.sleep(0)
        await trio.sleep(100000)
"""


def timed_get(port: int, path: str) -> float:
    began = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status in (200, 503), resp.status
    return time.perf_counter() - began


def scrape_window(port: int, seconds: float) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"/healthz": [], "/metrics": []}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for path in out:
            out[path].append(timed_get(port, path))
            time.sleep(0.02)
    return out


def report(title: str, results: dict[str, list[float]]) -> None:
    for path, times in results.items():
        times = sorted(times)
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        print(f"{title:<22} {path:<9} n={len(times):<4} median {statistics.median(times)*1e3:7.1f} ms"
              f"  p99 {p99*1e3:7.1f} ms  max {times[-1]*1e3:7.1f} ms")


def under_load(ask, measure) -> list[float]:
    """Run ``measure()`` while a thread calls ``ask()`` over and over; the load's times."""
    stop, answers = threading.Event(), []

    def load() -> None:
        while not stop.is_set():
            began = time.perf_counter()
            ask()
            answers.append(time.perf_counter() - began)
    worker = threading.Thread(target=load)
    worker.start()
    try:
        measure()
    finally:
        stop.set()
        worker.join()
    return answers


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = merged(BASE_CONFIG, {"log": {"level": "info"},
                                      "metrics": {"listen": "127.0.0.1:0"},
                                      "job": {"many": {"config": {"n": args.tasks}}}})
        d = Daemon(Path(tmp) / "d", config, {"many": SPAWNER}, None)
        try:
            d.wait_ready()
            d.wait_status(lambda s: len(s["tasks"]) == args.tasks + 1, "all tasks", timeout=120)
            port = next(r["address"][1] for r in d.log_records()
                        if r.get("event") == "metrics listening")
            report("idle", scrape_window(port, args.seconds / 2))
            for title, ask in (("during metrics", lambda: timed_get(port, "/metrics")),
                               ("during status",
                                lambda: call(str(d.socket), "status", {}, 60))):
                answers = under_load(ask, lambda: report(title, scrape_window(port, args.seconds)))
                print(f"{title}: {len(answers)} answers to the load, mean "
                      f"{statistics.mean(answers)*1e3:.0f} ms ({args.tasks + 1} tasks)")
        finally:
            d.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
