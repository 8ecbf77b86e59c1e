"""on_failure hooks (cosched.hooks) end to end: a real coschedd, real failing jobs."""

from __future__ import annotations

from test_daemon import daemon  # noqa: F401

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


def test_a_task_that_fails_for_good_starts_its_handler_with_the_failure(daemon):
    d = daemon(jobs={"failer": FAILER, "notify": NOTIFY},
               config={"job": {"failer": {"restart": "no", "on_failure": "notify"},
                               "notify": {"autostart": False, "enabled": False}}})
    failed = d.wait_task("failer", lambda t: t["state"] == "failed", "failed")
    handler = d.wait_task("notify", lambda t: t["state"] == "suspended", "started by the hook")
    trigger = handler["yielded"][0]
    assert {k: trigger[k] for k in ("event", "task", "id", "job", "error")} == {
        "event": "failed", "task": "failer", "id": failed["id"], "job": "failer",
        "error": "ValueError: disk full"}
    assert "ValueError: disk full" in trigger["traceback"] and isinstance(trigger["time"], float)
    assert d.ok("show", "notify")["trigger"]["id"] == failed["id"]
    started = [e for e in d.ok("events", "-n", "100")["events"] if e["event"] == "hook-started"]
    assert [(e["job"], e["id"], e["handler"], e["handler_id"]) for e in started] == \
        [("failer", failed["id"], "notify", handler["id"])]


def test_a_failure_that_is_retried_fires_only_when_the_start_limit_gives_up(daemon):
    d = daemon(jobs={"failer": FAILER, "notify": NOTIFY},
               config={"job": {"failer": {"restart": "on-failure", "restart_delay": 0.01,
                                          "start_limit_burst": 3, "on_failure": "notify"},
                               "notify": {"autostart": False}}})
    d.wait_task("notify", lambda t: t["state"] == "suspended", "started by the hook")
    failer = d.wait_task("failer", lambda t: t["state"] == "failed", "failed for good")
    assert failer["restarts"] == 2
    assert len(tasks_of(d.status(), "notify")) == 1
    assert "start limit hit" in d.ok("show", "notify")["trigger"]["error"]
    jobs = {j["name"]: j["state"] for j in d.ok("jobs")["jobs"]}
    assert jobs["failer"] == "failed (start limit)"


def test_a_failing_handler_does_not_start_another(daemon):
    d = daemon(jobs={"failer": FAILER, "notify": FAILING_NOTIFY},
               config={"jobs": {"restart": "no", "on_failure": "notify"},
                       "job": {"notify": {"autostart": False}}})
    d.wait_task("notify", lambda t: t["state"] == "failed", "the handler failed")
    d.ok("start", "failer")  # a second failure: one more handler, no chain
    d.wait_status(lambda s: len([t for t in tasks_of(s, "notify") if t["state"] == "failed"])
                  == 2, "two failed handlers")
    events = d.ok("events", "-n", "200")["events"]
    assert sum(e["event"] == "hook-started" for e in events) == 2
    assert all(e["job"] == "failer" for e in events if e["event"] == "hook-started")
    assert any(r.get("event") == "a task started by a hook failed; its own on_failure is not run"
               for r in d.log_records())


def test_a_handler_that_is_not_loaded_is_reported(daemon):
    d = daemon(jobs={"failer": FAILER},
               config={"job": {"failer": {"restart": "no", "on_failure": "nosuch"}}})
    d.wait_task("failer", lambda t: t["state"] == "failed", "failed")
    d.wait_status(lambda s: any(e["event"] == "hook-failed"
                                for e in d.ok("events", "-n", "50")["events"]), "hook-failed")
    event = next(e for e in d.ok("events", "-n", "50")["events"] if e["event"] == "hook-failed")
    assert (event["handler"], event["reason"]) == ("nosuch", "no such job")
