"""The supervisor's main loop after an error (issue 16): it pauses on its clock even when a dead worker's
handles are always ready, a dead worker is restarted even when its job cannot be settled, and an error that
repeats is logged once with a count. The clock is a FakeClock; the worker a stand-in that counts starts."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from svfrd.config import load_config
from svfrd.jobs.database import open_database, upgrade_database
from svfrd.ops.logs import make_handler
from svfrd.service import supervisor as supervisor_module
from svfrd.service.supervisor import LOOP_ERROR_PAUSE, Supervisor
from svfrd.service.timers import LoopTimers
from tests.helpers.clock import FakeClock


@dataclass
class DeadWorker:
    """A worker process that has died: nothing to receive, not alive, a job it was running."""

    job: object = None
    ready: bool = True
    starts: int = 0
    process: object = field(default_factory=lambda: SimpleNamespace(exitcode=-9))
    timers: LoopTimers = field(default_factory=lambda: LoopTimers(scan_interval=10.0, cancel_grace=15.0))
    job_frames: int | None = None
    startup_deaths: int = 0
    device: str = "cpu"
    name: str = "worker 4242 (cpu)"

    alive = False
    idle = False
    pid = 4242

    def receive(self) -> list:
        return []

    def kill(self) -> None:
        pass

    def start(self) -> None:
        self.starts += 1
        self.job = None

    def wait_objects(self) -> list:
        return []


@pytest.fixture
def supervisor(tmp_path, monkeypatch):
    (tmp_path / "config.toml").write_text('[[inbox]]\npath = "inbox"\n')
    config = load_config(tmp_path / "config.toml")
    upgrade_database(config.service.database_url)
    db = open_database(config.service.database_url)
    supervisor = Supervisor(config, db, clock=FakeClock())
    supervisor.worker = DeadWorker(job=SimpleNamespace(id=7, source_name="clip.mp4", claim_token=None))
    supervisor.waits = []
    # What the loop would sleep on: a dead worker's pipe and sentinel make a real select return at once.
    monkeypatch.setattr(supervisor, "_wait", lambda timeout, **how: supervisor.waits.append((timeout, how)))
    yield supervisor
    supervisor.wakeup.close()
    db.dispose()


def test_after_an_error_the_loop_pauses_on_its_clock_and_a_dead_worker_is_restarted(supervisor, monkeypatch):
    def settle_fails(*_args):
        raise OSError(36, "File name too long")

    monkeypatch.setattr(supervisor_module.recovery, "settle_orphaned_job", settle_fails)

    supervisor._guarded(supervisor._step)
    assert supervisor.worker.starts == 1, "the dead worker is restarted although its job could not be settled"

    attempts = []

    def start_fails() -> None:
        attempts.append(supervisor.clock.monotonic())
        raise RuntimeError("cannot start a process")

    supervisor.worker = DeadWorker(job=SimpleNamespace(id=8, source_name="b.mp4", claim_token=None))
    monkeypatch.setattr(supervisor.worker, "start", start_fails)
    supervisor._guarded(supervisor._step)
    [*_, (pause, how)] = supervisor.waits
    assert pause == LOOP_ERROR_PAUSE and how == {"watch_worker": False}, "a dead worker's handles cannot wake it"
    for _ in range(5):  # woken early (as the dead worker's handles woke it): still paused, nothing is retried
        supervisor._guarded(supervisor._step)
    assert len(attempts) == 1
    supervisor.clock.advance(LOOP_ERROR_PAUSE)
    supervisor._guarded(supervisor._step)
    assert len(attempts) == 2


def test_an_error_that_repeats_is_logged_once_with_a_count(supervisor, caplog):
    def step():
        raise OSError(36, "File name too long")

    with caplog.at_level(logging.INFO, logger="svfrd.service.supervisor"):
        for _ in range(1000):
            supervisor._guarded(step)
            supervisor.clock.advance(LOOP_ERROR_PAUSE)
        supervisor._guarded(lambda: None)
    messages = [record.getMessage() for record in caplog.records]
    assert sum(record.exc_info is not None for record in caplog.records) == 1
    assert len(messages) <= 6, messages
    assert any("happened 1000 times in a row" in message for message in messages)


def test_a_job_past_its_time_limit_is_settled_like_any_dead_workers_job(supervisor, monkeypatch, caplog):
    """One way to restart a worker: killed for its time limit, it goes through the same death handling, so a
    failure to record the job's end neither escapes the check nor leaves the loop without a worker."""
    def settle_fails(*_args):
        raise OSError(36, "File name too long")

    monkeypatch.setattr(supervisor_module.recovery, "settle_timed_out_job", settle_fails)
    supervisor.worker.timers = LoopTimers(scan_interval=10.0, cancel_grace=15.0, clock=supervisor.clock)
    supervisor.worker.timers.job_started()
    supervisor.worker.timers.set_job_timeout(10.0)
    supervisor.clock.advance(11.0)
    with caplog.at_level(logging.ERROR):
        supervisor._check_running_job()
    assert supervisor.worker.starts == 1 and supervisor.worker.job is None
    assert "job 7: could not record the end of this job" in caplog.text and "File name too long" in caplog.text


def test_the_traceback_of_a_loop_error_keeps_its_lines(supervisor):
    """A traceback passed inside the message was escaped into one line of `\\n`s by the log formatter."""
    stream = io.StringIO()
    handler = make_handler(stream)
    supervisor_module.log.addHandler(handler)
    try:
        supervisor._guarded(lambda: 1 / 0)
    finally:
        supervisor_module.log.removeHandler(handler)
    text = stream.getvalue()
    assert "counted)\nTraceback (most recent call last):\n" in text and "ZeroDivisionError" in text
    assert "\\n" not in text
