"""`[schedule] active`: the hours in which jobs may run (docs/architecture.md, "Pause, schedule, priority,
notifications").

Each window is "HH:MM-HH:MM" (every day) or "DAY HH:MM-HH:MM" (DAY one of mon..sun), in local time. A window
whose end is not after its start runs over midnight: "19:00-07:00" is 19:00 to 07:00 the next morning, and
"fri 19:00-07:00" ends on Saturday morning. "24:00" is the end of the day. No windows: always active.

Times are compared as wall-clock times in the given time zone (by default the machine's), so "19:00" stays
19:00 across a change to or from summer time. The supervisor asks `is_active(now)` and sleeps until
`next_change(now)` instead of polling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(r"^\s*(?:(?P<day>[a-z]{3})\s+)?(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$")
EXAMPLE = '["19:00-07:00", "sat 00:00-24:00"]'


class ScheduleError(ValueError):
    """A window that cannot be read; the message quotes it and shows the form."""


@dataclass(frozen=True)
class Window:
    day: int | None  # 0 = Monday; None: every day
    start: int  # minutes after midnight, 0..1439
    end: int  # minutes after midnight, 1..1440; <= start: the window ends the next day

    def spans_on(self, date: datetime) -> tuple[datetime, datetime] | None:
        """The window's span that starts on `date`'s day (naive wall-clock times), or None if it does not."""
        if self.day is not None and date.weekday() != self.day:
            return None
        midnight = date.replace(hour=0, minute=0, second=0, microsecond=0)
        end = self.end if self.end > self.start else self.end + 24 * 60
        return midnight + timedelta(minutes=self.start), midnight + timedelta(minutes=end)


def parse_window(text: object) -> Window:
    if not isinstance(text, str):
        raise ScheduleError(f"{text!r} is not a string; write each window as \"HH:MM-HH:MM\", e.g. {EXAMPLE}")
    match = _WINDOW.match(text.lower())
    if match is None:
        raise ScheduleError(f"{text!r} is not a window; write \"HH:MM-HH:MM\" or \"DAY HH:MM-HH:MM\" with DAY one "
                            f"of {', '.join(DAYS)}, e.g. {EXAMPLE}")
    day = match["day"]
    if day is not None and day not in DAYS:
        raise ScheduleError(f"{text!r}: {day!r} is not a day; use one of {', '.join(DAYS)}")
    start, end = _minutes(match["start"], text, allow_24=False), _minutes(match["end"], text, allow_24=True)
    if start == end:
        raise ScheduleError(f"{text!r} starts and ends at the same time; for a whole day write \"00:00-24:00\"")
    return Window(day=DAYS.index(day) if day else None, start=start, end=end)


def _minutes(clock: str, text: str, allow_24: bool) -> int:
    hours, minutes = (int(part) for part in clock.split(":"))
    if allow_24 and (hours, minutes) == (24, 0):
        return 24 * 60
    if hours > 23 or minutes > 59:
        latest = "24:00" if allow_24 else "23:59"
        raise ScheduleError(f"{text!r}: {clock} is not a time of day (00:00 to {latest})")
    return hours * 60 + minutes


@dataclass(frozen=True)
class Schedule:
    windows: tuple[Window, ...] = ()
    #: None: the machine's local time zone.
    zone: tzinfo | None = None

    @classmethod
    def parse(cls, texts: object, zone: tzinfo | None = None) -> "Schedule":
        if not isinstance(texts, list):
            raise ScheduleError(f"must be a list of windows, e.g. active = {EXAMPLE}")
        return cls(tuple(parse_window(text) for text in texts), zone)

    @property
    def always(self) -> bool:
        return not self.windows

    def is_active(self, now: datetime) -> bool:
        if self.always:
            return True
        wall = self._wall(now)
        return any(start <= wall < end for start, end in self._spans_around(wall))

    def next_change(self, now: datetime) -> datetime | None:
        """When `is_active` next changes, as an aware time in `now`'s zone; None if it never does."""
        if self.always:
            return None
        wall = self._wall(now)
        active = self.is_active(now)
        spans = self._merged(self._spans_around(wall))
        if active:
            ends = [end for start, end in spans if start <= wall < end]
            change = ends[0] if ends else None
        else:
            starts = [start for start, _ in spans if start > wall]
            change = starts[0] if starts else None
        if change is None or change - wall > timedelta(days=7):  # a window around the clock, every day
            return None
        return self._aware(change).astimezone(now.tzinfo)

    def _wall(self, now: datetime) -> datetime:
        local = now.astimezone(self.zone) if self.zone is not None else now.astimezone()
        return local.replace(tzinfo=None)

    def _aware(self, wall: datetime) -> datetime:
        if self.zone is not None:
            return wall.replace(tzinfo=self.zone)
        return wall.astimezone()  # a naive time is read as the machine's local time

    def _spans_around(self, wall: datetime) -> list[tuple[datetime, datetime]]:
        """Every window's spans starting from the day before `wall` to eight days after, sorted."""
        spans = []
        for offset in range(-1, 9):
            day = wall + timedelta(days=offset)
            spans += [span for window in self.windows if (span := window.spans_on(day)) is not None]
        return sorted(spans)

    @staticmethod
    def _merged(spans: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
        """Touching or overlapping spans as one: "sat 00:00-24:00" and "sun 00:00-07:00" end on Sunday 07:00."""
        merged: list[tuple[datetime, datetime]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return merged

    def describe(self, now: datetime) -> str:
        """For `status`: "" when always active, else e.g. "outside schedule until 19:00"."""
        if self.always:
            return ""
        change = self.next_change(now)
        state = "inside schedule" if self.is_active(now) else "outside schedule"
        if change is None:
            return state
        local = change.astimezone(self.zone) if self.zone is not None else change.astimezone()
        same_day = local.date() == self._wall(now).date()
        when = local.strftime("%H:%M") if same_day else local.strftime("%a %H:%M").lower()
        return f"{state} until {when}"
