"""The event history and its followers: what ``coschedctl events [-f]`` reads.

``EventLog`` subscribes to the supervisor's ``cosched.events.Events`` and keeps
the newest ``kept`` events (``log.events_kept``) in a ring; followers get each
new event through their own bounded ``cosched.feeds.Feed``, optionally only
those of one job.

Cost: with ``kept`` > 0 every state change costs the event dict that
``Events`` builds and one append here (the ring keeps the event's values in a
slot of a flat list, not the dict: see ``_Ring``); values that jobs yielded or returned are
stored bounded (``_bounded``), so the ring neither pins big job objects nor
keeps anything a hostile ``__repr__`` could break later. With ``kept`` = 0 the
listener is subscribed only while someone follows, so nothing is built at all.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator
from typing import Any

from .events import Events, task_event
from .feeds import LOOKED, Feed, Stream
from .protocol import Chunked
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
COLUMNS = 6        # values after the time kept in a slot each; the others in one tuple
                   # (a task event has 5, and most one more: restarts, values, result)
_IMPLIED = object()   # in a slot, for the task's name: it is <job>.<id>
FIRST_SLOTS = 4096  # slots made with the ring (288 KB at most); more are made as needed
STRIDE = COLUMNS + 2   # a slot: the shape, COLUMNS values, the tuple of the others
_PADS = [(None,) * (COLUMNS - n) for n in range(COLUMNS)]   # for an event of fewer fields


def _slot(shape: tuple[str, ...], first: Any, second: Any, rest: Any) -> tuple:
    """A slot of an event of this shape, from its values after the time."""
    n = len(rest) + 2
    if n == COLUMNS:   # a task event of one more field: the usual one
        return (shape, first, second, *rest, None)
    if n < COLUMNS:
        return (shape, first, second, *rest, *_PADS[n], None)
    rest = tuple(rest)
    return (shape, first, second, *rest[:COLUMNS - 2], rest[COLUMNS - 2:])


_TASK_KEYS = ("time", "event", "task", "id", "job", "state")   # a task event's first keys
_TASK_SHAPES: dict[tuple[str, ...], tuple[str, ...]] = {}   # its other keys -> its shape


def _task_shape(keys: tuple[str, ...]) -> tuple[str, ...]:
    shape = _shape(_TASK_KEYS + keys)
    assert shape is not None
    if len(_TASK_SHAPES) < MAX_SHAPES:
        _TASK_SHAPES[keys] = shape
    return shape


def _shape(keys: tuple[str, ...]) -> tuple[str, ...] | None:
    """The shared key tuple of an event of these keys; None for another form."""
    if keys[:1] != ("time",):
        return None
    return keys if len(_SHAPES) >= MAX_SHAPES else _SHAPES.setdefault(keys, keys)


class _Ring:
    """The newest events, at most ``size``, oldest first, in slots of a flat list.

    An event costs 8 bytes a field: its time in an array of doubles; in the list, a
    slot of STRIDE items: its keys (one tuple shared by the events of that shape), its
    next COLUMNS values, and a tuple of any others (or None). A task's name that its
    job's name and its id make (``<job>.<id>``: every task a job's own task spawns)
    is not kept but made again when read. A thousand "started" events of a spawn were
    196 KB as a tuple, a float and a name each; they are 74 KB here (tracemalloc).

    The first FIRST_SLOTS slots are made with the ring (72 KB for the default
    thousand): a list grown by appending while a spawn allocated its tasks cost
    twice its size in RSS, the heap fragmented. Beyond that it grows with the events
    kept, to ``size`` slots; then the oldest slot is written over.

    Invariant: slot ``k % size`` holds the k-th event appended, for the newest
    ``len(self)`` values of k; an event of another form (no float time first) is kept
    whole in the slot's last item, (keys, values), its shape None.
    """

    __slots__ = ("size", "_added", "_times", "_slots")

    def __init__(self, size: int) -> None:
        self.size = size
        self._added = 0   # events ever appended
        first = min(size, FIRST_SLOTS)
        self._times = array("d", bytes(8 * first))
        self._slots: list[Any] = [None] * (first * STRIDE)

    def __len__(self) -> int:
        return min(self._added, self.size)

    def append(self, event: dict) -> None:
        """Keep ``event`` (written out: this runs at every state change of every task)."""
        if not self.size:
            return
        keys = tuple(event)
        shape = _SHAPES.get(keys) or _shape(keys)
        time, *values = event.values()
        if shape is None or type(time) is not float:   # kept whole
            self._put(0.0, (None, *_PADS[0], (keys, tuple(event.values()))))
        elif keys[2:3] == ("task",) and values[1] == f"{values[3]}.{values[2]}":
            self._put(time, _slot(shape, values[0], _IMPLIED, values[2:]))
        else:
            self._put(time, _slot(shape, values[0], values[1], values[2:]))

    def append_task(self, when: float, kind: str, t: Any, fields: dict) -> None:
        """``append(task_event(when, kind, t, fields))`` without the dict, nor the name
        of a task named <job>.<id> (a Task tells it by ``own_name``). Written out: it
        runs at every start of every task."""
        if not self.size:
            return
        keys = tuple(fields)
        shape = _TASK_SHAPES.get(keys) or _task_shape(keys)
        job, tid = t.job.name, t.id
        name = _kept_name(t, job, tid)
        if len(keys) == 1:   # the usual ("started": restarts), without _slot's tuple of the rest
            self._put(when, (shape, kind, name, tid, job, t.state, *fields.values(), None))
        else:
            self._put(when, _slot(shape, kind, name, (tid, job, t.state, *fields.values())))

    def append_started(self, times: list[float], tasks: list[Any]) -> None:
        """``append_task(when, "started", t, {"restarts": 0})`` of first starts heard in
        a batch (``Events.flush``): their state then was "running", whatever it is now."""
        if not self.size:
            return
        shape = _TASK_SHAPES.get(_FIRST_KEYS) or _task_shape(_FIRST_KEYS)
        put = self._put
        for when, t in zip(times, tasks, strict=True):
            job, tid = t.job.name, t.id
            put(when, (shape, "started", _kept_name(t, job, tid), tid, job, "running", 0, None))

    def _put(self, time: float, slot: tuple) -> None:
        i = self._added % self.size
        self._added += 1
        if i < len(self._times):
            self._times[i] = time
            self._slots[i * STRIDE:(i + 1) * STRIDE] = slot
        else:   # (slots are used in order: i is the number made)
            self._times.append(time)
            self._slots += slot

    def _event(self, i: int) -> dict:
        j = i * STRIDE
        slot = self._slots[j:j + STRIDE]
        shape, rest = slot[0], slot[-1]
        if shape is None:
            return dict(zip(*rest, strict=True))
        slot[0] = self._times[i]
        if slot[2] is _IMPLIED:
            slot[2] = f"{slot[4]}.{slot[3]}"
        del slot[-1]
        if rest is not None:
            slot += rest
        return dict(zip(shape, slot[:len(shape)], strict=True))

    def __iter__(self) -> Iterator[dict]:
        """The events, oldest first (made as they are reached)."""
        return map(self.event, range(self._added - len(self), self._added))

    def event(self, k: int) -> dict | None:
        """The k-th event appended (from 0), or None if it is no longer kept."""
        if not self._added - len(self) <= k < self._added:
            return None
        return self._event(k % self.size)

    def job_of(self, k: int) -> Any:
        """The "job" field of the k-th event (None if it has none or is no longer kept),
        read from its slot: no event is made."""
        if not self._added - len(self) <= k < self._added:
            return None
        j = k % self.size * STRIDE
        shape = self._slots[j]
        if shape is None:
            return dict(zip(*self._slots[j + STRIDE - 1], strict=True)).get("job")
        at = _JOB_AT.get(shape)
        if at is None:
            at = _JOB_AT[shape] = shape.index("job") if "job" in shape else 0
        if not at:
            return None
        return self._slots[j + at] if at <= COLUMNS else \
            self._slots[j + STRIDE - 1][at - COLUMNS - 1]

    def newest(self, count: int, job: str | None = None,
               before: int | None = None) -> Iterator[int | None]:
        """The numbers of the newest ``count`` events (of ``job``; numbered below
        ``before``), newest first, with a None after each event looked at: a caller may
        stop between any two looks (the ring may take new events meanwhile; the search
        goes on where it was, and ends where the events it has not reached yet are no
        longer kept)."""
        k = self._added if before is None else before
        while count and k > self._added - len(self):
            k -= 1
            if job is None or self.job_of(k) == job:
                count -= 1
                yield k
            yield None

    def resized(self, size: int) -> _Ring:
        """A ring of ``size`` with the newest of these events (their slots copied in
        order by slices: a million events in milliseconds)."""
        ring = _Ring(size)
        kept = min(len(self), size)
        if not kept:
            return ring
        start = (self._added - kept) % self.size   # the slot of the oldest event copied
        ring._times = array("d", _ordered(self._times, start, kept))
        ring._slots = _ordered(self._slots, start * STRIDE, kept * STRIDE)
        ring._added = kept
        return ring


def _ordered(items: Any, start: int, count: int) -> Any:
    """``count`` items of a ring's list (or array) from ``start`` on, wrapping at its end."""
    if start + count <= len(items):
        return items[start:start + count]
    return (items[start:] + items[:start])[:count]


