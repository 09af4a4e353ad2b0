"""Claims record who runs a job under which token; leases send a dead host's job back to the queue after they
expire, never before; fencing keeps a worker that lost its claim from recording over a newer attempt. Time is a
fake clock's `now()`, passed in."""

from __future__ import annotations

import multiprocessing
from datetime import timedelta

import pytest

from svfrd.jobs.database import open_database
from svfrd.jobs.store import (
    ClaimLost,
    NameTaken,
    check_claim,
    claim_next_job,
    fail_job,
    finish_job,
    get_job,
    record_planned_results,
    record_progress,
    release_job,
    renew_lease,
    requeue_after_service_death,
    requeue_expired_leases,
)
from tests.helpers.clock import FakeClock
from tests.jobs.test_store import new_job

LEASE = 90.0


def claim(db, clock, host="host-a", device="cuda:0", pid=11):
    return claim_next_job(db, pid, now=clock.now(), host=host, device=device, lease_seconds=LEASE)


def test_a_claim_records_host_device_pid_a_fresh_token_and_the_lease(db):
    clock = FakeClock()
    job = new_job(db)
    claimed = claim(db, clock)
    assert (claimed.id, claimed.state, claimed.claim_host, claimed.claim_device, claimed.worker_pid) == (
        job.id, "running", "host-a", "cuda:0", 11)
    assert len(claimed.claim_token) == 32 and claimed.lease_expires_at == clock.now() + timedelta(seconds=LEASE)
    release_job(db, job.id)
    again = claim(db, clock, host="host-b", device="cuda:1")
    assert again.claim_token != claimed.claim_token, "every claim has its own token"
    assert (again.claim_host, again.claim_device) == ("host-b", "cuda:1")


def test_a_lease_expires_only_after_its_time_and_renewal_moves_it_on(db):
    clock = FakeClock()
    job = new_job(db)
    claimed = claim(db, clock)
    clock.advance(LEASE)
    assert requeue_expired_leases(db, 10, now=clock.now()) == [], "not before expiry"
    assert renew_lease(db, job.id, claimed.claim_token, LEASE, now=clock.now())
    clock.advance(LEASE - 1)
    assert requeue_expired_leases(db, 10, now=clock.now()) == [], "the renewal extended the lease"
    clock.advance(2)
    [requeued] = requeue_expired_leases(db, 10, now=clock.now())
    assert requeued.id == job.id and requeued.state == "queued" and requeued.claim_token is None
    assert requeued.service_interruptions == 1 and requeued.attempts == 0, "a dead host is not the job's fault"
    assert not renew_lease(db, job.id, claimed.claim_token, LEASE, now=clock.now()), "the lost lease is not renewed"
    assert claim(db, clock, host="host-b").id == job.id, "any host may take it now"


def test_a_worker_whose_claim_was_lost_can_record_nothing(db):
    clock = FakeClock()
    job = new_job(db)
    stale = claim(db, clock).claim_token
    clock.advance(LEASE + 1)
    requeue_expired_leases(db, 10, now=clock.now())
    newer = claim(db, clock, host="host-b").claim_token

    with pytest.raises(ClaimLost, match="no longer this worker's"):
        record_progress(db, job.id, "restore", 3, 10, None, claim_token=stale)
    with pytest.raises(ClaimLost):
        record_planned_results(db, job.id, output_path="/out/a.restored.mp4", report_path="/out/a.report.json",
                               frames=10, claim_token=stale)
    with pytest.raises(ClaimLost):
        finish_job(db, job.id, engine="x", output_path="/out/a.restored.mp4", report_path=None, claim_token=stale)
    with pytest.raises(ClaimLost):
        fail_job(db, job.id, RuntimeError("boom"), retry_backoff=1.0, claim_token=stale)
    with pytest.raises(ClaimLost):
        release_job(db, job.id, claim_token=stale)
    with pytest.raises(ClaimLost):
        check_claim(db, job.id, stale)

    row = get_job(db, job.id)
    assert (row.state, row.claim_token, row.output_path, row.frames_done) == ("running", newer, None, 0)
    check_claim(db, job.id, newer)
    finish_job(db, job.id, engine="x", output_path="/out/a.restored.mp4", report_path=None, claim_token=newer)
    assert get_job(db, job.id).state == "done"


def test_two_running_jobs_cannot_plan_the_same_final_name(db):
    clock = FakeClock()
    first, second = new_job(db, "a.mp4", "c1"), new_job(db, "trip/a.mp4", "c2")
    first_token, second_token = claim(db, clock).claim_token, claim(db, clock, device="cuda:1").claim_token
    record_planned_results(db, first.id, output_path="/out/a.restored.mp4", report_path="/out/a.report.json",
                           frames=4, claim_token=first_token)
    with pytest.raises(NameTaken):
        record_planned_results(db, second.id, output_path="/out/a.restored.mp4", report_path="/out/a.report.json",
                               frames=4, claim_token=second_token)
    planned = record_planned_results(db, second.id, output_path="/out/a-2.restored.mp4",
                                     report_path="/out/a-2.report.json", frames=4, claim_token=second_token)
    assert planned.plan_token == second_token


def test_start_up_recovery_requeues_only_the_jobs_this_daemon_claimed(db):
    clock = FakeClock()
    mine, theirs = new_job(db, "a.mp4", "c1"), new_job(db, "b.mp4", "c2")
    claim(db, clock, host="here:/state")
    claim(db, clock, host="there:/state")
    requeued = requeue_after_service_death(db, 10, host="here:/state")
    assert [job.id for job in requeued] == [mine.id]
    assert get_job(db, theirs.id).state == "running", "another host's job is governed by its lease"


def claim_all_in_process(url: str, results) -> None:
    engine = open_database(url)
    pid = multiprocessing.current_process().pid
    mine = []
    while (job := claim_next_job(engine, pid, host=f"host-{pid}", device="cpu")) is not None:
        mine.append((job.id, job.claim_token, job.claim_host))
    results.put(mine)
    engine.dispose()


def test_four_processes_claiming_at_once_each_get_their_own_jobs_under_their_own_names(db, db_url):
    ids = {new_job(db, f"{n}.mp4", f"c{n}").id for n in range(60)}
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    processes = [context.Process(target=claim_all_in_process, args=(db_url, results)) for _ in range(4)]
    for process in processes:
        process.start()
    claimed = [claim for _ in processes for claim in results.get(timeout=60)]
    for process in processes:
        process.join(timeout=30)
    assert sorted(job_id for job_id, _, _ in claimed) == sorted(ids), "every job claimed exactly once"
    assert len({token for _, token, _ in claimed}) == len(ids)
    for job_id, token, host in claimed:
        row = get_job(db, job_id)
        assert (row.claim_token, row.claim_host) == (token, host), "the row names the process that claimed it"
