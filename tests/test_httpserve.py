"""The HTTP endpoint of a real coschedd: /metrics, /healthz, /livez, and its bad input."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from test_daemon import BASE_CONFIG, COSCHEDCTL, SLEEPER, WAIT, Daemon, daemon, merged  # noqa: F401

BROKEN = "async def main(task)\n"
STALLER = """
    import time
    from pathlib import Path

    import trio

    async def main(task):
        await trio.sleep(0.2)
        Path(task.config["marker"]).write_text("stalling")
        time.sleep(4)            # holds the event loop (step_limit is 30 s here)
        await trio.sleep(1000)
"""
LISTEN = {"metrics": {"listen": "127.0.0.1:0"}}


def http_port(d) -> int:
    """The port the daemon logged for its metrics listener (it binds port 0)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        for rec in d.log_records():
            if rec.get("event") == "metrics listening":
                return rec["address"][1]
        time.sleep(0.05)
    pytest.fail(f"no 'metrics listening' line\n{d.log_tail()}")


def get(port: int, path: str, method: str = "GET", timeout: float = WAIT):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode()
    finally:
        conn.close()


def test_metrics_over_http(daemon):
    d = daemon(jobs={"sleeper": SLEEPER}, config=LISTEN)
    port = http_port(d)
    status, headers, body = get(port, "/metrics")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert int(headers["Content-Length"]) == len(body.encode())
    fams = {f.name: f for f in text_string_to_metric_families(body)}
    assert {s.labels["job"] for s in fams["cosched_job_loaded"].samples} == {"sleeper"}
    status, headers, body = get(port, "/metrics", method="HEAD")
    assert status == 200 and body == "" and int(headers["Content-Length"]) > 100


def test_healthz_is_not_ready_while_a_job_failed_to_load(daemon):
    d = daemon(jobs={"sleeper": SLEEPER, "broken": BROKEN}, config=LISTEN)
    port = http_port(d)
    status, _, body = get(port, "/healthz")
    assert status == 503
    assert "job broken failed to load: syntax error at line 1" in body
    assert get(port, "/livez")[:3:2] == (200, "ok\n")   # the loop answers all the same
    (d.jobs_dir / "broken.py").unlink()
    d.wait_status(lambda s: not s["job_errors"], "the broken job is gone")
    assert get(port, "/healthz")[::2] == (200, "ok\n")


def test_healthz_answers_from_the_event_loop(daemon, tmp_path):
    """While a step holds the loop, /healthz gives no answer; ping still does (the
    stall desk answers it from a thread), so only the HTTP check shows the stall."""
    marker = tmp_path / "stalling"
    d = daemon(jobs={"staller": STALLER}, config=merged(LISTEN, {
        "jobs": {"step_limit": 30}, "job": {"staller": {"config": {"marker": str(marker)}}}}))
    port = http_port(d)
    deadline = time.monotonic() + WAIT
    while not marker.exists():
        assert time.monotonic() < deadline, d.log_tail()
        time.sleep(0.02)
    with pytest.raises(TimeoutError):
        get(port, "/healthz", timeout=1.0)
    assert d.ctl("ping")[0] == 0
    deadline = time.monotonic() + WAIT
    while get(port, "/healthz", timeout=WAIT)[0] != 200:  # answered once the step ends
        assert time.monotonic() < deadline
        time.sleep(0.1)


@pytest.mark.parametrize("request_bytes, status", [
    (b"POST /metrics HTTP/1.1\r\n\r\n", 405),
    (b"GET /nope HTTP/1.1\r\n\r\n", 404),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /metrics SPDY/3\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
])
def test_bad_requests_get_clear_answers(daemon, request_bytes, status):
    d = daemon(config=LISTEN)
    port = http_port(d)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(request_bytes)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    assert d.ctl("ping")[0] == 0


def test_a_metrics_port_in_use_stops_the_daemon_with_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = Daemon(tmp_path / "d", merged(BASE_CONFIG, {"metrics": {
            "listen": f"127.0.0.1:{port}"}}), {"sleeper": SLEEPER}, None)
        try:
            rc = d.wait_exit()
            log = d.log_text()
        finally:
            d.stop()
    assert rc == 1
    assert (f"coschedd: cannot listen for metrics on 127.0.0.1:{port}: Address already in "
            "use (another program listens there; choose another port in metrics.listen)"
            ) in log
    assert not d.socket.exists()


def test_a_scrape_during_a_heavy_status_is_answered(daemon):
    """5,000 tasks; scrapes while status runs over and over. (How fast: see
    tests/bench/bench_metrics.py; tests only check that every scrape is answered.)"""
    many = """
        import trio

        async def child(task):
            await trio.sleep(1000)

        async def main(task):
            for i in range(5000):
                task.spawn(child)
            await trio.sleep(1000)
    """
    d = daemon(jobs={"many": many}, config=LISTEN)
    port = http_port(d)
    d.wait_status(lambda s: len(s["tasks"]) == 5001, "5001 tasks")
    statuses = [subprocess.Popen([COSCHEDCTL, "--socket", str(d.socket), "status", "--json"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                for _ in range(3)]
    try:
        for _ in range(5):
            status, _, body = get(port, "/metrics")
            assert status == 200
            assert 'cosched_tasks{job="many",state="waiting"} 5001' in body
    finally:
        for p in statuses:
            out, _ = p.communicate(timeout=60)
            assert p.returncode == 0 and len(json.loads(out)["tasks"]) == 5001