_JOB_AT: dict[tuple[str, ...], int] = {}   # shape -> where its job is in a slot (0: nowhere);
                                          # as many as _SHAPES


CHUNK = 1000   # events looked at (or sent) between two turns of the loop


def _search(ring: _Ring, lines: int, job: str | None, looked: Any,
            before: int | None = None) -> Iterator[Any]:
    """The numbers of the newest ``lines`` events (of ``job``; numbered below
    ``before``), oldest first, after a ``looked`` for each event looked at while
    searching for them (newest first)."""
    found = []
    for k in ring.newest(lines, job, before):
        if k is None:
            yield looked
        else:
            found.append(k)
    yield from reversed(found)


def _made(ring: _Ring) -> Callable[[list[int]], list[dict]]:
    """Chunked's render: the events of these numbers still in ``ring``."""
    return lambda numbers: [e for e in map(ring.event, numbers) if e is not None]


_FIRST_KEYS = ("restarts",)   # the fields of a first start


def _kept_name(t: Any, job: str, tid: int) -> Any:
    """The name a slot keeps: _IMPLIED for a task named <job>.<id> (a Task tells it by
    ``own_name`` without making it)."""
    own = getattr(t, "own_name", None)
    if own is not None:
        name = own()
    else:
        name = t.name
        name = None if name == f"{job}.{tid}" else name
    return _IMPLIED if name is None else name


