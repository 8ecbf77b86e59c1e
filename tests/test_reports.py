"""Tests of cosched.reports on a real supervisor: where waiting tasks wait, and rows that
any encoder renders alike."""

from __future__ import annotations

import json

import trio

from cosched import _coro, protocol, reports
from test_events import drive, make_supervisor

WAITERS = """
    import enum

    import trio

    from cosched import coro

    class Colour(enum.Enum):
        RED = 1

    async def sleeper(task):
        await trio.sleep(1000)

    async def event_waiter(task):
        await trio.Event().wait()

    async def receiver(task):
        a, b = trio.socket.socketpair()
        await a.recv(1)

    async def deep():
        await trio.sleep(1000)

    async def nested(task):
        co = coro.create(deep)
        await coro.resume(co)

    async def yielder(task):
        await coro.yield_(Colour.RED, 1.5, "text")

    async def either(task, first):
        if first:
            await trio.sleep(1000)
        else:
            await trio.sleep(1000)

    async def main(task):
        for fn in (sleeper, event_waiter, receiver, nested, yielder):
            task.spawn(fn, name=fn.__name__)
        task.spawn(either, True, name="first")
        task.spawn(either, False, name="second")
        await trio.sleep(1000)
"""

EXPECTED = {
    "sleeper": "trio.sleep at waiters.py:12",
    "event_waiter": "trio.Event.wait at waiters.py:15",
    "receiver": "await a.recv(1) at waiters.py:19",
    "nested": "trio.sleep at waiters.py:22",
    "first": "trio.sleep at waiters.py:33",    # the same code waiting at two lines:
    "second": "trio.sleep at waiters.py:35",   # told apart, though remembered by code
}


def test_waiting_on_walks_to_the_first_trio_frame_and_agrees_with_the_full_stack(tmp_path):
    sup = make_supervisor(tmp_path, {"waiters": WAITERS})

    async def scenario():
        while len(sup.tasks) < 8 or any(t.steps == 0 for t in sup.tasks.values()):
            await trio.sleep(0.01)
        await trio.sleep(0.05)
        by_name = {t.name: t for t in sup.tasks.values()}
        # the common shape takes the short walk; a pending nested call the generic one
        assert _coro.driven_body(by_name["sleeper"].trio_task.coro) is not None
        assert _coro.driven_body(by_name["nested"].trio_task.coro) is None
        for name, expected in EXPECTED.items():
            t = by_name[name]
            row = reports.info(t)
            assert tuple(row) == protocol.ROW_FIELDS
            assert row["waiting_on"] == expected, name
            assert reports.rows([t], ["waiting_on", "name", "id"]) == [(expected, name, t.id)]
            assert reports.rows([t], ["name"]) == [[name]]
            assert reports.where(reports.stack(t)) == expected, name
        assert reports.info(by_name["yielder"])["waiting_on"] is None

    drive(sup, scenario)


def test_a_row_holds_json_types_only_whatever_a_job_yielded(tmp_path):
    sup = make_supervisor(tmp_path, {"waiters": WAITERS})
    rows: list[dict] = []

    async def scenario():
        while not any(t.state == "suspended" for t in sup.tasks.values()):
            await trio.sleep(0.01)
        rows.append(reports.info(next(t for t in sup.tasks.values() if t.state == "suspended")))

    drive(sup, scenario)
    # The enum is shown as the protocol renders a value JSON cannot hold (its repr), by
    # every encoder, rather than by its value as orjson would write it unasked.
    assert rows[0]["yielded"] == ["<Colour.RED: 1>", 1.5, "text"]
    assert json.loads(protocol.encode_plain(rows[0])) == json.loads(protocol.encode(rows[0]))


ENDINGS = """
    import trio

    async def fails(task):
        raise ValueError("no")

    async def finishes(task):
        return 42

    async def main(task):
        task.spawn(fails, name="fails")
        task.spawn(finishes, name="finishes")
        await trio.sleep(1000)
"""


def test_rows_made_a_column_at_a_time_hold_what_values_holds(tmp_path):
    sup = make_supervisor(tmp_path, {"waiters": WAITERS, "endings": ENDINGS})
    got: list = []

    async def scenario():
        while not (any(t.state == "suspended" for t in sup.tasks.values())
                   and sum(not t.alive for t in sup.tasks.values()) == 2):
            await trio.sleep(0.01)
        await trio.sleep(0.1)   # every waiter parked
        tasks = sorted(sup.tasks.values(), key=lambda t: t.id)
        now = 12345.0
        got.append(([reports.values(t, now) for t in tasks],
                    reports.rows(tasks, list(protocol.ROW_FIELDS), now),
                    reports.rows(tasks, ["age", "id"], now), reports.rows(tasks, ["error"], now)))

    drive(sup, scenario)
    whole, columns, two, one = got[0]
    assert columns == whole
    assert {r[3] for r in whole} >= {"waiting", "suspended", "failed", "finished"}
    assert any(r[11] == "ValueError: no" for r in whole)   # a field from the rare record
    assert two == [(r[8], r[0]) for r in whole]
    assert one == [[r[11]] for r in whole]
