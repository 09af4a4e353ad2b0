"""The one place that says whether a job may start now and whether the running one must stop, from the pause
(svfrd.service.pause), the schedule (svfrd.service.schedule) and `svfrd run-now` (docs/architecture.md,
"Pause, schedule, priority, notifications").

Closed (paused, or outside the schedule): only run-now jobs start, and the worker is let go so the GPU is
free. A running job is stopped (back in the queue, no attempt counted) by `pause` and by the end of a schedule
window, but not by `pause --after-current`, and never if it was started with `run-now`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from sqlalchemy import Engine as Database

from svfrd.jobs.model import Job
from svfrd.service.clock import SYSTEM_CLOCK, Clock
from svfrd.service.pause import Pause, read_pause
from svfrd.service.schedule import Schedule


@dataclass(frozen=True)
class GateState:
    pause: Pause
    in_schedule: bool
    #: When the schedule next opens or closes (None: never): the daemon sets a timer for it.
    schedule_change: datetime | None
    schedule_text: str  # "outside schedule until 19:00"; "" without a schedule

    @property
    def open(self) -> bool:
        """Whether any job may start; closed, only run-now jobs do."""
        return self.pause is Pause.NONE and self.in_schedule

    def must_stop(self, job: Job) -> bool:
        if job.run_now:
            return False
        return self.pause is Pause.NOW or not self.in_schedule

    def why_stopped(self) -> str:
        if self.pause is Pause.NOW:
            return "paused (`svfrd resume` lets it go on)"
        return self.schedule_text

    def describe(self) -> str:
        """For the status view and `svfrd status`: "paused", "paused after current", "outside schedule until
        19:00", or "" when jobs run."""
        return "; ".join(text for text in (self.pause.label, "" if self.in_schedule else self.schedule_text) if text)

    def seconds_until_change(self, now: datetime) -> float | None:
        if self.schedule_change is None:
            return None
        return max(0.0, (self.schedule_change - now).total_seconds())


def control_text(db: Database, schedule: Schedule, now: datetime) -> str:
    """What `svfrd status` and the status view say about the pause and the schedule ("" when jobs run)."""
    return Gate(schedule, lambda: read_pause(db)).check(now).describe()


def queue_mark(job: Job) -> str:
    """A queued job's place in the order: "now" (run-now) or its priority."""
    return "now" if job.run_now else str(job.priority)


class Gate:
    def __init__(self, schedule: Schedule, read_pause: Callable[[], Pause], clock: Clock = SYSTEM_CLOCK):
        self.schedule, self.read_pause, self.clock = schedule, read_pause, clock

    def check(self, now: datetime | None = None) -> GateState:
        """The gate at `now` (the clock's now by default)."""
        now = now or self.clock.now()
        return GateState(pause=self.read_pause(), in_schedule=self.schedule.is_active(now),
                         schedule_change=self.schedule.next_change(now), schedule_text=self.schedule.describe(now))
