"""Reloading the config file (cosched.reconfig): the comparison in process, and
`coschedctl reload` / SIGHUP against a real coschedd whose config file is rewritten."""

from __future__ import annotations

import signal
from pathlib import Path

from cosched.config import parse_config
from cosched.reconfig import job_changes, plan
from test_daemon import BASE_CONFIG, SLEEPER, daemon, merged, render_toml  # noqa: F401

# Yields the word of its config, so that the test sees which config a life got.
SAYER = """
    from cosched import coro

    async def main(task):
        await coro.yield_(task.config.get("word"))
"""


def config_of(text: str, base: Path = Path("/srv/c")):
    import tomllib
    return parse_config(tomllib.loads(text), base, environ={})


def test_plan_applies_live_keys_and_keeps_restart_only_ones():
    old = config_of('[control]\nsocket = "/run/a.sock"\n[log]\nlevel = "info"\n'
                    '[job.a]\nconfig = {w = 1}\n')
    new = config_of('[control]\nsocket = "/run/b.sock"\nmax_connections = 100\n'
                    '[log]\nlevel = "debug"\n[job.a]\nconfig = {w = 2}\n[job.b]\nautostart = false\n')
    p = plan(old, new)
    assert p.needs_restart == ["control.socket"]
    assert set(p.changed) == {"control.max_connections", "log.level", "job.a", "job.b"}
    assert p.config.socket == Path("/run/a.sock")          # kept until a restart
    assert (p.config.max_connections, p.config.log_level) == (100, "debug")
    assert plan(old, old) == (old, [], [])


def test_job_changes_restart_stop_or_start_only_changed_jobs():
    old = config_of('[job.a]\nconfig = {w = 1}\n[job.b]\nenabled = false\n'
                    '[job.c]\nconfig = {x = 1}\n[job.d]\nconfig = {y = 1}\n')
    new = config_of('[job.a]\nconfig = {w = 2}\n[job.b]\nenabled = true\n'
                    '[job.c]\nenabled = false\nconfig = {x = 1}\n[job.d]\nconfig = {y = 1}\n')
    running = {"a": True, "b": False, "c": True, "d": True, "e": True}
    assert job_changes(old, new, "abcde", running) == {"a": "restart", "b": "start", "c": "stop"}


def rewrite(d, extra: dict) -> None:
    d.config_path.write_text(render_toml(merged(BASE_CONFIG, extra)))


def test_reload_restarts_the_job_whose_config_changed_and_leaves_the_others(daemon):
    base = {"job": {"sayer": {"config": {"word": "one"}}}}
    d = daemon(jobs={"sayer": SAYER, "steady": SLEEPER}, config=base)
    sayer = d.wait_task("sayer", lambda t: t["yielded"] == ["one"], "says one")
    steady = d.wait_task("steady", lambda t: t["state"] == "waiting", "waiting")
    rewrite(d, {"job": {"sayer": {"config": {"word": "two"}}},
                "control": {"socket": str(d.root / "elsewhere.sock")}})
    report = d.ok("reload")
    assert report["restarted"] == ["sayer"]
    assert "job.sayer" in report["config"]["changed"]
    assert report["config"]["needs_restart"] == ["control.socket"]
    again = d.wait_task("sayer", lambda t: t["yielded"] == ["two"], "says two")
    assert (again["id"], again["restarts"]) == (sayer["id"], 1)
    now = next(t for t in d.status()["tasks"] if t["id"] == steady["id"])
    assert (now["state"], now["restarts"], now["steps"]) == ("waiting", 0, steady["steps"])
    assert not [e for e in d.ok("events", "-n", "100")["events"]
                if e.get("task") == "steady" and e["event"] != "started"]
    rc, out, _ = d.ctl("reload", json_output=False)  # nothing changed since: nothing restarts
    assert rc == 0 and "restarted" not in out
    assert "control.socket" in out and "restart of coschedd" in out


def test_a_broken_config_is_refused_and_the_old_one_stays(daemon):
    d = daemon(jobs={"sayer": SAYER}, config={"job": {"sayer": {"config": {"word": "one"}}}})
    sayer = d.wait_task("sayer", lambda t: t["yielded"] == ["one"], "says one")
    good = d.config_path.read_text()
    rewrite(d, {"job": {"sayer": {"config": {"word": "two"}}}, "daemon": {"bogus": 1}})
    rc, out, err = d.ctl("reload", json_output=False)
    assert rc == 1 and "config-error" in err and "bogus" in err, err
    assert "configuration in force is unchanged" in err
    rc, out, err = d.ctl("reload")  # --json: the error on stdout too
    assert rc == 1 and '"config-error"' in out
    d.config_path.write_text("this is [not toml\n")
    d.signal(signal.SIGHUP)
    d.wait_status(lambda s: any(r.get("event") == "reload refused: the configuration in "
                                "force is unchanged" for r in d.log_records()), "SIGHUP refused")
    assert d.proc.poll() is None
    still = next(t for t in d.status()["tasks"] if t["id"] == sayer["id"])
    assert (still["yielded"], still["restarts"]) == (["one"], 0)
    # fixed: a SIGHUP now reloads, and the new log level takes effect at once
    d.config_path.write_text(good.replace('word = "one"', 'word = "two"')
                             .replace('level = "debug"', 'level = "warning"'))
    d.signal(signal.SIGHUP)
    d.wait_task("sayer", lambda t: t["yielded"] == ["two"], "says two after SIGHUP")
    lines = len(d.log_records())
    d.ok("start", "sayer")  # would log "task suspended" at info
    d.wait_status(lambda s: len([t for t in s["tasks"] if t["state"] == "suspended"]) == 2,
                  "two sayers")
    assert [r for r in d.log_records()[lines:] if r.get("level") in ("debug", "info")] == []
