"""The supervisor's timers: when to rescan the inboxes, read the running job's row, give up waiting for a
cancel, stop a job past its time limit, send a watchdog keep-alive, restart the web page, and how long the
main loop may sleep until the first of these is due.

Kept apart from the loop, on an injected clock (`svfrd.service.clock`), so tests advance time instead of
sleeping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from svfrd.service.clock import SYSTEM_CLOCK, Clock

#: While a job runs: how often its row is read (cancel requests, the status line).
RUNNING_CHECK_INTERVAL = 2.0
#: File events come in floods while a big file is copied in: scan at most this often because of them.
HINT_SCAN_SPACING = 0.5
#: A dead web page is restarted after this pause, doubled after each death that came soon after its start, up
#: to the cap; one that had run for RESTART_HEALTHY_AFTER was fine, and its next death starts over.
RESTART_FIRST_PAUSE = 1.0
RESTART_MAX_PAUSE = 300.0
RESTART_HEALTHY_AFTER = 60.0


@dataclass
class LoopTimers:
    scan_interval: float
    cancel_grace: float
    watchdog_interval: float | None = None  # None: no service manager asked for keep-alives
    clock: Clock = SYSTEM_CLOCK
    running_check_interval: float = RUNNING_CHECK_INTERVAL
    hint_scan_spacing: float = HINT_SCAN_SPACING

    def __post_init__(self) -> None:
        self.last_scan = -math.inf
        self.next_scan = -math.inf  # the first scan is due at once
        self.next_running_check = math.inf  # no job yet
        self.next_watchdog = -math.inf
        self.cancel_seen_at: float | None = None
        self.job_started_at = -math.inf
        self.job_timeout = math.inf

    # -- inbox scans -------------------------------------------------------------------------------------

    def scan_due(self, hinted: bool) -> bool:
        """Due by the scan interval, or early because file events hinted at a change (at most so often)."""
        now = self.clock.monotonic()
        return now >= self.next_scan or (hinted and now >= self.last_scan + self.hint_scan_spacing)

    def scan_started(self) -> None:
        self.last_scan = self.clock.monotonic()

    def scan_finished(self, next_file_ready_in: float | None) -> None:
        """A file waiting out its quiet period is looked at again as soon as it may be ready."""
        due = self.scan_interval if next_file_ready_in is None else min(self.scan_interval, next_file_ready_in)
        self.next_scan = self.clock.monotonic() + due

    # -- the running job ---------------------------------------------------------------------------------

    def job_started(self) -> None:
        self.job_started_at = self.clock.monotonic()
        self.next_running_check = self.job_started_at + self.running_check_interval
        self.cancel_seen_at = None
        self.job_timeout = math.inf

    def set_job_timeout(self, seconds: float) -> None:
        """The running job may run `seconds` in all, counted from its start (its deadline may move later
        once its video's length is known)."""
        self.job_timeout = seconds

    def job_overdue(self) -> bool:
        return self.clock.monotonic() - self.job_started_at > self.job_timeout

    def job_running_for(self) -> float:
        return self.clock.monotonic() - self.job_started_at

    def running_check_due(self) -> bool:
        return self.clock.monotonic() >= self.next_running_check

    def running_checked(self) -> None:
        self.next_running_check = self.clock.monotonic() + self.running_check_interval

    def cancel_overdue(self) -> bool:
        """Called at each check that finds the running job's cancel requested: whether the worker has had
        `cancel_grace` seconds since the first such check to stop by itself."""
        now = self.clock.monotonic()
        if self.cancel_seen_at is None:
            self.cancel_seen_at = now
        return now - self.cancel_seen_at > self.cancel_grace

    # -- the service manager -----------------------------------------------------------------------------

    def watchdog_due(self) -> bool:
        return bool(self.watchdog_interval) and self.clock.monotonic() >= self.next_watchdog

    def watchdog_sent(self) -> None:
        self.next_watchdog = self.clock.monotonic() + (self.watchdog_interval or 0.0)

    # -- sleeping ----------------------------------------------------------------------------------------

    def seconds_to_sleep(self, *, hinted: bool, job_running: bool, next_job_in: float | None,
                         restart_in: float | None = None) -> float:
        """Until the first thing due: a rescan, a hinted scan, the running job's check, a backed-off job
        (`next_job_in`, only asked while idle), a keep-alive, or the web page's restart (`restart_in`). Never
        negative."""
        now = self.clock.monotonic()
        deadlines = [self.next_scan]
        if hinted:
            deadlines.append(self.last_scan + self.hint_scan_spacing)
        if job_running:
            deadlines.append(self.next_running_check)
        elif next_job_in is not None:
            deadlines.append(now + next_job_in)
        if self.watchdog_interval:
            deadlines.append(self.next_watchdog)
        if restart_in is not None:
            deadlines.append(now + restart_in)
        return max(0.0, min(deadlines) - now)


@dataclass
class RestartBackoff:
    """When to restart a child process that died, or could not be started: never in a tight loop. A child
    that dies at once every time (its port taken) is tried again after 1, 2, 4 ... seconds, at most every
    RESTART_MAX_PAUSE."""

    clock: Clock = SYSTEM_CLOCK
    first_pause: float = RESTART_FIRST_PAUSE
    max_pause: float = RESTART_MAX_PAUSE
    healthy_after: float = RESTART_HEALTHY_AFTER

    def __post_init__(self) -> None:
        self.pause = self.first_pause
        self.started_at: float | None = None  # None: not running since the last failure
        self.due_at: float | None = None  # None: no restart waiting

    def started(self) -> None:
        self.started_at = self.clock.monotonic()
        self.due_at = None

    def failed(self) -> float:
        """The child died or could not start: schedule the next try and return the pause before it."""
        now = self.clock.monotonic()
        if self.started_at is not None and now - self.started_at >= self.healthy_after:
            self.pause = self.first_pause
        self.started_at = None
        pause = self.pause
        self.pause = min(self.pause * 2, self.max_pause)
        self.due_at = now + pause
        return pause

    def due(self) -> bool:
        return self.due_at is not None and self.clock.monotonic() >= self.due_at

    def seconds_until_due(self) -> float | None:
        return None if self.due_at is None else max(0.0, self.due_at - self.clock.monotonic())


@dataclass
class Periodic:
    """Something done every `interval` seconds on `clock` (the lease heartbeat): due at once the first time."""

    interval: float
    clock: Clock = SYSTEM_CLOCK

    def __post_init__(self) -> None:
        self.next_due = -math.inf

    def due(self) -> bool:
        return self.clock.monotonic() >= self.next_due

    def done(self) -> None:
        self.next_due = self.clock.monotonic() + self.interval

    def seconds_until_due(self) -> float:
        return max(0.0, self.next_due - self.clock.monotonic())
