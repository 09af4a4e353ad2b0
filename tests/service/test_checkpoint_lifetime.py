"""A job's checkpoints (STATE_DIR/checkpoints/job<ID>/) outlive an interruption (a stop, a pause: the worker's
WorkerInterrupted) and go when the job ends; the worker also removes those of jobs that ended elsewhere."""

from __future__ import annotations

import json

import pytest

from svfrd.files.hashing import file_sha256
from svfrd.jobs.checkpoints import job_folder
from svfrd.jobs.store import claim_next_job, enqueue_job, get_job
from svfrd.service import worker
from svfrd.service.messages import Outcome
from svfrd.service.worker import JobRunner
from tests.helpers.engines import InvertingEngine
from tests.helpers.service import ServiceFolder, write_face_clip


class PerFrameEngine(InvertingEngine):
    """Each crop's result depends on that crop alone, so a resumed run restarts it at the first missing frame."""

    resume_context = 0


class InterruptedAtFrame(PerFrameEngine):
    """Asks the worker to stop at frame 12, as `svfrd pause` or a clean stop of the daemon does (SIGUSR1)."""

    def restore(self, request, crops, progress):
        for index, restored in enumerate(super().restore(request, crops, progress)):
            if index == 12:
                worker._interrupt_requested.set()
            yield restored


@pytest.fixture
def service(tmp_path):
    folder = ServiceFolder(tmp_path / "svfrd", output={"segment_seconds": 0.2})
    with folder.open_store() as (config, db):
        yield folder, config, db
        worker._interrupt_requested.clear()


def queued_clip(folder, db, name="clip.mp4", tag=5):
    video = write_face_clip(folder.inbox / name, tag=tag, frames=20)
    return enqueue_job(db, inbox=str(folder.inbox), source_name=name, source_path=str(video), tasks="0",
                       content_hash=file_sha256(video))


def test_an_interrupted_job_keeps_its_checkpoints_and_the_next_run_resumes_then_removes_them(service):
    folder, config, db = service
    job = queued_clip(folder, db)
    claim_next_job(db, worker_pid=1)

    finished = JobRunner(config, db, InterruptedAtFrame(config.engine)).run(job.id)

    checkpoints = job_folder(config.service.state_dir, job.id)
    assert finished.outcome == Outcome.INTERRUPTED and get_job(db, job.id).state == "queued"
    assert sorted(p.name for p in checkpoints.glob("segment-*.mp4"))[:2] == ["segment-000000.mp4",
                                                                             "segment-000001.mp4"]
    worker._interrupt_requested.clear()
    claim_next_job(db, worker_pid=1)

    finished = JobRunner(config, db, PerFrameEngine(config.engine)).run(job.id)

    assert finished.outcome == Outcome.DONE and not checkpoints.exists()
    report = json.loads((folder.outbox / "clip.report.json").read_text())
    assert report["resume"]["from_frame"] >= 10 and report["resume"]["face_pass_reused"] is True


def test_checkpoints_of_jobs_that_ended_elsewhere_are_removed_and_a_queued_jobs_kept(service):
    folder, config, db = service
    queued = queued_clip(folder, db)
    kept, gone = job_folder(config.service.state_dir, queued.id), job_folder(config.service.state_dir, 99)
    for path in (kept, gone):
        path.mkdir(parents=True)
        (path / "segments-00000001.ckpt").write_bytes(b"x")

    JobRunner(config, db, PerFrameEngine(config.engine)).remove_checkpoints_of_ended_jobs()

    assert kept.is_dir() and not gone.exists()
