"""Metrics: the exposition of `coschedctl metrics`, checked with prometheus-client's parser.

End to end against a real coschedd; one test runs a real Supervisor in this
process to make the registry forget ended tasks quickly.
"""

from __future__ import annotations

import re
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from cosched import registry
from cosched.config import parse_config
from cosched.metrics import label_value
from cosched.supervisor import Supervisor
from test_daemon import ASKER, LIVE, SLEEPER, daemon, write_job  # noqa: F401

SPAWNER = """
    import trio

    async def child(task):
        await trio.sleep(1000)

    async def main(task):
        for i in range(5):
            task.spawn(child, name=f"kid{i}")
        await trio.sleep(1000)
"""
BROKEN = "async def main(task)\n"


def families(text: str) -> dict:
    """name -> family, as prometheus-client parses the text; fails on malformed text."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fams: dict, name: str) -> dict[tuple, float]:
    """{sorted label items: value} of the samples of one family."""
    fam = fams[name.removesuffix("_total")]
    return {tuple(sorted(s.labels.items())): s.value for s in fam.samples
            if s.name == name}


def scrape(d) -> str:
    rc, text, err = d.ctl("metrics", json_output=False)
    assert rc == 0, err
    return text


def test_metrics_parse_and_agree_with_status(daemon):
    d = daemon(jobs={"sleeper": SLEEPER, "asker": ASKER, "broken": BROKEN})
    d.wait_status(lambda s: {t["name"]: t["state"] for t in s["tasks"]} ==
                  {"sleeper": "waiting", "asker": "suspended"}, "sleeper waits, asker suspended")
    text = scrape(d)
    fams = families(text)
    status = d.status()
    assert fams["cosched_tasks"].type == "gauge"
    tasks = samples(fams, "cosched_tasks")
    assert tasks[(("job", "sleeper"), ("state", "waiting"))] == 1
    assert tasks[(("job", "asker"), ("state", "suspended"))] == 1
    assert tasks[(("job", "asker"), ("state", "running"))] == 0
    assert sum(tasks.values()) == len(status["tasks"])
    assert samples(fams, "cosched_job_loaded") == {
        (("job", "asker"),): 1, (("job", "broken"),): 0, (("job", "sleeper"),): 1}
    info = fams["cosched_info"].samples[0].labels
    assert info["switch_path"] == status["daemon"]["switch_path"] in ("c", "python")
    assert info["version"] == status["daemon"]["version"]
    for name, kind in [("cosched_process_cpu_seconds", "counter"),
                       ("cosched_process_resident_memory_bytes", "gauge"),
                       ("cosched_uptime_seconds", "gauge"),
                       ("cosched_control_connections", "gauge"),
                       ("cosched_log_lines_dropped", "counter"),
                       ("cosched_job_busy_seconds", "counter"),
                       ("cosched_task_switches", "counter")]:
        assert fams[name].type == kind, name
    assert fams["cosched_process_resident_memory_bytes"].samples[0].value > 1_000_000
    # The scrape itself is a control connection that is open while the daemon renders.
    assert fams["cosched_control_connections"].samples[0].value >= 1
    asker = next(t for t in status["tasks"] if t["name"] == "asker")
    assert samples(fams, "cosched_task_switches_total")[
        (("id", str(asker["id"])), ("job", "asker"), ("task", "asker"))] == asker["switches"]
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f]", text)


def test_per_task_series_are_bounded_and_job_totals_cover_every_task(daemon):
    d = daemon(jobs={"spawner": SPAWNER}, config={"metrics": {"max_task_series": 2}})
    d.wait_status(lambda s: sum(t["state"] == "waiting" for t in s["tasks"]) == 6,
                  "the spawner and its 5 children wait")
    fams = families(scrape(d))
    busy = samples(fams, "cosched_task_busy_seconds_total")
    assert len(busy) == 2
    ids = sorted(int(dict(labels)["id"]) for labels in busy)
    all_ids = sorted(t["id"] for t in d.status()["tasks"])
    assert ids == all_ids[:2]   # lowest ids first
    assert fams["cosched_task_series_omitted"].samples[0].value == 4
    assert samples(fams, "cosched_job_tasks_started_total") == {(("job", "spawner"),): 6}
    assert samples(fams, "cosched_job_steps_total")[(("job", "spawner"),)] >= 6


def test_label_values_are_escaped_for_the_format_and_for_terminals(daemon):
    source = r'''
        import trio

        async def child(task):
            await trio.sleep(1000)

        async def main(task):
            task.spawn(child, name='q"uo\\te\nnew\x1b[31m')
            await trio.sleep(1000)
    '''
    d = daemon(jobs={"odd": source})
    d.wait_status(lambda s: len([t for t in s["tasks"] if t["state"] in LIVE]) == 2,
                  "two tasks")
    text = scrape(d)
    assert "\x1b" not in text
    tasks = {dict(s.labels)["task"] for s in
             families(text)["cosched_task_steps"].samples}
    # The parser gives back what cosched.terminal shows for the name.
    assert tasks == {"odd", 'q"uo\\te\\nnew\\x1b[31m'}
    assert label_value('a"b\\c\n') == 'a\\"b\\\\c\\\\n'


def test_metrics_needs_only_read_access(daemon):
    from cosched.protocol import COMMANDS, READ
    assert COMMANDS["metrics"].level == READ
    d = daemon(jobs={"sleeper": SLEEPER})
    rc, out, err = d.ctl("metrics")
    assert rc == 0, err
    assert out["content_type"].startswith("text/plain; version=0.0.4")
    families(out["text"])


def test_job_counters_do_not_go_down_when_ended_tasks_are_forgotten(tmp_path, monkeypatch):
    """A real Supervisor in this process: 12 short tasks, the registry keeps 3 ended."""
    monkeypatch.setattr(registry, "ENDED_KEPT", 3)
    jobs = tmp_path / "jobs"
    write_job(jobs, "quick", "import trio\nasync def main(task):\n    await trio.sleep(0)\n")
    config = parse_config({"daemon": {"jobs_dir": str(jobs), "strict_modes": False},
                           "jobs": {"restart": "no", "autostart": False}}, tmp_path)
    seen: list[float] = []

    async def scenario() -> None:
        sup = Supervisor(config)
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            for _ in range(12):
                t = (await sup.start("quick"))["task"]
                await sup.tasks[t["id"]].wait_ended()
                fams = families(await sup.collector.render(trio.lowlevel.checkpoint))
                seen.append(samples(fams, "cosched_job_steps_total")[(("job", "quick"),)])
                started = samples(fams, "cosched_job_tasks_started_total")
            assert len(sup.tasks) == 3
            assert started == {(("job", "quick"),): 12}
            nursery.cancel_scope.cancel()

    trio.run(scenario)
    assert seen == sorted(seen) and seen[-1] >= 24  # two steps per task at least


@pytest.mark.parametrize("value, error", [
    ('"9469"', 'expected HOST:PORT with HOST an IP address'),
    ('"localhost:9469"', "expected HOST:PORT with HOST an IP address"),
    ('"127.0.0.1:99999"', "the port must be a number from 0 to 65535"),
    ('"127.0.0.1:"', "the port must be a number from 0 to 65535"),
    ('"::1:9469"', "write an IPv6 address in brackets"),
    ("9469", 'expected "" or "HOST:PORT"'),
])
def test_bad_metrics_listen_values_are_config_errors(tmp_path, value, error):
    from test_config import load

    from cosched.config import ConfigError
    with pytest.raises(ConfigError, match="metrics.listen: ") as info:
        load(tmp_path, f"[metrics]\nlisten = {value}\n")
    assert error in str(info.value)


def test_metrics_listen_values(tmp_path):
    from test_config import load
    assert load(tmp_path, '[metrics]\nlisten = "[::1]:9469"\n').metrics_listen == ("::1", 9469)
    assert load(tmp_path, '[metrics]\nlisten = "127.0.0.1:0"\n').metrics_listen == (
        "127.0.0.1", 0)
    assert load(tmp_path, "").metrics_listen is None


def test_the_exposition_is_rendered_in_chunks(tmp_path):
    """With many tasks the collector hands the loop back: a checkpoint per CHUNK tasks."""
    from cosched import metrics
    from cosched.loader import load_job

    job = load_job(write_job(tmp_path / "jobs", "j", SLEEPER))
    config = parse_config({"daemon": {"jobs_dir": str(tmp_path / "jobs")}}, tmp_path)
    sup = Supervisor(config)
    for i in range(1, 5001):
        t = registry.Task(i, f"t{i}", job, config.job_defaults, job.main, (), None)
        t.state = "suspended"
        sup.reg.add(t)
    calls = []

    async def checkpoint() -> None:
        calls.append(1)
        await trio.lowlevel.checkpoint()

    text = trio.run(sup.collector.render, checkpoint)
    # one before each chunk after the first, and one before the per-task series
    assert len(calls) == (5000 - 1) // metrics.CHUNK + 1
    assert samples(families(text), "cosched_task_series_omitted")[()] == 5000 - 500
    assert samples(families(text), "cosched_tasks")[(("job", "j"), ("state", "suspended"))] \
        == 5000
