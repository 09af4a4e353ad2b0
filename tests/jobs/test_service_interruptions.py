"""Jobs left running by a daemon that died (kill -9, power loss): counted as service interruptions, apart from
the job's own failures, up to a separate limit."""

from __future__ import annotations

from svfrd.domain import Task
from svfrd.errors import TransientError
from svfrd.jobs.store import (
    claim_next_job,
    enqueue_job,
    fail_job,
    get_job,
    request_cancel,
    requeue_after_service_death,
    retry_job,
)


def running_job(db, max_attempts=1):
    job = enqueue_job(db, inbox="/in", source_name="a.mp4", source_path="/in/a.mp4", tasks={Task.BFR},
                      content_hash="c1", max_attempts=max_attempts)
    claim_next_job(db, 1)
    return job


def test_a_dead_service_costs_the_job_no_attempt_and_it_is_due_at_once(db):
    job = running_job(db, max_attempts=1)
    for interruption in (1, 2, 3):
        (requeued,) = requeue_after_service_death(db, max_interruptions=10)
        assert (requeued.state, requeued.attempts, requeued.service_interruptions) == ("queued", 0, interruption)
        assert f"the service stopped while this job ran (killed, crashed, or the machine lost power), " \
               f"{interruption} of at most 10 times" in requeued.error_message
        assert claim_next_job(db, 1).id == job.id
    assert requeue_after_service_death(db, max_interruptions=10)[0].worker_pid is None


def test_a_job_the_service_keeps_dying_under_fails_with_what_happened_and_what_to_do(db):
    job = running_job(db)
    requeue_after_service_death(db, max_interruptions=2)
    claim_next_job(db, 1)
    (failed,) = requeue_after_service_death(db, max_interruptions=2)
    assert failed.state == "failed" and failed.attempts == 0 and failed.service_interruptions == 2
    assert "the service stopped 2 times while this job ran" in failed.error_message
    assert f"svfrd retry {job.id}" in failed.error_message and "max_service_interruptions" in failed.error_message
    assert requeue_after_service_death(db, max_interruptions=2) == []


def test_a_cancelled_job_left_running_ends_cancelled(db):
    job = running_job(db)
    request_cancel(db, job.id)
    (cancelled,) = requeue_after_service_death(db, max_interruptions=10)
    assert cancelled.state == "cancelled" and cancelled.service_interruptions == 0


def test_retry_starts_both_counts_afresh(db):
    job = running_job(db, max_attempts=3)
    requeue_after_service_death(db, max_interruptions=1)
    assert retry_job(db, job.id).service_interruptions == 0
    claim_next_job(db, 1)
    fail_job(db, job.id, TransientError("out of memory"), retry_backoff=0)
    assert get_job(db, job.id).attempts == 1
