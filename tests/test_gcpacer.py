"""Tests of cosched.gcpacer: when the population is frozen, and the collector at a stop."""

from __future__ import annotations

import gc

from cosched.gcpacer import BURST, RENDER_BURST, GcPacer


def test_every_burst_of_starts_freezes_the_population_and_the_report_counts_tasks():
    alive = [0]
    pacer = GcPacer(lambda: alive[0])
    try:
        before = gc.get_freeze_count()
        for _ in range(BURST - 1):
            alive[0] += 1
            pacer.task_started()
        assert pacer.report()["freezes"] == 0
        kept = [[] for _ in range(100)]   # young objects that live on: they get frozen
        alive[0] += 1
        pacer.task_started()
        assert gc.get_freeze_count() >= before + len(kept)
        assert pacer.report()["freezes"] == 1
        assert pacer.report()["frozen_tasks"] == BURST
    finally:
        gc.unfreeze()
        pacer.close()


def test_population_turned_over_twice_is_handed_back_to_the_collector():
    alive = [10]
    pacer = GcPacer(lambda: alive[0])
    try:
        pacer.freeze()
        assert gc.get_freeze_count() > 0
        for _ in range(19):
            pacer.task_ended()
        assert gc.get_freeze_count() > 0
        pacer.task_ended()
        assert gc.get_freeze_count() == 0
        assert pacer.report()["frozen_tasks"] == 0
    finally:
        gc.unfreeze()
        pacer.close()


def test_the_collector_is_off_while_the_daemon_stops_and_back_on_after():
    pacer = GcPacer(lambda: 0)
    assert gc.isenabled()
    pacer.stop()
    try:
        assert not gc.isenabled()
        pacer.freeze()
        for _ in range(100):
            pacer.task_ended()   # no unfreeze while stopping
        assert gc.get_freeze_count() > 0
    finally:
        pacer.close()
        gc.unfreeze()
    assert gc.isenabled()
    assert pacer._measure not in gc.callbacks


def test_a_collector_disabled_before_the_stop_stays_disabled():
    gc.disable()
    try:
        pacer = GcPacer(lambda: 0)
        pacer.stop()
        pacer.close()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_long_status_freezes_what_it_left_without_postponing_the_turnover():
    alive = [10]
    pacer = GcPacer(lambda: alive[0])
    try:
        pacer.freeze()
        for _ in range(5):
            pacer.task_ended()
        pacer.rendering(RENDER_BURST - 1)
        assert pacer.report()["freezes"] == 1
        pacer.rendering(1)
        assert pacer.report()["freezes"] == 2
        assert pacer.report()["frozen_tasks"] == 10
        for _ in range(15):             # 20 ended since the task freeze: handed back
            pacer.task_ended()
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()
        pacer.close()
