"""Due times of timed jobs: every intervals, cron expressions, time zones and missed runs."""

from datetime import datetime, UTC
from zoneinfo import ZoneInfo

import pytest

from cosched.schedules import (Schedule, ScheduleError, check_cron, check_timezone,
                               parse_every)

UTC = UTC


def ts(*args, tz=UTC) -> float:
    return datetime(*args, tzinfo=tz).timestamp()


@pytest.mark.parametrize("value, seconds", [
    (30, 30.0), (0.5, 0.5), ("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("2d", 172800.0),
    ("1.5h", 5400.0), ("45", 45.0), (" 1h 5s ", 3605.0),
])
def test_every_accepts_seconds_and_durations(value, seconds):
    assert parse_every(value) == seconds


@pytest.mark.parametrize("value, message", [
    (0, "not more than 0 seconds"), (-5, "not more than 0 seconds"),
    ("-5s", "not more than 0 seconds"), ("0s", "not more than 0 seconds"),
    ("soon", "is not an interval"), ("5 parsecs", "is not an interval"), ("", "is not an interval"),
    ("400d", "longer than a year"), (float("nan"), "not more than 0 seconds"),
])
def test_every_refuses_zero_negative_and_nonsense(value, message):
    with pytest.raises(ScheduleError, match=message):
        parse_every(value)


@pytest.mark.parametrize("expr, message", [
    ("* * *", "it needs 5 fields"), ("0 0 * * * *", "it needs 5 fields"),
    ("61 * * * *", "bad minute field"), ("* 24 * * *", "bad hour field"),
    ("*/0 * * * *", "bad minute field"), ("0 0 31 2 *", "bad day-of-month field"),
    ("0 0 * * 8", "bad day-of-week field"), ("@sometimes", "it needs 5 fields"),
])
def test_cron_refuses_what_does_not_parse(expr, message):
    with pytest.raises(ScheduleError, match=message) as info:
        check_cron(expr)
    assert repr(expr) in str(info.value)


def test_cron_macros_and_time_zones():
    assert check_cron("@daily") == "@daily"
    assert check_timezone("Europe/Berlin") == "Europe/Berlin" and check_timezone("") == ""
    with pytest.raises(ScheduleError, match="unknown time zone 'Mars/Olympus'"):
        check_timezone("Mars/Olympus")


def test_every_five_minutes_in_utc():
    s = Schedule(cron="*/5 * * * *", timezone="UTC")
    assert s.next_after(ts(2024, 1, 1, 0, 3)) == ts(2024, 1, 1, 0, 5)
    assert s.next_after(ts(2024, 1, 1, 0, 5)) == ts(2024, 1, 1, 0, 10)   # strictly after
    assert s.next_after(ts(2024, 1, 1, 23, 59, 30)) == ts(2024, 1, 2, 0, 0)
    assert s.describe() == "*/5 * * * *"


def test_a_daily_time_follows_the_zone_across_daylight_saving():
    berlin = ZoneInfo("Europe/Berlin")
    s = Schedule(cron="30 2 * * *", timezone="Europe/Berlin")
    # 2024-03-31 02:30 does not exist in Berlin (clocks jump 02:00 -> 03:00): cron runs at 03:00
    assert s.next_after(ts(2024, 3, 30, 12, tz=berlin)) == ts(2024, 3, 31, 3, 0, tz=berlin)
    assert s.next_after(ts(2024, 3, 31, 12, tz=berlin)) == ts(2024, 4, 1, 2, 30, tz=berlin)
    # the same schedule in UTC is an hour or two apart from Berlin's
    assert Schedule(cron="30 2 * * *", timezone="UTC").next_after(ts(2024, 4, 1)) == \
        ts(2024, 4, 1, 2, 30)


def test_missed_runs_are_found_between_the_last_due_time_and_now():
    s = Schedule(cron="0 * * * *", timezone="UTC")
    last = ts(2024, 1, 1, 10, 0)
    assert s.missed(last, ts(2024, 1, 1, 10, 59)) is None
    assert s.missed(last, ts(2024, 1, 1, 11, 0)) == ts(2024, 1, 1, 11, 0)
    assert s.missed(last, ts(2024, 1, 1, 15, 20)) == ts(2024, 1, 1, 15, 0)   # the latest
    every = Schedule(every=60.0)
    assert every.missed(1000.0, 1059.0) is None
    assert every.missed(1000.0, 5000.0) == 5000.0
    assert every.next_after(1000.0) == 1060.0 and every.describe() == "every 1m"
