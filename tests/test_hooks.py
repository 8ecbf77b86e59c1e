"""on_failure hooks (cosched.hooks) end to end: a real coschedd, real failing jobs."""

from __future__ import annotations

import pytest

from test_daemon import BASE_CONFIG, Daemon, merged

FAILER = """
    async def main(task):
        raise ValueError("disk full")
"""
# Shows what it was started for: task.trigger, yielded to the daemon.
NOTIFY = """
    from cosched import coro

    async def main(task):
        await coro.yield_(task.trigger)
"""
FAILING_NOTIFY = """
    async def main(task):
        raise RuntimeError(f"cannot notify about {task.trigger['task']}")
"""


def tasks_of(status, job):
    return [t for t in status["tasks"] if t["job"] == job]


# One daemon for the module: each test has its own failing job and handler.
JOBS = {"failer": FAILER, "notify": NOTIFY, "retrier": FAILER, "notify_retried": NOTIFY,
        "chained": FAILER, "failing_notify": FAILING_NOTIFY, "orphan": FAILER}
CONFIG = {"job": {
    "failer": {"restart": "no", "on_failure": "notify"},
    "notify": {"autostart": False, "enabled": False},
    "retrier": {"restart": "on-failure", "restart_delay": 0.01, "start_limit_burst": 3,
                "on_failure": "notify_retried"},
    "notify_retried": {"autostart": False},
    "chained": {"restart": "no", "on_failure": "failing_notify"},
    # a handler that fails, and names itself as its own handler: no chain, no loop
    "failing_notify": {"autostart": False, "restart": "no", "on_failure": "failing_notify"},
    "orphan": {"restart": "no", "on_failure": "nosuch"},
}}


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    daemon = Daemon(tmp_path_factory.mktemp("hooks"), merged(BASE_CONFIG, CONFIG), JOBS, None)
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        daemon.stop()


def events_of(d, kind):
    return [e for e in d.ok("events", "-n", "1000")["events"] if e["event"] == kind]


def test_a_task_that_fails_for_good_starts_its_handler_with_the_failure(d):
    failed = d.wait_task("failer", lambda t: t["state"] == "failed", "failed")
    handler = d.wait_task("notify", lambda t: t["state"] == "suspended", "started by the hook")
    trigger = handler["yielded"][0]
    assert {k: trigger[k] for k in ("event", "task", "id", "job", "error")} == {
        "event": "failed", "task": "failer", "id": failed["id"], "job": "failer",
        "error": "ValueError: disk full"}
    assert "ValueError: disk full" in trigger["traceback"] and isinstance(trigger["time"], float)
    assert d.ok("show", "notify")["trigger"]["id"] == failed["id"]
    started = [e for e in events_of(d, "hook-started") if e["job"] == "failer"]
    assert [(e["id"], e["handler"], e["handler_id"]) for e in started] == \
        [(failed["id"], "notify", handler["id"])]


def test_a_failure_that_is_retried_fires_only_when_the_start_limit_gives_up(d):
    d.wait_task("notify_retried", lambda t: t["state"] == "suspended", "started by the hook")
    retrier = d.wait_task("retrier", lambda t: t["state"] == "failed", "failed for good")
    assert retrier["restarts"] == 2
    assert len(tasks_of(d.status(), "notify_retried")) == 1
    assert "start limit hit" in d.ok("show", "notify_retried")["trigger"]["error"]
    jobs = {j["name"]: j["state"] for j in d.ok("jobs")["jobs"]}
    assert jobs["retrier"] == "failed (start limit)"


def test_a_failing_handler_does_not_start_another(d):
    d.wait_task("failing_notify", lambda t: t["state"] == "failed", "the handler failed")
    d.ok("start", "chained")  # a second failure: one more handler, no chain
    d.wait_status(lambda s: len([t for t in tasks_of(s, "failing_notify")
                                 if t["state"] == "failed"]) == 2, "two failed handlers")
    started = [e for e in events_of(d, "hook-started") if e["handler"] == "failing_notify"]
    assert [e["job"] for e in started] == ["chained", "chained"]
    assert any(r.get("event") == "a task started by a hook failed; its own on_failure is not run"
               for r in d.log_records())


def test_a_handler_that_is_not_loaded_is_reported(d):
    d.wait_task("orphan", lambda t: t["state"] == "failed", "failed")
    d.wait_status(lambda s: any(e["job"] == "orphan" for e in events_of(d, "hook-failed")),
                  "hook-failed")
    event = next(e for e in events_of(d, "hook-failed") if e["job"] == "orphan")
    assert (event["handler"], event["reason"]) == ("nosuch", "no such job")
