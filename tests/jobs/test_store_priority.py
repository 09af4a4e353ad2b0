"""The queue's order: run-now jobs first, then priority (higher first), then arrival; and the requests that
change it (`svfrd priority`, `svfrd run-now`)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from svfrd.errors import BadInputError
from svfrd.jobs.model import utcnow
from svfrd.jobs.store import (
    JobStateError,
    QueueError,
    claim_next_job,
    fail_job,
    overview,
    request_run_now,
    retry_job,
    seconds_until_next_job,
    set_priority,
)
from tests.jobs.test_store import new_job


def claim_order(db, **claim):
    order = []
    while (job := claim_next_job(db, 1, **claim)) is not None:
        order.append(job.source_name)
    return order


def test_higher_priority_runs_first_then_arrival(db):
    new_job(db, "old-low.mp4", "c1", priority=-5)
    new_job(db, "old.mp4", "c2")
    new_job(db, "new-high.mp4", "c3", priority=10)
    new_job(db, "newer.mp4", "c4")
    assert [j.source_name for j in overview(db, queued_limit=10, recent_limit=0).queued] == [
        "new-high.mp4", "old.mp4", "newer.mp4", "old-low.mp4"]
    assert claim_order(db) == ["new-high.mp4", "old.mp4", "newer.mp4", "old-low.mp4"]


def test_changing_a_priority_moves_a_queued_job(db):
    first, second = new_job(db, "a.mp4", "c1"), new_job(db, "b.mp4", "c2")
    assert set_priority(db, second.id, 3).priority == 3
    assert claim_order(db) == ["b.mp4", "a.mp4"]
    with pytest.raises(JobStateError, match="only a queued job's priority"):
        set_priority(db, first.id, 1)


@pytest.mark.parametrize("bad", [101, -101, True])
def test_a_priority_out_of_range_is_refused(db, bad):
    job = new_job(db)
    with pytest.raises(QueueError, match="from -100 to 100"):
        set_priority(db, job.id, bad)


def test_run_now_jobs_go_first_and_alone_when_only_they_may_start(db):
    new_job(db, "high.mp4", "c1", priority=50)
    later = new_job(db, "later.mp4", "c2", not_before=utcnow() + timedelta(hours=1))
    assert seconds_until_next_job(db, run_now_only=True) is None
    assert claim_next_job(db, 1, run_now_only=True) is None
    request_run_now(db, later.id)  # also no longer backed off
    assert seconds_until_next_job(db, run_now_only=True) == 0.0
    assert claim_order(db, run_now_only=True) == ["later.mp4"]
    assert claim_order(db) == ["high.mp4"]
    with pytest.raises(JobStateError, match="only a queued job can be run now"):
        request_run_now(db, later.id)


def test_a_retried_run_now_job_is_an_ordinary_job_again(db):
    job = new_job(db, "urgent.mp4", "c1")
    request_run_now(db, job.id)
    claimed = claim_next_job(db, 1, run_now_only=True)
    fail_job(db, claimed.id, BadInputError("no face"), retry_backoff=1)

    retried = retry_job(db, job.id)

    assert not retried.run_now, "run-now asked for one run; `svfrd run-now` again hurries the retry"
    assert claim_next_job(db, 1, run_now_only=True) is None
