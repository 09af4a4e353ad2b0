"""The job queue on a real SQLite file: claiming, retries with backoff, cancellation, deduplication."""

from __future__ import annotations

import multiprocessing
import threading
from datetime import timedelta

import pytest

from svfrd.domain import Task
from svfrd.errors import BadInputError, JobCancelled, ResourceError, TransientError
from svfrd.jobs.database import open_database
from svfrd.jobs.model import JobState, utcnow
from svfrd.jobs.store import (
    JobNotFound,
    JobStateError,
    claim_next_job,
    dedupe_key_for,
    enqueue_job,
    enqueue_or_find,
    fail_job,
    finish_job,
    get_job,
    insert_failed_job,
    list_jobs,
    record_progress,
    release_job,
    request_cancel,
    retry_job,
    seconds_until_next_job,
    set_input_paths,
)


def new_job(db, name="a.mp4", content="c1", **overrides):
    fields = dict(
        inbox="/in",
        source_name=name,
        source_path=f"/in/{name}",
        tasks={Task.BFR},
        options={},
        content_hash=content,
        max_attempts=3,
    )
    fields.update(overrides)
    return enqueue_job(db, **fields)


def test_enqueued_jobs_are_claimed_oldest_first_then_none(db):
    first, second = new_job(db, "a.mp4", "c1"), new_job(db, "b.mp4", "c2")
    assert first.state == "queued" and first.tasks == "0"
    claimed = claim_next_job(db, worker_pid=4242)
    assert claimed.id == first.id and claimed.state == "running" and claimed.worker_pid == 4242
    assert claimed.started_at is not None
    assert claim_next_job(db, 4242).id == second.id
    assert claim_next_job(db, 4242) is None


def test_the_same_content_and_options_is_one_job(db):
    job = new_job(db, "a.mp4", "c1", options={"steps": 10, "crf": 20})
    again, created = enqueue_or_find(
        db, inbox="/in", source_name="copy.mp4", source_path="/in/copy.mp4", tasks=[0],
        options_json='{"crf": 20, "steps": 10}', content_hash="c1", max_attempts=3,
    )
    assert not created and again.id == job.id
    other_options = new_job(db, "a.mp4", "c1", options={"steps": 11, "crf": 20})
    other_tasks = new_job(db, "a.mp4", "c1", tasks={Task.BFR, Task.COLORIZE}, options={"steps": 10, "crf": 20})
    other_seed = new_job(db, "a.mp4", "c1", seed=5, options={"steps": 10, "crf": 20})
    assert len({job.id, other_options.id, other_tasks.id, other_seed.id}) == 4


def test_a_done_job_blocks_a_duplicate_but_failed_and_cancelled_ones_do_not(db):
    job = new_job(db)
    claim_next_job(db, 1)
    finish_job(db, job.id, engine="test", output_path="/out/a.restored.mp4", report_path=None)
    assert new_job(db).id == job.id
    failed = new_job(db, content="c2")
    claim_next_job(db, 1)
    fail_job(db, failed.id, BadInputError("no face"), retry_backoff=1)
    assert new_job(db, content="c2").id != failed.id
    cancelled = new_job(db, content="c3")
    request_cancel(db, cancelled.id)
    assert new_job(db, content="c3").id != cancelled.id


def test_dedupe_key_depends_on_mask_and_reference_content_and_normalises_order():
    base = dedupe_key_for("c", [2, 0], {"b": 1, "a": 2}, 77, mask_hash="m1")
    assert base == dedupe_key_for("c", "0,2", '{"a": 2, "b": 1}', 77, mask_hash="m1")
    assert base != dedupe_key_for("c", [0, 2], {"a": 2, "b": 1}, 77, mask_hash="m2")
    assert base != dedupe_key_for("c", [0, 2], {"a": 2, "b": 1}, 77, mask_hash="m1", reference_hash="r")


def test_bad_input_fails_for_good(db):
    job = new_job(db)
    claim_next_job(db, 1)
    failed = fail_job(db, job.id, BadInputError("the video has no face"), retry_backoff=10)
    assert failed.state == "failed" and failed.error_kind == "bad_input"
    assert failed.error_message == "the video has no face" and failed.finished_at is not None
    assert claim_next_job(db, 1) is None


def test_a_job_too_big_for_the_machine_fails_for_good_recorded_as_resource_not_bad_input(db):
    job = new_job(db)
    claim_next_job(db, 1)
    failed = fail_job(db, job.id, ResourceError("the GPU ran out of memory; the video itself is fine"),
                      retry_backoff=10)
    assert failed.state == "failed" and failed.error_kind == "resource" and failed.attempts == 0
    assert claim_next_job(db, 1) is None


def test_transient_failures_back_off_exponentially_then_give_up(db):
    job = new_job(db, max_attempts=3)
    claim_next_job(db, 1)
    before = utcnow()
    first = fail_job(db, job.id, TransientError("CUDA out of memory"), retry_backoff=60)
    assert first.state == "queued" and first.attempts == 1 and first.error_kind == "transient"
    assert timedelta(seconds=59) < first.not_before - before < timedelta(seconds=62)
    assert claim_next_job(db, 1) is None, "not due before the backoff has passed"
    assert 58 < seconds_until_next_job(db) <= 60

    later = first.not_before + timedelta(seconds=1)
    assert claim_next_job(db, 1, now=later).id == job.id
    second = fail_job(db, job.id, TransientError("CUDA out of memory"), retry_backoff=60, now=later)
    assert second.attempts == 2 and second.state == "queued"
    assert second.not_before - later == timedelta(seconds=120)

    claim_next_job(db, 1, now=second.not_before)
    last = fail_job(db, job.id, TransientError("CUDA out of memory"), retry_backoff=60)
    assert last.state == "failed" and last.attempts == 3
    assert last.error_message == "CUDA out of memory (gave up after 3 attempts)"
    assert seconds_until_next_job(db) is None


