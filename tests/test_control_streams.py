"""Streamed answers of the control server (cosched.control with cosched.feeds): the real
``serve`` on a unix socket, real sockets, a backend whose ``logs`` returns a Stream fed
by the test."""

import json

import trio
from structlog.testing import capture_logs

from cosched import protocol
from cosched.control import Limits
from cosched.feeds import Feed, Stream
from test_control import Backend, connect, read_response, recv_until, request, run_server, send


class StreamingBackend(Backend):
    """``logs`` answers with a stream fed through ``self.feed`` (follow), or one line."""

    def __init__(self, limit=1000):
        super().__init__()
        self.feed = None
        self.limit = limit
        self.subscribed = trio.Event()
        self.forgotten = trio.Event()

    def logs(self, task, lines=10, follow=False):
        self._task(task)  # an unknown task is an error before any stream begins
        if not follow:
            return {"records": ["old"]}
        self.feed = Feed(self.limit)
        self.subscribed.set()
        return Stream(self.feed, ["old"], close=self.forgotten.set)


async def read_lines(sock, count):
    buf = await recv_until(sock, lambda b: b.count(b"\n") >= count)
    return [json.loads(line) for line in buf.splitlines()[:count]]


def test_a_follow_is_answered_line_by_line_then_a_final_line(tmp_path):
    backend = StreamingBackend()

    async def body(path):
        with await connect(path) as sock:
            await send(sock, request(7, "logs", task="t", follow=True))
            assert await read_lines(sock, 1) == [{"id": 7, "ok": True, "stream": "old"}]
            backend.feed.put({"n": 1})
            assert await read_lines(sock, 1) == [{"id": 7, "ok": True, "stream": {"n": 1}}]
            backend.feed.put({"n": 2})
            backend.feed.close({"ended": "finished"})
            assert await read_lines(sock, 2) == [
                {"id": 7, "ok": True, "stream": {"n": 2}},
                {"id": 7, "ok": True, "result": {"ended": "finished"}}]
            # the connection serves the next request as usual, with one line
            await send(sock, request(8, "logs", task="t"))
            assert await read_response(sock) == {"id": 8, "ok": True,
                                                 "result": {"records": ["old"]}}
        await backend.forgotten.wait()

    run_server(tmp_path, body, backend)


def test_an_error_before_the_stream_is_one_error_line(tmp_path):
    async def body(path):
        with await connect(path) as sock:
            await send(sock, request(1, "logs", task="missing", follow=True))
            response = await read_response(sock)
            assert response["error"]["code"] == "no-such-task"
            await send(sock, request(2, "ping"))
            assert (await read_response(sock))["result"]["pong"] is True

    run_server(tmp_path, body, StreamingBackend())


def test_the_next_request_ends_the_stream_and_is_answered_after_it(tmp_path):
    backend = StreamingBackend()

    async def body(path):
        with await connect(path) as sock:
            await send(sock, request(1, "logs", task="t", follow=True))
            await read_lines(sock, 1)
            await send(sock, request(2, "ping"))
            end, pong = await read_lines(sock, 2)
            assert end == {"id": 1, "ok": True, "result": None}
            assert pong["id"] == 2 and pong["result"]["pong"] is True
            await backend.forgotten.wait()
            backend.feed.put("late")  # nobody follows any more: dropped quietly

    run_server(tmp_path, body, backend)


def test_a_follower_that_closes_is_forgotten(tmp_path):
    backend = StreamingBackend()

    async def body(path):
        sock = await connect(path)
        await send(sock, request(1, "logs", task="t", follow=True))
        await read_lines(sock, 1)
        sock.close()
        await backend.forgotten.wait()

    with capture_logs() as logs:
        run_server(tmp_path, body, backend)
    assert not [e for e in logs if e["log_level"] in ("error", "critical")], logs


def test_a_follower_that_stops_reading_is_dropped_and_its_queue_stays_bounded(tmp_path):
    limit = 50
    backend = StreamingBackend(limit)
    item = "x" * 10_000
    most_queued = 0

    async def body(path):
        nonlocal most_queued
        with await connect(path) as sock:
            await send(sock, request(1, "logs", task="t", follow=True))
            await backend.subscribed.wait()
            # Produce far more than the socket buffers hold while the client reads nothing.
            with trio.fail_after(8):
                while not backend.forgotten.is_set():
                    for _ in range(100):
                        backend.feed.put(item)
                    most_queued = max(most_queued, len(backend.feed))
                    await trio.sleep(0.01)
            # the daemon hung up: what is left to read ends in EOF, not in more lines
            assert b"\n" in await recv_until(sock, lambda b: False)

    with capture_logs() as logs:
        run_server(tmp_path, body, backend, limits=Limits(send_timeout=0.5))
    assert 0 < most_queued <= limit + 1  # +1: the "dropped" marker
    assert not [e for e in logs if e["log_level"] in ("error", "critical")], logs
    assert [e for e in logs if e["event"] == "control peer dropped"]


def test_dropped_items_are_announced_where_they_were_missed():
    async def main():
        feed = Feed(limit=2)
        for i in range(5):
            feed.put(i)
        got = [await feed.__anext__(), await feed.__anext__()]
        feed.put(5)
        feed.close("done")
        got += [item async for item in feed]
        return got, feed.result

    got, result = trio.run(main)
    assert got == [0, 1, {"dropped": 3}, 5]
    assert result == "done"


def test_a_closed_feed_takes_nothing_more():
    async def main():
        feed = Feed(limit=10)
        feed.put(1)
        feed.close({"ended": "killed"})
        feed.put(2)
        return [item async for item in Stream(feed, [0])], feed.result

    assert trio.run(main) == ([0, 1], {"ended": "killed"})


def test_a_waiting_reader_wakes_when_an_item_comes():
    async def main():
        feed = Feed()
        got = []

        async def reader():
            async for item in feed:
                got.append(item)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            feed.put("a")
            await trio.testing.wait_all_tasks_blocked()
            assert got == ["a"]
            feed.close()
        return got

    assert trio.run(main) == ["a"]


def test_stream_items_are_told_apart_from_results():
    item = protocol.decode_response(protocol.encode(protocol.stream_item(3, {"x": 1})))
    last = protocol.decode_response(protocol.encode(protocol.ok(3, {"x": 1})))
    assert (item.item, item.result) == (True, {"x": 1})
    assert (last.item, last.result) == (False, {"x": 1})
