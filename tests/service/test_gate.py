"""The gate (pause + schedule + run-now) on an injected clock, and the stored pause."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import SimpleNamespace

from svfrd.config import load_config
from svfrd.jobs.database import open_database, upgrade_database
from svfrd.jobs.store import claim_next_job, enqueue_job, request_run_now
from svfrd.service.gate import Gate
from svfrd.service.lock import LOCK_NAME
from svfrd.service.pause import Pause, read_pause, set_pause, wake_daemon
from svfrd.service.schedule import Schedule
from svfrd.service.supervisor import Supervisor
from svfrd.service.timers import LoopTimers
from tests.helpers.clock import FakeClock
from tests.helpers.paths import REPO_ROOT

UTC = timezone.utc
NIGHTS = Schedule.parse(["19:00-07:00"], zone=UTC)
JOB, RUN_NOW_JOB = SimpleNamespace(run_now=False), SimpleNamespace(run_now=True)


def gate_at(hour: int, pause: Pause = Pause.NONE, schedule: Schedule = NIGHTS) -> tuple[Gate, FakeClock]:
    clock = FakeClock(start=datetime(2026, 1, 2, hour, tzinfo=UTC))
    return Gate(schedule, lambda: pause, clock), clock


def test_inside_the_schedule_and_not_paused_jobs_start_and_run():
    state = gate_at(20)[0].check()
    assert state.open and not state.must_stop(JOB) and state.describe() == ""


def test_the_end_of_a_window_stops_a_running_job_but_not_a_run_now_one():
    gate, clock = gate_at(6)
    assert gate.check().open
    clock.advance(3600)  # 07:00
    state = gate.check()
    assert not state.open and state.must_stop(JOB) and not state.must_stop(RUN_NOW_JOB)
    assert state.describe() == "outside schedule until 19:00"
    assert state.seconds_until_change(clock.now()) == 12 * 3600  # the daemon's timer, not polling


def test_pause_now_stops_the_running_job_and_after_current_lets_it_finish():
    now, after = gate_at(20, Pause.NOW)[0].check(), gate_at(20, Pause.AFTER_CURRENT)[0].check()
    assert not now.open and now.must_stop(JOB) and not now.must_stop(RUN_NOW_JOB)
    assert not after.open and not after.must_stop(JOB)
    assert (now.describe(), after.describe()) == ("paused", "paused after current")
    paused_outside = gate_at(12, Pause.NOW)[0].check()
    assert paused_outside.describe() == "paused; outside schedule until 19:00"


def test_without_a_schedule_there_is_no_timer():
    state = gate_at(12, schedule=Schedule())[0].check()
    assert state.open and state.seconds_until_change(datetime.now(UTC)) is None


def test_the_pause_is_stored_and_read_back_by_another_connection(tmp_path):
    url = f"sqlite:///{tmp_path / 'svfrd.db'}"
    upgrade_database(url)
    db, other = open_database(url), open_database(url)
    try:
        assert read_pause(db) is Pause.NONE
        set_pause(db, Pause.AFTER_CURRENT)
        assert read_pause(other) is Pause.AFTER_CURRENT
        set_pause(other, Pause.NONE)
        assert read_pause(db) is Pause.NONE
    finally:
        db.dispose()
        other.dispose()


def test_a_stale_lock_file_is_never_signalled(tmp_path):
    # A lock file left by a dead daemon names a pid that may now be anybody's: with the lock free, no signal.
    (tmp_path / LOCK_NAME).write_text(f"pid={os.getppid()} host=x started=y\n")
    assert not wake_daemon(tmp_path)
    assert not wake_daemon(tmp_path / "never-ran")


HOLDER = """
import signal, sys
from svfrd.service.lock import acquire_state_lock
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
lock = acquire_state_lock(sys.argv[1])
print("holding", flush=True)
signal.sigwait([signal.SIGUSR1])
print("woken", flush=True)
"""


def test_the_process_holding_the_lock_is_woken(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        assert holder.stdout.readline() == "holding\n"
        assert wake_daemon(tmp_path)
        assert holder.communicate(timeout=20)[0] == "woken\n"
    finally:
        holder.kill()
        holder.wait()


@dataclass
class StandInWorker:
    """What the supervisor asks of a worker here: its job, whether it is idle, interrupt, let go, start."""

    job: object = None
    interrupted_job: int | None = None
    interrupts: int = 0
    process: object = "running"
    name: str = "worker 4242 (cpu)"
    timers: LoopTimers = field(default_factory=lambda: LoopTimers(scan_interval=10.0, cancel_grace=15.0))

    @property
    def idle(self) -> bool:
        return self.process is not None and self.job is None

    def interrupt(self) -> None:
        self.interrupts += 1

    def let_go(self) -> None:
        self.process = None

    def start(self) -> None:
        self.process = "running"


def test_the_supervisor_on_an_injected_clock_stops_the_job_at_the_windows_end_and_sleeps_until_it_opens(tmp_path):
    (tmp_path / "config.toml").write_text('[[inbox]]\npath = "inbox"\n')
    config = load_config(tmp_path / "config.toml")
    upgrade_database(config.service.database_url)
    db = open_database(config.service.database_url)
    clock = FakeClock(start=datetime(2026, 1, 2, 6, 59, tzinfo=UTC))
    supervisor = Supervisor(config, db, clock=clock)
    supervisor.gate = Gate(NIGHTS, lambda: read_pause(db), clock)
    _, waiting = (enqueue_job(db, inbox="/in", source_name=name, source_path=f"/in/{name}", tasks="0",
                                    content_hash=name) for name in ("a.mp4", "b.mp4"))
    busy, idle = StandInWorker(job=claim_next_job(db, 1)), StandInWorker()
    supervisor.workers = [busy, idle]
    try:
        supervisor.gate_state = supervisor.gate.check()
        supervisor._check_running_job(busy)
        assert busy.interrupts == 0  # 06:59: inside the window

        clock.advance(60)  # 07:00: the window ends
        supervisor.gate_state = supervisor.gate.check()
        supervisor._let_workers_go_while_closed()
        supervisor._check_running_job(busy)
        supervisor._check_running_job(busy)
        assert busy.interrupts == 1 and idle.process is None  # the job stopped once, the idle worker let go
        assert supervisor.gate_state.seconds_until_change(clock.now()) == 12 * 3600  # the loop's timer: 19:00

        request_run_now(db, waiting.id)  # a run-now job starts outside the window: a fresh worker for it
        supervisor._let_workers_go_while_closed()
        assert idle.process is not None
    finally:
        supervisor.wakeup.close()
        db.dispose()