def test_an_unexpected_exception_counts_as_transient(db):
    job = new_job(db)
    claim_next_job(db, 1)
    failed = fail_job(db, job.id, RuntimeError("worker died with signal 9"), retry_backoff=0)
    assert failed.state == "queued" and failed.error_message == "worker died with signal 9"
    assert seconds_until_next_job(db) == 0.0


def test_cancelling_a_queued_job_is_immediate_and_a_running_job_is_asked(db):
    queued, running = new_job(db, "a.mp4", "c1"), new_job(db, "b.mp4", "c2")
    request_cancel(db, running.id)
    assert get_job(db, running.id).state == "cancelled"
    assert claim_next_job(db, 1).id == queued.id
    assert record_progress(db, queued.id, "restore", 3, 10, 4.5) is False
    asked = request_cancel(db, queued.id)
    assert asked.state == "running" and asked.cancel_requested
    assert record_progress(db, queued.id, "restore", 4, 10, 3.0) is True
    cancelled = fail_job(db, queued.id, JobCancelled("cancelled by the user"), retry_backoff=1)
    assert cancelled.state == "cancelled"
    with pytest.raises(JobStateError, match="already cancelled"):
        request_cancel(db, queued.id)
    with pytest.raises(JobNotFound, match="no job 999"):
        request_cancel(db, 999)


def test_progress_is_recorded_on_the_row(db):
    job = new_job(db)
    claim_next_job(db, 1)
    record_progress(db, job.id, "encode", 40, 50, 2.0)
    row = get_job(db, job.id)
    assert (row.stage, row.frames_done, row.frames_total, row.eta_seconds) == ("encode", 40, 50, 2.0)


def test_retry_requeues_a_failed_job_with_fresh_attempts(db):
    job = new_job(db, max_attempts=1)
    claim_next_job(db, 1)
    assert fail_job(db, job.id, TransientError("disk full"), retry_backoff=5).state == "failed"
    retried = retry_job(db, job.id)
    assert retried.state == "queued" and retried.attempts == 0 and retried.error_message is None
    assert claim_next_job(db, 1).id == job.id
    with pytest.raises(JobStateError, match="is running; only failed or cancelled jobs can be retried"):
        retry_job(db, job.id)


def test_a_clean_stop_releases_the_job_without_counting_an_attempt(db):
    job = new_job(db)
    claim_next_job(db, 1)
    released = release_job(db, job.id)
    assert released.state == "queued" and released.attempts == 0
    assert claim_next_job(db, 1).id == job.id


def test_failed_intake_rows_and_moved_inputs(db):
    bad = insert_failed_job(
        db, BadInputError("a.toml: unknown key 'taks'"), inbox="/in", source_name="a.mp4",
        source_path="/in/a.mp4", tasks=[0], content_hash="c1", max_attempts=3,
    )
    assert bad.state == "failed" and bad.error_kind == "bad_input" and "taks" in bad.error_message
    with pytest.raises(JobStateError, match="rejected at intake, so retrying cannot help: a.toml: unknown key"):
        retry_job(db, bad.id)
    moved = set_input_paths(db, bad.id, source_path="/failed/a.mp4", sidecar_path="/failed/a.toml")
    assert (moved.source_path, moved.sidecar_path) == ("/failed/a.mp4", "/failed/a.toml")
    assert [j.id for j in list_jobs(db, 10, states=[JobState.FAILED])] == [bad.id]


def test_list_jobs_shows_the_most_recent_first(db):
    ids = [new_job(db, f"{n}.mp4", f"c{n}").id for n in range(5)]
    assert [j.id for j in list_jobs(db, limit=3)] == ids[::-1][:3]
    assert list_jobs(db, 10, states=["done"]) == []


def claim_all_in_process(url: str, results) -> None:
    engine = open_database(url)
    mine = []
    while (job := claim_next_job(engine, multiprocessing.current_process().pid)) is not None:
        mine.append(job.id)
    results.put(mine)
    engine.dispose()


def test_concurrent_claimers_in_several_processes_never_share_a_job(db, db_url):
    ids = {new_job(db, f"{n}.mp4", f"c{n}").id for n in range(60)}
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    workers = [context.Process(target=claim_all_in_process, args=(db_url, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    claimed = [job_id for _ in workers for job_id in results.get(timeout=60)]
    for worker in workers:
        worker.join(timeout=30)
    assert sorted(claimed) == sorted(ids), "every job claimed exactly once"


def test_concurrent_claimers_in_threads_never_share_a_job(db):
    ids = {new_job(db, f"{n}.mp4", f"c{n}").id for n in range(40)}
    claimed: list[int] = []
    lock = threading.Lock()

    def claim_all(worker_pid: int) -> None:
        while (job := claim_next_job(db, worker_pid)) is not None:
            with lock:
                claimed.append(job.id)

    # Small ids like real pids: a thread ident overflows PostgreSQL's 32-bit integer column.
    threads = [threading.Thread(target=claim_all, args=(1000 + n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(claimed) == sorted(ids)


def test_the_supervisor_sleeps_until_the_earliest_queued_job_is_due(db):
    assert seconds_until_next_job(db) is None
    backed_off = new_job(db, "a.mp4", content="c1")
    claim_next_job(db, 1)
    fail_job(db, backed_off.id, TransientError("CUDA out of memory"), retry_backoff=60)
    assert 58 < seconds_until_next_job(db) <= 60
    new_job(db, "b.mp4", content="c2")
    assert seconds_until_next_job(db) == 0.0, "a fresh job is due at once, whatever waits beside it"
