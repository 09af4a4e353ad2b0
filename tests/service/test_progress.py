"""The worker's progress reporter (svfrd.service.worker.JobProgress): called for every frame, it writes the job row
only every few seconds, estimates the time left, and is where a cancel or a stopping daemon takes effect."""

from __future__ import annotations

import pytest

from svfrd.errors import JobCancelled
from svfrd.jobs.database import open_database, upgrade_database
from svfrd.jobs.store import claim_next_job, enqueue_job, get_job, request_cancel
from svfrd.service.worker import JobProgress, WorkerInterrupted
from tests.helpers.clock import FakeClock


@pytest.fixture
def db_and_job(tmp_path):
    url = f"sqlite:///{tmp_path / 'svfrd.db'}"
    upgrade_database(url)
    db = open_database(url)
    enqueue_job(db, inbox="/in", source_name="clip.mp4", source_path="/in/clip.mp4", tasks="0", content_hash="c")
    job = claim_next_job(db, worker_pid=1)
    yield db, job
    db.dispose()


def test_writes_a_new_stage_at_once_and_then_at_most_every_interval(db_and_job):
    db, job = db_and_job
    clock = FakeClock()
    progress = JobProgress(db, job.id, interrupted=lambda: False, interval=2.0, clock=clock)

    progress("restore", 0, 100)
    for done in range(1, 10):  # nine frames within one second: no write
        clock.advance(0.1)
        progress("restore", done, 100)
    row = get_job(db, job.id)
    assert (row.stage, row.frames_done, row.frames_total) == ("restore", 0, 100)

    clock.advance(1.5)
    progress("restore", 10, 100)
    assert get_job(db, job.id).frames_done == 10


def test_estimates_the_time_left_from_the_rate_of_the_stage(db_and_job):
    db, job = db_and_job
    clock = FakeClock()
    progress = JobProgress(db, job.id, interrupted=lambda: False, interval=2.0, clock=clock)
    progress("restore", 0, 100)
    clock.advance(10.0)
    progress("restore", 25, 100)  # 25 frames in 10 s: 75 more take 30 s
    assert get_job(db, job.id).eta_seconds == pytest.approx(30.0)


def test_interleaved_stages_share_the_time_by_what_was_reported(db_and_job):
    db, job = db_and_job
    clock = FakeClock()
    progress = JobProgress(db, job.id, interrupted=lambda: False, clock=clock)
    for frame in range(3):
        progress("restore", frame, 3)
        clock.advance(2.0)
        progress("encode", frame, 3)
        clock.advance(1.0)
    assert progress.timings() == {"restore": 6.0, "encode": 3.0}


def test_a_cancel_request_stops_the_job_at_the_next_write(db_and_job):
    db, job = db_and_job
    clock = FakeClock()
    progress = JobProgress(db, job.id, interrupted=lambda: False, interval=2.0, clock=clock)
    progress("restore", 0, 10)
    request_cancel(db, job.id)
    clock.advance(2.5)
    with pytest.raises(JobCancelled, match="cancelled by the user"):
        progress("restore", 5, 10)


def test_a_stopping_daemon_interrupts_at_the_very_next_report(db_and_job):
    db, job = db_and_job
    stopping = False
    progress = JobProgress(db, job.id, interrupted=lambda: stopping, clock=FakeClock())
    progress("restore", 0, 10)
    stopping = True
    with pytest.raises(WorkerInterrupted):
        progress("restore", 1, 10)


def test_the_service_manager_status_line_names_the_file_stage_and_percent():
    from svfrd.jobs.model import Job
    from svfrd.service.supervisor import running_status

    job = Job(id=3, inbox="/in", source_name="interview.mp4", source_path="/in/interview.mp4", tasks="0",
              content_hash="h", dedupe_key="k", stage="pass 2", frames_done=42, frames_total=100)
    assert running_status(job) == "job 3: restoring interview.mp4 — pass 2, 42%"
    job.frames_total = None
    assert running_status(job) == "job 3: restoring interview.mp4 — pass 2"


def test_the_status_line_shows_control_characters_in_a_name_escaped():
    from svfrd.jobs.model import Job
    from svfrd.service.supervisor import running_status

    job = Job(id=3, inbox="/in", source_name="a\nREADY=1\x1b[2J.mp4", source_path="/in/x", tasks="0",
              content_hash="h", dedupe_key="k", stage="pass 2")
    assert running_status(job) == "job 3: restoring a\\nREADY=1\\x1b[2J.mp4 — pass 2"


def test_a_stage_reached_part_way_estimates_from_the_frames_done_in_it(db_and_job):
    db, job = db_and_job
    clock = FakeClock()
    progress = JobProgress(db, job.id, interrupted=lambda: False, interval=2.0, clock=clock)
    progress("face 2 of 2: restore", 50, 100)  # the first face's frames were done before this stage began
    clock.advance(10.0)
    progress("face 2 of 2: restore", 75, 100)  # 25 frames in 10 s: 25 more take 10 s
    assert get_job(db, job.id).eta_seconds == pytest.approx(10.0)
