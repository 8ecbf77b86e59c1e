"""The event history and its followers: what ``coschedctl events [-f]`` reads.

``EventLog`` subscribes to the supervisor's ``cosched.events.Events`` and keeps
the newest ``kept`` events (``log.events_kept``) in a ring; followers get each
new event through their own bounded ``cosched.feeds.Feed``, optionally only
those of one job.

Cost: with ``kept`` > 0 every state change costs the event dict that
``Events`` builds and one append here (the ring keeps a tuple, not the dict:
a thousand dicts were 0.3 MB); values that jobs yielded or returned are
stored bounded (``_bounded``), so the ring neither pins big job objects nor
keeps anything a hostile ``__repr__`` could break later. With ``kept`` = 0 the
listener is subscribed only while someone follows, so nothing is built at all.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from .events import Events
from .feeds import Feed, Stream
from .saferepr import safe_repr

__all__ = ["EventLog"]

MAX_ITEMS = 50    # items of a list or dict in a stored event; more are rendered as text
MAX_DEPTH = 4
MAX_TEXT = 1000   # characters of a string in a stored event

_SCALARS = (int, float, bool, type(None))
_JOB_VALUES = frozenset({"values", "result"})  # the fields that hold job objects


def _bounded(value: Any, depth: int = 0) -> Any:
    """A JSON-able copy of a job's value, bounded in size and depth."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is str:
        return value if len(value) <= MAX_TEXT else value[:MAX_TEXT - 3] + "..."
    if kind in (list, tuple) and len(value) <= MAX_ITEMS and depth < MAX_DEPTH:
        return [_bounded(v, depth + 1) for v in value]
    if kind is dict and len(value) <= MAX_ITEMS and depth < MAX_DEPTH \
            and all(type(k) is str for k in value):
        return {k: _bounded(v, depth + 1) for k, v in value.items()}
    return safe_repr(value, MAX_TEXT)


_SHAPES: dict[tuple[str, ...], tuple[str, ...]] = {}   # one key tuple per kind of event
MAX_SHAPES = 256   # (the fields are the daemon's: a few dozen shapes in all)


def _packed(event: dict) -> tuple:
    """An event as kept in the ring: its keys (shared by events of its shape) and values.
    A tuple of eight costs 104 bytes where the dict cost 288."""
    keys = tuple(event)
    keys = _SHAPES.get(keys, keys) if len(_SHAPES) >= MAX_SHAPES else \
        _SHAPES.setdefault(keys, keys)
    return (keys, *event.values())


def _unpacked(packed: tuple) -> dict:
    return dict(zip(packed[0], packed[1:], strict=True))


class EventLog:
    """The newest events, and the followers of new ones."""

    def __init__(self, events: Events, kept: int) -> None:
        self._events = events
        self._history: deque[dict] = deque(maxlen=kept)
        self._feeds: dict[Feed, str | None] = {}   # feed -> the job it wants, None: all
        self._unsubscribe: Callable[[], None] | None = None
        self._listen()

    def _listen(self) -> None:
        wanted = bool(self._history.maxlen or self._feeds)
        if wanted and self._unsubscribe is None:
            self._unsubscribe = self._events.subscribe(self._heard)
        elif not wanted and self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def resize(self, kept: int) -> None:
        self._history = deque(self._history, maxlen=kept)
        self._listen()

    def _heard(self, event: dict) -> None:
        if not _JOB_VALUES.isdisjoint(event):  # a copy: other listeners get theirs
            event = {k: _bounded(v) if k in _JOB_VALUES else v for k, v in event.items()}
        self._history.append(_packed(event))
        if self._feeds:
            job = event.get("job")
            for feed, wanted in self._feeds.items():
                if wanted is None or wanted == job:
                    feed.put(event)

    def recent(self, lines: int, job: str | None = None) -> list[dict]:
        """The newest ``lines`` events (of ``job``), oldest first."""
        if not lines:
            return []
        events = map(_unpacked, self._history)
        return [e for e in events if job is None or e.get("job") == job][-lines:]

    def follow(self, lines: int, job: str | None, queue: int) -> Stream:
        """A stream of the newest ``lines`` events, then of every new one."""
        feed = Feed(queue)
        self._feeds[feed] = job
        self._listen()

        def forget() -> None:
            self._feeds.pop(feed, None)
            self._listen()
        return Stream(feed, self.recent(lines, job), close=forget)

    def close(self) -> None:
        """The daemon stops: end every follower's stream."""
        for feed in list(self._feeds):
            feed.close({"ended": "coschedd is stopping"})
