"""`[schedule] active` on an injected clock, in a fixed time zone (UTC+2) so "local time" is exercised."""

from datetime import datetime, timedelta, timezone

import pytest

from svfrd.service.schedule import Schedule, ScheduleError, parse_window
from tests.helpers.clock import FakeClock

ZONE = timezone(timedelta(hours=2))


def local(text: str) -> datetime:
    """A local wall-clock time in ZONE, e.g. "2026-01-02 19:00" (2 January 2026 is a Friday)."""
    return datetime.fromisoformat(text).replace(tzinfo=ZONE)


def schedule(*windows: str) -> Schedule:
    return Schedule.parse(list(windows), zone=ZONE)


def test_no_windows_means_always_active():
    assert schedule().is_active(local("2026-01-02 12:00"))
    assert schedule().next_change(local("2026-01-02 12:00")) is None
    assert schedule().describe(local("2026-01-02 12:00")) == ""


def test_a_window_over_midnight_runs_into_the_next_morning():
    night = schedule("19:00-07:00")
    assert not night.is_active(local("2026-01-02 18:59"))
    assert night.is_active(local("2026-01-02 19:00"))
    assert night.is_active(local("2026-01-03 06:59"))
    assert not night.is_active(local("2026-01-03 07:00"))
    assert night.next_change(local("2026-01-02 12:00")) == local("2026-01-02 19:00")
    assert night.next_change(local("2026-01-02 23:00")) == local("2026-01-03 07:00")


def test_the_comparison_is_in_local_time_whatever_the_clock_zone():
    utc_noon = datetime(2026, 1, 2, 17, 30, tzinfo=timezone.utc)  # 19:30 in ZONE
    assert schedule("19:00-07:00").is_active(utc_noon)
    change = schedule("19:00-07:00").next_change(utc_noon)
    assert change == local("2026-01-03 07:00") and change.tzinfo == timezone.utc


def test_day_windows_and_touching_windows_merge():
    weekend_and_nights = schedule("19:00-07:00", "sat 00:00-24:00")
    friday_evening = local("2026-01-02 20:00")
    # Friday night, all of Saturday and Saturday night run into one span ending Sunday 07:00.
    assert weekend_and_nights.next_change(friday_evening) == local("2026-01-04 07:00")
    assert weekend_and_nights.is_active(local("2026-01-03 12:00"))
    assert not weekend_and_nights.is_active(local("2026-01-05 12:00"))  # Monday noon
    assert weekend_and_nights.describe(local("2026-01-05 12:00")) == "outside schedule until 19:00"


def test_a_day_window_over_midnight_ends_the_next_day():
    friday_night = schedule("fri 22:00-02:00")
    assert friday_night.is_active(local("2026-01-03 01:00"))  # Saturday 01:00
    assert not friday_night.is_active(local("2026-01-03 23:00"))
    assert friday_night.next_change(local("2026-01-03 03:00")) == local("2026-01-09 22:00")
    assert friday_night.describe(local("2026-01-03 03:00")) == "outside schedule until fri 22:00"


def test_whole_days_every_day_never_change():
    assert schedule("00:00-24:00").next_change(local("2026-01-02 12:00")) is None


def test_the_schedule_follows_an_advancing_clock():
    clock = FakeClock(start=local("2026-01-02 06:00").astimezone(timezone.utc))
    night = schedule("19:00-07:00")
    seen = []
    for _ in range(4):
        seen.append(night.is_active(clock.now()))
        change = night.next_change(clock.now())
        clock.advance((change - clock.now()).total_seconds())
    assert seen == [True, False, True, False]
    assert clock.now() == local("2026-01-03 19:00")


@pytest.mark.parametrize("text, words", [
    ("7pm-7am", "is not a window"),
    ("19:00", "is not a window"),
    ("fry 19:00-20:00", "'fry' is not a day"),
    ("25:00-07:00", "25:00 is not a time of day"),
    ("19:60-07:00", "19:60 is not a time of day"),
    ("24:00-07:00", "24:00 is not a time of day"),
    ("08:00-08:00", "starts and ends at the same time"),
    (19, "is not a string"),
])
def test_bad_windows_are_explained(text, words):
    with pytest.raises(ScheduleError, match=words):
        parse_window(text)


def test_active_must_be_a_list():
    with pytest.raises(ScheduleError, match="must be a list"):
        Schedule.parse("19:00-07:00")
