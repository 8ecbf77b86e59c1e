"""When a timed job runs: parsing ``schedule`` (cron) and ``every`` (an interval), and
the arithmetic of due times. Pure functions of wall-clock times (seconds since the
epoch, as ``time.time()`` gives them); no trio, no I/O, so the config loader and
the CLI can use it, and tests can drive it with any clock.

``schedule`` is a five-field cron expression (minute hour day-of-month month
day-of-week, as crontab(5)), or one of @yearly, @monthly, @weekly, @daily,
@hourly; it is evaluated in the job's ``timezone`` ("" is the system's local
time) by cronsim, which follows Debian cron across daylight-saving changes (a
02:30 that does not exist runs at 03:00, one that exists twice runs once).
``every`` is an interval: a number of seconds, or a string like "30s", "5m",
"1h30m", "2d"; it must be more than 0. Due times of ``every`` follow the last
run: the next is one interval after it.
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

__all__ = ["Schedule", "ScheduleError", "parse_every", "check_cron", "check_timezone",
           "schedule_of"]

MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
          "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
          "@hourly": "0 * * * *"}
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_EVERY = 366 * 86400.0  # a longer interval is surely a typo; cron covers yearly runs
_EVERY = re.compile(r"(?:(\d+(?:\.\d+)?)\s*([smhdw]))+?")


class ScheduleError(ValueError):
    """A schedule, interval or time zone that cannot be used; the message says why."""


def parse_every(value: str | int | float) -> float:
    """Seconds of an ``every`` value: a number of seconds or "1h30m"-style text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if text.startswith("-"):
            raise ScheduleError(f"{value!r} is not more than 0 seconds; an interval must be")
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            text += "s"
        if not text or _EVERY.fullmatch(text) is None:
            raise ScheduleError(f"{value!r} is not an interval; write seconds (30) or "
                                'a duration like "30s", "5m", "1h30m", "2d"')
        seconds = sum(float(n) * UNITS[u] for n, u in _EVERY.findall(text))
    else:
        raise ScheduleError(f"expected a number of seconds or a duration string, got {value!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ScheduleError(f"{value!r} is not more than 0 seconds; an interval must be")
    if seconds > MAX_EVERY:
        raise ScheduleError(f"{value!r} is longer than a year; use schedule (cron) instead")
    return seconds


def _expand(expr: str) -> str:
    text = " ".join(expr.split())
    return MACROS.get(text.lower(), text)


def check_cron(expr: str) -> str:
    """``expr`` if it is a valid five-field cron expression (or a macro); else ScheduleError."""
    text = _expand(expr)
    if len(text.split()) != 5:
        raise ScheduleError(f"{expr!r} is not a cron expression: it needs 5 fields (minute hour "
                            f"day-of-month month day-of-week), it has {len(text.split())}")
    try:
        CronSim(text, datetime(2000, 1, 1))
    except CronSimError as e:
        raise ScheduleError(f"{expr!r} is not a cron expression: {str(e).lower()} field") from None
    except (ValueError, IndexError, TypeError) as e:  # odd corners of the parser
        raise ScheduleError(f"{expr!r} is not a cron expression: {e}") from None
    return expr


def check_timezone(name: str) -> str:
    """``name`` if it names an IANA time zone ("" is the system's local time)."""
    if name:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ScheduleError(f"unknown time zone {name!r} (an IANA name like "
                                '"Europe/Berlin" or "UTC"; "" is the local time)') from None
    return name


@dataclass(frozen=True, slots=True)
class Schedule:
    """The due times of one timed job. Exactly one of ``cron`` and ``every`` is set."""

    cron: str = ""              # five fields, macros expanded
    every: float | None = None  # seconds
    timezone: str = ""          # for cron; "" is the local time

    def describe(self) -> str:
        return self.cron if self.cron else f"every {_duration(self.every)}"

    def _zone(self) -> tzinfo:
        return ZoneInfo(self.timezone) if self.timezone else local_zone()

    def next_after(self, t: float) -> float:
        """The first due time strictly after ``t``."""
        if self.every is not None:
            return t + self.every
        return next(CronSim(self.cron, datetime.fromtimestamp(t, self._zone()))).timestamp()

    def missed(self, last: float, now: float) -> float | None:
        """The latest due time in (last, now], or None: a run that was due while nothing
        ran it (the daemon was down)."""
        due = self.next_after(last)
        if due > now:
            return None
        if self.every is not None:
            return now  # one interval or more has passed; when exactly does not matter
        ref = datetime.fromtimestamp(now, self._zone()) + timedelta(microseconds=1)
        latest = next(CronSim(self.cron, ref, reverse=True)).timestamp()
        return latest if latest > last else due


@functools.cache
def local_zone() -> tzinfo:
    """The system's time zone with its DST rules ($TZ, else /etc/localtime), read once;
    the current fixed offset if neither can be read."""
    name = os.environ.get("TZ", "").lstrip(":")
    try:
        if name:
            return ZoneInfo(name)
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError, ZoneInfoNotFoundError):
        return datetime.now().astimezone().tzinfo


def schedule_of(policy) -> Schedule | None:
    """The Schedule of a job policy (``schedule``/``every``/``timezone``), None if untimed."""
    if policy.schedule:
        return Schedule(cron=_expand(policy.schedule), timezone=policy.timezone)
    if policy.every is not None:
        return Schedule(every=policy.every, timezone=policy.timezone)
    return None


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