class EventLog:
    """The newest events, and the followers of new ones."""

    def __init__(self, events: Events, kept: int) -> None:
        self._events = events
        self._ring = _Ring(kept)
        self._feeds: dict[Feed, str | None] = {}   # feed -> the job it wants, None: all
        self._unsubscribe: Callable[[], None] | None = None
        self._listen()

    def _listen(self) -> None:
        wanted = bool(self._ring.size or self._feeds)
        if wanted and self._unsubscribe is None:
            self._unsubscribe = self._events.listen(self._heard, self._watched,
                                                    self._watched_started)
        elif not wanted and self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def resize(self, kept: int) -> None:
        """A new events_kept (each reload passes it: unchanged, the ring stays)."""
        if kept != self._ring.size:
            self._ring = self._ring.resized(kept)
        self._listen()

    def _watched(self, when: float, kind: str, t: Any, fields: dict) -> None:
        """A task event: kept without its dict unless a follower or a job's value needs it."""
        if self._feeds or not _JOB_VALUES.isdisjoint(fields):
            self._heard(task_event(when, kind, t, fields))
        else:
            self._ring.append_task(when, kind, t, fields)

    def _watched_started(self, times: list[float], tasks: list[Any]) -> None:
        """First starts heard in a batch (their state then was "running")."""
        if not self._feeds:
            self._ring.append_started(times, tasks)
            return
        for when, t in zip(times, tasks, strict=True):
            self._heard({**task_event(when, "started", t, {"restarts": 0}), "state": "running"})

    def _heard(self, event: dict) -> None:
        if not _JOB_VALUES.isdisjoint(event):  # a copy: other listeners get theirs
            event = {k: _bounded(v) if k in _JOB_VALUES else v for k, v in event.items()}
        self._ring.append(event)
        if self._feeds:
            job = event.get("job")
            for feed, wanted in self._feeds.items():
                if wanted is None or wanted == job:
                    feed.put(event)

    def recent(self, lines: int, job: str | None = None) -> list[dict]:
        """The newest ``lines`` events (of ``job``), oldest first: looked for from the
        newest, an event made only for each one taken."""
        self._events.flush()
        ring = self._ring
        return _made(ring)([k for k in _search(ring, lines, job, None) if k is not None])

    def answer(self, lines: int, job: str | None = None) -> dict | Chunked:
        """``{"events": recent(lines, job)}``; from a ring longer than a chunk, made a
        chunk at a time (events_kept may be a million: made at once, the answer held
        the loop for seconds). Events that leave the ring while the answer is sent
        (new ones wrote over them) are left out of it."""
        self._events.flush()
        ring = self._ring   # (a reload may put another in its place meanwhile)
        if len(ring) <= CHUNK:
            return {"events": self.recent(lines, job)}
        return Chunked({}, "events", _search(ring, lines, job, None), _made(ring), {},
                       size=CHUNK)

    def follow(self, lines: int, job: str | None, queue: int) -> Stream:
        """A stream of the newest ``lines`` events, then of every new one (the newest
        are searched for as the stream is sent: see ``answer``)."""
        self._events.flush()   # (first starts before the follow: its backlog's)
        feed = Feed(queue)
        self._feeds[feed] = job
        self._listen()
        ring = self._ring
        heard = ring._added   # events from this one on reach the feed: not searched for

        def backlog() -> Iterator[Any]:
            for k in _search(ring, lines, job, LOOKED, heard):
                event = ring.event(k) if k is not LOOKED else LOOKED
                if event is not None:
                    yield event

        def forget() -> None:
            self._feeds.pop(feed, None)
            self._listen()
        return Stream(feed, backlog(), close=forget)

    def close(self) -> None:
        """The daemon stops: end every follower's stream."""
        for feed in list(self._feeds):
            feed.close({"ended": "coschedd is stopping"})
