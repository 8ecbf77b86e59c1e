"""Tests of cosched.looplag: the event loop's stalls, measured from inside the loop."""

from __future__ import annotations

import time

import trio

from cosched.looplag import KEPT, LONG, LoopLag


def run_with(lag: LoopLag, afn) -> None:
    async def main():
        trio.lowlevel.add_instrument(lag)
        try:
            await afn()
        finally:
            trio.lowlevel.remove_instrument(lag)
    trio.run(main)


def test_a_blocking_step_is_a_long_batch_with_its_length_and_end():
    lag = LoopLag()

    async def block():
        await trio.sleep(0.01)
        before = time.monotonic()
        time.sleep(0.08)          # blocks the loop: no I/O wait until it returns
        await trio.sleep(0.01)
        return before

    began = time.monotonic()
    run_with(lag, block)
    report = lag.report()
    assert report["long_batches"] >= 1
    assert report["longest_batch"] >= 0.08
    ended, seconds = max(report["recent_long"], key=lambda r: r[1])
    assert seconds >= 0.08 and began + 0.08 <= ended <= time.monotonic()


def test_only_the_latest_long_batches_are_kept_and_all_are_counted():
    lag = LoopLag()

    async def many():
        await trio.sleep(0)       # the first step runs before the loop first waits
        for _ in range(KEPT + 5):
            time.sleep(LONG)
            await trio.sleep(0)

    run_with(lag, many)
    report = lag.report()
    assert report["long_batches"] >= KEPT + 5
    assert len(report["recent_long"]) == KEPT
    ends = [r[0] for r in report["recent_long"]]
    assert ends == sorted(ends)


def test_nothing_is_counted_before_the_loop_first_waits():
    lag = LoopLag()
    lag.before_io_wait(0)     # as if added in the middle of a batch
    assert lag.report() == {"longest_batch": 0.0, "long_batches": 0, "recent_long": []}
