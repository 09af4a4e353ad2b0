"""Fencing (docs/architecture.md, "Workers, claims and leases"): a worker whose lease expired while it was away
(paused, cut off from the database) and whose job was claimed again publishes nothing and records nothing; the
newer attempt's results are the ones that reach the outbox. Real SQLite, real files, a fake clock's `now()`."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest

from svfrd.files.hashing import file_sha256
from svfrd.jobs.model import utcnow
from svfrd.jobs.store import ClaimLost, claim_next_job, enqueue_job, get_job, requeue_expired_leases
from svfrd.service.messages import Outcome
from svfrd.service.results import complete_publication, plan_final_files, record_plan, temp_files
from svfrd.service.worker import JobRunner
from tests.helpers.engines import InvertingEngine
from tests.helpers.service import ServiceFolder, write_face_clip

LEASE = 90.0


@pytest.fixture
def service(tmp_path):
    folder = ServiceFolder(tmp_path / "svfrd")
    with folder.open_store() as (config, db):
        yield folder, config, db


def queue_clip(folder, db, name="clip.mp4"):
    video = write_face_clip(folder.inbox / name, frames=3)
    return enqueue_job(db, inbox=str(folder.inbox), source_name=name, source_path=str(video), tasks="0",
                       content_hash=file_sha256(video))


def lose_the_lease(db, job_id: int) -> str:
    """The lease of the job's claim runs out (its daemon was away), any daemon requeues it, another claims it.
    Returns the newer claim's token."""
    later = utcnow() + timedelta(seconds=LEASE + 1)
    assert [job.id for job in requeue_expired_leases(db, 10, now=later)] == [job_id]
    newer = claim_next_job(db, 2, now=later, host="other:/state", device="cpu", lease_seconds=LEASE)
    assert newer.id == job_id
    return newer.claim_token


def test_a_stale_worker_cannot_publish_its_planned_results_and_the_newer_attempt_publishes_them_once(service):
    folder, config, db = service
    job = queue_clip(folder, db)
    stale = claim_next_job(db, 1, lease_seconds=LEASE)
    for _, temp in temp_files(config, stale).items():
        temp.write_text(f"results of job {job.id}")
    planned = record_plan(db, job.id, plan_final_files(config, stale), frames=3, claim_token=stale.claim_token)
    newer_token = lose_the_lease(db, job.id)

    with pytest.raises(ClaimLost):
        complete_publication(config, db, planned, "test", claim_token=stale.claim_token)
    assert not any(name.endswith(".restored.mp4") for name in folder.files("outbox")), "nothing renamed"
    assert get_job(db, job.id).state == "running"

    # The newer attempt finds the plan and publishes those complete results, exactly once.
    done = complete_publication(config, db, get_job(db, job.id), "test", claim_token=newer_token)
    assert done.state == "done" and folder.files("outbox") == ["clip.report.json", "clip.restored.mp4"]


class LeaseLostMidJob(InvertingEngine):
    """While it restores, the job's lease expires and another daemon takes the job (as when this worker's
    daemon was paused with SIGSTOP for longer than the lease)."""

    db = None

    def before_restore(self) -> None:
        self.newer_token = lose_the_lease(self.db, self.job_id)


def test_a_worker_that_lost_its_claim_mid_job_discards_its_temporary_files_and_records_nothing(service, caplog):
    folder, config, db = service
    job = queue_clip(folder, db)
    mine = claim_next_job(db, os.getpid(), lease_seconds=LEASE)
    engine = LeaseLostMidJob(config.engine)
    engine.db, engine.job_id = db, job.id

    with caplog.at_level("WARNING"):
        finished = JobRunner(config, db, engine).run(job.id, mine.claim_token)

    assert finished.outcome == Outcome.CLAIM_LOST
    row = get_job(db, job.id)
    assert (row.state, row.claim_token, row.attempts, row.output_path) == ("running", engine.newer_token, 0, None)
    assert folder.files("outbox") == [], "no result, no temporary file of the stale attempt"
    assert folder.files("inbox") == ["clip.mp4"], "the input stays for the newer attempt"
    assert f"job {job.id}: stopped without publishing" in caplog.text and "lease expired" in caplog.text
