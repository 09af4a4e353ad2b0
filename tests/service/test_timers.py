"""The supervisor's timers on a fake clock: rescans, the running job's checks, the cancel grace, watchdog
keep-alives and how long the idle loop sleeps (a backed-off job wakes it in time)."""

from __future__ import annotations

import pytest

from svfrd.config import load_config
from svfrd.service.timers import HINT_SCAN_SPACING, RUNNING_CHECK_INTERVAL, LoopTimers
from tests.helpers.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def timers(clock: FakeClock, **settings) -> LoopTimers:
    return LoopTimers(**{"scan_interval": 10.0, "cancel_grace": 15.0, "clock": clock, **settings})


def test_the_first_scan_is_due_at_once_then_once_per_scan_interval(clock):
    t = timers(clock)
    assert t.scan_due(hinted=False)
    t.scan_started()
    t.scan_finished(None)
    clock.advance(9.9)
    assert not t.scan_due(hinted=False)
    clock.advance(0.1)
    assert t.scan_due(hinted=False)


def test_file_events_bring_a_scan_forward_but_no_more_often_than_the_spacing(clock):
    t = timers(clock)
    t.scan_started()
    t.scan_finished(None)
    assert not t.scan_due(hinted=True)
    assert t.seconds_to_sleep(hinted=True, job_running=False, next_job_in=None) == HINT_SCAN_SPACING
    clock.advance(HINT_SCAN_SPACING)
    assert t.scan_due(hinted=True) and not t.scan_due(hinted=False)


def test_a_file_in_its_quiet_period_is_looked_at_again_as_soon_as_it_may_be_ready(clock):
    t = timers(clock)
    t.scan_started()
    t.scan_finished(next_file_ready_in=1.5)
    assert t.seconds_to_sleep(hinted=False, job_running=False, next_job_in=None) == 1.5
    clock.advance(1.5)
    assert t.scan_due(hinted=False)


def test_the_running_job_is_checked_every_interval(clock):
    t = timers(clock)
    t.scan_finished(None)
    assert not t.running_check_due()  # no job yet
    t.job_started()
    assert t.seconds_to_sleep(hinted=False, job_running=True, next_job_in=None) == RUNNING_CHECK_INTERVAL
    clock.advance(RUNNING_CHECK_INTERVAL)
    assert t.running_check_due()
    t.running_checked()
    assert not t.running_check_due()


def test_a_cancel_is_overdue_only_once_the_grace_since_it_was_first_seen_has_passed(clock):
    t = timers(clock, cancel_grace=3.0)
    t.job_started()
    assert not t.cancel_overdue()  # first seen now
    clock.advance(3.0)
    assert not t.cancel_overdue()
    clock.advance(0.1)
    assert t.cancel_overdue()
    t.job_started()  # the next job starts with a clean slate
    assert not t.cancel_overdue()


def test_keep_alives_are_due_at_once_then_every_interval_and_wake_the_loop(clock):
    t = timers(clock, watchdog_interval=0.5)
    t.scan_finished(None)
    assert t.watchdog_due()
    t.watchdog_sent()
    assert not t.watchdog_due()
    assert t.seconds_to_sleep(hinted=False, job_running=False, next_job_in=None) == 0.5
    clock.advance(0.5)
    assert t.watchdog_due()
    assert not timers(clock).watchdog_due()  # no service manager asked for them


def test_an_idle_loop_sleeps_until_a_backed_off_job_is_due_but_never_past_a_rescan(clock):
    t = timers(clock)
    t.scan_finished(None)
    assert t.seconds_to_sleep(hinted=False, job_running=False, next_job_in=4.0) == 4.0
    assert t.seconds_to_sleep(hinted=False, job_running=False, next_job_in=60.0) == 10.0
    assert t.seconds_to_sleep(hinted=False, job_running=False, next_job_in=0.0) == 0.0
    clock.advance(12.0)
    assert t.seconds_to_sleep(hinted=False, job_running=False, next_job_in=None) == 0.0  # overdue: no wait


def test_the_cancel_grace_and_interruption_limit_are_settings_with_documented_defaults(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[[inbox]]\npath = "inbox"\n')
    service = load_config(config).service
    assert (service.cancel_grace, service.max_service_interruptions) == (15.0, 10)
    config.write_text('[service]\ncancel_grace = 2\nmax_service_interruptions = 4\n\n[[inbox]]\npath = "inbox"\n')
    service = load_config(config).service
    assert (service.cancel_grace, service.max_service_interruptions) == (2.0, 4)


def test_a_job_is_overdue_only_past_its_time_limit_counted_from_its_start(clock):
    t = timers(clock)
    t.job_started()
    assert not t.job_overdue()  # no limit until one is set
    t.set_job_timeout(60.0)  # before the probe: [limits] job_timeout_min
    clock.advance(50.0)
    t.set_job_timeout(100.0)  # the probe found a long video: still counted from the start
    clock.advance(50.0)
    assert not t.job_overdue() and t.job_running_for() == 100.0
    clock.advance(0.1)
    assert t.job_overdue()
    t.job_started()  # the next job starts with a clean slate
    assert not t.job_overdue()
