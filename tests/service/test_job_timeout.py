"""A job past its time limit ([limits] job_timeout_per_frame x its frames, at least job_timeout_min) is stopped
by the supervisor even when its engine is wedged, and fails with a message saying the limit, why, and the keys.
The supervisor runs on a fake clock with a real worker process hanging in the test StuckEngine: time is
advanced, never slept."""

from __future__ import annotations

import time

import pytest

from svfrd.config import load_config
from svfrd.files.hashing import file_sha256
from svfrd.jobs.database import open_database, upgrade_database
from svfrd.jobs.store import enqueue_job, get_job
from svfrd.service.supervisor import Supervisor
from tests.helpers.clock import FakeClock
from tests.helpers.engines import MARKER_ENV
from tests.helpers.service import ServiceFolder, write_face_clip


def pump(supervisor: Supervisor, what: str, condition, timeout: float = 60.0) -> None:
    """Let the supervisor handle its worker's messages until `condition()` holds. The wait is on the worker's
    pipe and process (select), as in the daemon's loop; the clock the supervisor decides with stays fake."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        supervisor._wait(0.5)
        supervisor._handle_worker()


@pytest.fixture
def stuck_service(tmp_path, monkeypatch):
    folder = ServiceFolder(tmp_path / "svfrd", engine="tests.helpers.engines:StuckEngine",
                           limits={"job_timeout_per_frame": 10.0, "job_timeout_min": 5.0})
    monkeypatch.setenv(MARKER_ENV, str(folder.root / "markers"))
    config = load_config(folder.config_path)
    upgrade_database(config.service.database_url)
    db = open_database(config.service.database_url)
    clock = FakeClock()
    supervisor = Supervisor(config, db, clock=clock)
    supervisor.worker.start()
    yield folder, supervisor, clock
    supervisor.worker.stop()
    supervisor.wakeup.close()
    db.dispose()


def test_a_wedged_job_is_stopped_at_its_time_limit_and_fails_saying_why(stuck_service, caplog):
    folder, supervisor, clock = stuck_service
    video = write_face_clip(folder.inbox / "stuck.mp4", frames=2)
    job = enqueue_job(supervisor.db, inbox=str(folder.inbox), source_name="stuck.mp4", source_path=str(video),
                      tasks="0", content_hash=file_sha256(video))
    pump(supervisor, "the worker to be ready", lambda: supervisor.worker.idle)
    stuck_worker = supervisor.worker.pid
    supervisor._start_next_job()
    pump(supervisor, "the engine to hang", lambda: (folder.root / "markers" / "stuck").exists())
    assert supervisor.worker.job_frames == 2 and supervisor.worker.timers.job_timeout == 20.0  # 10 s x 2 frames, over 5 s

    clock.advance(20.0)
    supervisor._check_running_job()
    assert get_job(supervisor.db, job.id).state == "running"  # exactly at the limit: still allowed
    clock.advance(2.0)
    supervisor._check_running_job()

    failed = get_job(supervisor.db, job.id)
    assert failed.state == "failed" and failed.error_kind == "bad_input" and failed.attempts == 0
    assert "stopped after 22 s: stuck.mp4 took longer than its time limit of 20 s" in failed.error_message
    assert "[limits] job_timeout_per_frame = 10 s x 2 frames" in failed.error_message
    assert "[limits] job_timeout_min = 5 s" in failed.error_message
    assert "The engine may be stuck" in failed.error_message and f"svfrd retry {job.id}" in failed.error_message
    assert folder.files("failed") == ["stuck.error.txt", "stuck.mp4"] and folder.files("outbox") == []
    assert "took longer than its time limit" in (folder.root / "failed" / "stuck.error.txt").read_text()
    assert f"job {job.id}: stopped after 22 s: stuck.mp4 took longer" in caplog.text  # the job's log says why
    # The wedged worker is gone and a fresh one takes the next job.
    assert supervisor.worker.job is None and supervisor.worker.pid != stuck_worker and supervisor.worker.alive
