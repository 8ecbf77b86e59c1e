"""Timed jobs: a real Supervisor and real job files on trio's MockClock (wall time injected),
and end to end with a real coschedd on the real clock."""

from __future__ import annotations

import time
from datetime import datetime, UTC
from pathlib import Path
from textwrap import dedent

import pytest
import trio
import trio.testing

from cosched.config import load_config
from cosched.recorder import Recorder
from cosched.store import Store, history_query
from cosched.supervisor import Supervisor
from cosched.timers import Timers

from test_daemon import WAIT, daemon, newest  # noqa: F401 - the fixture

QUICK = "async def main(task):\n    return task.id\n"
SLOW = "import trio\n\nasync def main(task):\n    await trio.sleep({seconds})\n"
BASE = datetime(2024, 1, 1, 0, 3, tzinfo=UTC).timestamp()   # a Monday, 00:03 UTC


def supervisor(tmp_path: Path, jobs: dict[str, str], job_tables: str) -> Supervisor:
    (tmp_path / "jobs").mkdir(exist_ok=True)
    for name, source in jobs.items():
        (tmp_path / "jobs" / f"{name}.py").write_text(dedent(source))
    (tmp_path / "c.toml").write_text('[daemon]\njobs_dir = "jobs"\nruntime_dir = "run"\n'
                                     'state_dir = "state"\n[jobs]\nrestart = "no"\n'
                                     + dedent(job_tables))
    return Supervisor(load_config(tmp_path / "c.toml"))


def run_virtual(tmp_path, jobs, tables, seconds, *, base=BASE, with_store=False):
    """Run the supervisor and its timers for ``seconds`` of virtual time; the virtual
    times (since the start) at which tasks started, per job, and the recorder's history."""
    sup = supervisor(tmp_path, jobs, tables)
    starts: dict[str, list[float]] = {}
    out = {}

    async def main():
        recorder = None
        if with_store:
            store = Store(sup.config.state_dir)
            initial = store.open()
            store.start()
            recorder = Recorder(store, initial, sup, history=True)
        timers = Timers(sup, recorder=recorder, wall=lambda: base + trio.current_time())
        sup.events.subscribe(lambda e: e["event"] == "started" and starts.setdefault(
            e["job"], []).append(round(trio.current_time(), 3)))
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            await nursery.start(timers.run)
            await trio.sleep(seconds)
            out["jobs"] = sup.jobs()["jobs"]
            out["starts"] = {job: list(times) for job, times in starts.items()}
            for name in list(sup.job_table):   # what follows must not let more runs start
                timers._disarm(name)
            if recorder is not None:   # (virtual time goes on while the writer thread works)
                out["history"] = await recorder.read(history_query(None, None, 1000), "h")
                await recorder.close(5)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return out["starts"], out


def test_every_starts_a_task_at_each_interval(tmp_path):
    starts, out = run_virtual(tmp_path, {"tick": QUICK}, '[job.tick]\nevery = "30s"\n', 100)
    assert starts == {"tick": [30.0, 60.0, 90.0]}   # nothing at load: autostart is not used
    (row,) = out["jobs"]
    assert row["schedule"] == "every 30s"
    assert row["next_run"] == pytest.approx(BASE + 120)
    assert row["last_run"] == pytest.approx(BASE + 90) and row["last_task"] == 3


def test_cron_schedule_on_a_fake_clock(tmp_path):
    starts, out = run_virtual(tmp_path, {"five": QUICK, "hourly": QUICK},
                              '[job.five]\nschedule = "*/5 * * * *"\ntimezone = "UTC"\n'
                              '[job.hourly]\nschedule = "@hourly"\ntimezone = "UTC"\n', 3600)
    # 00:03 + 120 s = 00:05, then every 5 minutes; @hourly at 01:00 = 00:03 + 57 min
    assert starts["five"][:3] == [120.0, 420.0, 720.0] and len(starts["five"]) == 12
    assert starts["hourly"] == [57 * 60.0]
    five = next(r for r in out["jobs"] if r["name"] == "five")
    assert five["schedule"] == "*/5 * * * *" and five["next_run"] == BASE + 3720 - 60 * 3 + 180


def test_cron_follows_the_configured_time_zone(tmp_path):
    # 02:00 in Tokyo (UTC+9) is 17:00 UTC; BASE is 00:03 UTC
    starts, _ = run_virtual(tmp_path, {"tokyo": QUICK},
                            '[job.tokyo]\nschedule = "0 2 * * *"\ntimezone = "Asia/Tokyo"\n',
                            86400)
    assert starts == {"tokyo": [(17 * 60 - 3) * 60.0]}


@pytest.mark.parametrize("overlap, expected", [
    ("skip", [30.0, 120.0]),                 # 60 and 90 find the first run alive
    ("queue", [30.0, 100.0, 170.0]),         # 60 (+90) wait for it; 120 waits for the second
    ("allow", [30.0, 60.0, 90.0, 120.0, 150.0]),
])
def test_overlap_decides_about_a_run_that_is_still_alive(tmp_path, overlap, expected):
    starts, out = run_virtual(tmp_path, {"slow": SLOW.format(seconds=70)},
                              f'[job.slow]\nevery = 30\noverlap = "{overlap}"\n', 175,
                              with_store=True)
    assert starts["slow"] == expected
    kinds = [e["event"] for e in out["history"]["events"] if e["event"].startswith("run-")]
    assert kinds == {"skip": ["run-skipped"] * 3, "queue": ["run-queued"] * 2,
                     "allow": []}[overlap], kinds


