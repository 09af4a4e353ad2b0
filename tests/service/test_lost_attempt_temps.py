"""An attempt that lost its claim leaves nothing in the (shared) outbox: its temporary results go when its job is
requeued after the lease expired (the host is dead: it would never remove them), and when its own daemon finds
the claim lost after killing its worker; kept only when that attempt had planned them, for the next attempt to
publish (docs/architecture.md, "Workers, claims and leases"). Real SQLite and files, times passed as `now`."""

from __future__ import annotations

from datetime import timedelta

import pytest

from svfrd.files.hashing import file_sha256
from svfrd.jobs.model import utcnow
from svfrd.jobs.store import claim_next_job, enqueue_job, get_job
from svfrd.service import recovery
from svfrd.service.results import plan_final_files, record_plan, temp_files
from svfrd.service.supervisor import Supervisor
from tests.helpers.clock import FakeClock
from tests.helpers.service import ServiceFolder, write_face_clip

LEASE = 90.0
ELSEWHERE = "other-host:/var/lib/svfrd"


@pytest.fixture
def service(tmp_path):
    folder = ServiceFolder(tmp_path / "svfrd")
    with folder.open_store() as (config, db):
        yield folder, config, db


def running_on(host, folder, db, now):
    """A job `host` claimed at `now`."""
    video = write_face_clip(folder.inbox / "clip.mp4", frames=3)
    enqueue_job(db, inbox=str(folder.inbox), source_name="clip.mp4", source_path=str(video), tasks="0",
                content_hash=file_sha256(video))
    return claim_next_job(db, 7, now=now, host=host, device="cpu", lease_seconds=LEASE)


def write_temps(config, job) -> list:
    temps = [path for _, path in temp_files(config, job).items()]
    for path in temps:
        path.write_text(f"partial results of job {job.id}")
    return temps


def test_a_job_requeued_after_its_lease_expired_takes_its_attempts_temporary_files_with_it(service):
    folder, config, db = service
    now = utcnow()
    dead = running_on(ELSEWHERE, folder, db, now)
    temps = write_temps(config, dead)

    requeued = recovery.requeue_jobs_with_expired_leases(config, db, now=now + timedelta(seconds=LEASE + 1))

    assert [job.id for job in requeued] == [dead.id] and get_job(db, dead.id).state == "queued"
    assert not any(path.exists() for path in temps)
    assert folder.files("outbox") == []


def test_temporary_files_an_expired_attempt_had_planned_stay_for_the_next_attempt(service):
    folder, config, db = service
    now = utcnow()
    dead = running_on(ELSEWHERE, folder, db, now)
    temps = write_temps(config, dead)
    record_plan(db, dead.id, plan_final_files(config, dead), frames=3, claim_token=dead.claim_token)

    recovery.requeue_jobs_with_expired_leases(config, db, now=now + timedelta(seconds=LEASE + 1))

    assert all(path.exists() for path in temps), "complete and named: the next attempt publishes them"


def test_a_daemon_whose_worker_lost_its_claim_removes_that_attempts_temporary_files(service):
    folder, config, db = service
    supervisor = Supervisor(config, db, clock=FakeClock())
    try:
        now = supervisor.clock.now()
        stale = running_on(supervisor.host, folder, db, now)
        later = now + timedelta(seconds=LEASE + 1)
        recovery.requeue_jobs_with_expired_leases(config, db, now=later)  # another daemon takes the job over
        newer = claim_next_job(db, 2, now=later, host=ELSEWHERE, device="cpu", lease_seconds=LEASE)
        stale_temps = write_temps(config, stale)  # written by the stale worker after the requeue
        newer_temps = write_temps(config, newer)

        supervisor._settle_job_of_dead_worker(stale, "signal 9, SIGKILL", None)

        assert not any(path.exists() for path in stale_temps)
        assert all(path.exists() for path in newer_temps), "the newer attempt's files are not touched"
        assert get_job(db, stale.id).claim_token == newer.claim_token
    finally:
        supervisor.wakeup.close()
