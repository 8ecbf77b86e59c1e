"""Feeds: what a follower of logs or events is handed, and how a backend answers with a stream.

A *feed* is one follower's queue. Producers (a task's log buffer, the event
history) ``put`` items into it on the event loop without waiting; the control
server takes them out as it writes them to the follower's connection.

Design principles
-----------------
- A follower never makes the daemon buffer without bound: a feed holds at most
  ``limit`` items. When it is full the new item is dropped and counted, and the
  follower is told how many it missed (a ``{"dropped": N}`` item, in the place
  where they were missed) as soon as there is room again. A follower that stops
  reading altogether is dropped by the server's send timeout; meanwhile its feed
  stays at ``limit`` items.
- Producers pay only while someone follows: they keep their followers in a
  collection and test it for truth before doing any work.
- ``put`` never blocks and never raises; it is called on the event loop from
  the producers' own code paths (a log call, a state change).

``Stream`` is what a control backend method returns to answer with a stream
(see ``cosched.protocol``): the server writes one line per item of ``items``,
then one last line with ``result``, and calls ``close`` however the stream ends
(finished, peer gone, daemon stopping), so the producer forgets the follower.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import trio

__all__ = ["Feed", "Stream", "DEFAULT_LIMIT", "LOOKED"]

DEFAULT_LIMIT = 1000  # items a follower may lag behind before items are dropped
LOOKED = object()     # a backlog item looked at and not taken: the loop may run there
LOOKS = 1000          # ... and does, after this many in a row


class Feed:
    """A bounded queue of items for one follower; async-iterable until closed."""

    __slots__ = ("limit", "_items", "_missed", "_waiter", "closed", "result")

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._items: deque[Any] = deque()  # invariant: at most limit + 1 (a dropped marker)
        self._missed = 0                  # items dropped since the last marker
        self._waiter: trio.Event | None = None  # set when the reader waits for an item
        self.closed = False
        self.result: Any = None           # why the feed ended, once closed

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Any) -> None:
        """Queue ``item``; drop it (counted) if the follower is ``limit`` items behind."""
        if self.closed:
            return
        if len(self._items) >= self.limit:
            self._missed += 1
            return
        if self._missed:
            self._items.append({"dropped": self._missed})
            self._missed = 0
        self._items.append(item)
        self._wake()

    def close(self, result: Any = None) -> None:
        """End the feed after the items already queued; ``result`` says why."""
        if self.closed:
            return
        if self._missed:
            self._items.append({"dropped": self._missed})
            self._missed = 0
        self.closed, self.result = True, result
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None:
            self._waiter.set()
            self._waiter = None

    def __aiter__(self) -> Feed:
        return self

    async def __anext__(self) -> Any:
        while not self._items:
            if self.closed:
                raise StopAsyncIteration
            self._waiter = trio.Event()
            await self._waiter.wait()
        return self._items.popleft()


class Stream:
    """A backend's streamed answer: ``backlog`` items first, then those of ``feed``
    until it closes; ``result`` is the last line's result; ``close`` runs once at the end.

    The backlog is taken lazily: it may be a search that yields LOOKED for each thing
    it looked at and did not take, so that a long search lets the loop run."""

    def __init__(self, feed: Feed, backlog: Iterable[Any] = (),
                 close: Callable[[], None] | None = None,
                 result: Callable[[Feed], Any] = lambda feed: feed.result) -> None:
        self.feed = feed
        self._backlog = iter(backlog)
        self._close = close
        self._result = result

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Any:
        looks = 0
        for item in self._backlog:
            if item is not LOOKED:
                return item
            looks += 1
            if looks == LOOKS:
                looks = 0
                await trio.lowlevel.checkpoint()
        return await self.feed.__anext__()

    @property
    def result(self) -> Any:
        return self._result(self.feed)

    def close(self) -> None:
        """Forget the follower (idempotent)."""
        close, self._close = self._close, None
        self.feed.close(self.feed.result)
        if close is not None:
            close()
