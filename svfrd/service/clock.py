"""The time the service runs on, passed in so that tests advance a fake clock instead of sleeping.

`monotonic()` times intervals (rescans, running-job checks, the cancel grace, watchdog keep-alives); `now()` is
the wall clock, aware UTC, compared with the times stored in job rows (a retry's `not_before`).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Protocol

from svfrd.jobs.model import utcnow


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def now(self) -> datetime: ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return utcnow()


SYSTEM_CLOCK = SystemClock()
