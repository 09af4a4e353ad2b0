"""A clock that moves only when a test says so (see `svfrd.service.clock`)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone


class FakeClock:
    """Both faces of time: `monotonic()` (also by calling the clock itself, as intake's stability tracker
    does) and `now()`, the aware UTC wall clock."""

    def __init__(self, start: datetime = datetime(2026, 1, 1, tzinfo=timezone.utc)):
        self._monotonic = 1000.0
        self._now = start

    def monotonic(self) -> float:
        return self._monotonic

    __call__ = monotonic

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._monotonic += seconds
        self._now += timedelta(seconds=seconds)