@pytest.mark.parametrize("catch_up", [True, False])
def test_a_run_missed_while_down_is_caught_up_once_if_asked(tmp_path, catch_up):
    tables = f'[job.tick]\nevery = "60s"\ncatch_up = {str(catch_up).lower()}\n'
    first, _ = run_virtual(tmp_path, {"tick": QUICK}, tables, 130, with_store=True)
    assert first == {"tick": [60.0, 120.0]}
    # "restart" 10 minutes later: the database knows the last run was at BASE + 120
    again, out = run_virtual(tmp_path, {"tick": QUICK}, tables, 70, base=BASE + 730,
                             with_store=True)
    assert again == ({"tick": [0.0, 60.0]} if catch_up else {"tick": [60.0]})
    caught = [e for e in out["history"]["events"] if e["event"] == "run-caught-up"]
    assert len(caught) == (1 if catch_up else 0)


def test_a_cron_time_missed_while_down_is_caught_up_at_start(tmp_path):
    tables = '[job.five]\nschedule = "*/5 * * * *"\ntimezone = "UTC"\ncatch_up = true\n'
    first, _ = run_virtual(tmp_path, {"five": QUICK}, tables, 130, with_store=True)
    assert first == {"five": [120.0]}   # 00:05
    # back at 00:17: 00:10 and 00:15 were missed; one run at start, then 00:20
    again, _ = run_virtual(tmp_path, {"five": QUICK}, tables, 200, base=BASE + 14 * 60,
                           with_store=True)
    assert again == {"five": [0.0, 180.0]}


def test_a_timed_job_removed_and_disabled_is_not_started(tmp_path):
    starts, out = run_virtual(tmp_path, {"off": QUICK}, '[job.off]\nevery = 10\nenabled = false\n',
                              35)
    assert starts == {} and "next_run" not in [k for r in out["jobs"] for k in r if r[k]]


# -- end to end ---------------------------------------------------------------------

STAMP = """
    import time
    from pathlib import Path

    import trio

    async def main(task):
        with open({path!r}, "a") as f:
            f.write(f"{{task.id}} {{time.time()}}\\n")
        await trio.sleep({sleep})
"""


def stamps(path: Path) -> list[tuple[int, float]]:
    if not path.exists():
        return []
    return [(int(a), float(b)) for a, b in (line.split() for line in path.read_text().splitlines())]


def wait_for(predicate, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)
    return result


def test_a_real_daemon_runs_every_interval_skips_overlaps_and_shows_next_and_last(daemon, tmp_path):
    quick, slow = tmp_path / "quick.log", tmp_path / "slow.log"
    d = daemon(jobs={"quick": STAMP.format(path=str(quick), sleep=0),
                     "slow": STAMP.format(path=str(slow), sleep=1.2)},
               config={"job": {"quick": {"every": "0.4s"}, "slow": {"every": "0.5s"}}})
    runs = wait_for(lambda: len(stamps(quick)) >= 4 and stamps(quick), "four quick runs")
    gaps = [b[1] - a[1] for a, b in zip(runs, runs[1:], strict=False)]
    assert all(0.3 < g < 1.5 for g in gaps), gaps
    assert [r[0] for r in runs] == sorted(r[0] for r in runs)
    jobs = {j["name"]: j for j in d.ok("jobs")["jobs"]}
    assert jobs["quick"]["schedule"] == "every 0.4s"
    assert jobs["quick"]["next_run"] > jobs["quick"]["last_run"] > runs[0][1] - 1
    rc, text, err = d.ctl("jobs", json_output=False)
    assert rc == 0 and text.splitlines()[0].split() == ["NAME", "STATE", "TASKS", "SCHEDULE",
                                                        "NEXT", "LAST", "PATH"], (text, err)
    wait_for(lambda: len(stamps(slow)) >= 2, "two slow runs")
    slow_runs = stamps(slow)
    assert slow_runs[1][1] - slow_runs[0][1] >= 1.2, "a run started while the previous lived"
    skipped = d.ok("history", "slow", "--limit", "1000")["events"]
    assert any(e["event"] == "run-skipped" for e in skipped), skipped


def test_a_real_daemon_catches_up_a_run_missed_while_it_was_down(daemon, tmp_path):
    log = tmp_path / "tick.log"
    config = {"daemon": {"state_dir": str(tmp_path / "state")},
              "job": {"tick": {"every": "1s", "catch_up": True}}}
    d = daemon(jobs={"tick": STAMP.format(path=str(log), sleep=0)}, config=config)
    wait_for(lambda: stamps(log), "the first run")
    d.signal(15)
    assert d.wait_exit() == 0
    time.sleep(1.5)   # a time passes while no daemon runs
    d = daemon(jobs={"tick": STAMP.format(path=str(log), sleep=0)}, config=config)
    caught = wait_for(lambda: [e for e in d.ok("history", "tick")["events"]
                               if e["event"] == "run-caught-up"], "a caught-up run")
    assert len(caught) == 1 and caught[0]["run"] > stamps(log)[0][0]
