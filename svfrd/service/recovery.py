"""Putting things right after something died: the worker process under a running job, or the whole service
(kill -9, power loss) found at the next start-up. The crash-safety order that makes this possible is in
`svfrd.service.results`.

Two kinds of death are counted apart. A worker that dies while the daemon lives is the job's failure (a
segfault, the OOM killer): a transient failure, counted in `attempts` against `max_attempts`. A daemon that
dies with its worker is the service's: counted in `service_interruptions` against the generous
`[service] max_service_interruptions`, which still stops a job that brings the machine down every time.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime

from sqlalchemy import Engine as Database

from svfrd.config import Config
from svfrd.errors import BadInputError, JobCancelled, TransientError
from svfrd.files import placement
from svfrd.jobs.model import Job, JobState
from svfrd.jobs.store import (
    fail_job,
    failed_jobs_with_source_under,
    get_job,
    jobs_with_planned_results,
    release_job,
    requeue_after_service_death,
    requeue_expired_claims,
    running_jobs_of_other_hosts,
)
from svfrd.ops.logs import job_logger
from svfrd.service import results

log = logging.getLogger(__name__)


def this_daemon(config: Config) -> str:
    """How this daemon names itself in the claims it makes (`claim_host`): the host name and its state folder.
    The state lock makes it unique: two daemons on one host (each its own state folder, one shared database)
    never take each other's running jobs for their own at start-up."""
    return f"{socket.gethostname()}:{config.service.state_dir}"


# ---------------------------------------------------------------------------------------------------------------
# At start-up, after the last daemon died.


def recover_at_startup(config: Config, db: Database) -> None:
    """With the state lock held: finish cut-short publications, put the jobs the dead daemon left running
    back in the queue (or fail them), move the inputs of failures recorded just before the death to failed/,
    then clear the outbox's stale temporary files, in this order."""
    finish_interrupted_publications(config, db)
    requeue_jobs_of_a_dead_service(config, db)
    file_inputs_of_failures_cut_short(config, db)
    # Another host's running jobs write their temporary files into the shared outbox: those must stay.
    if not running_jobs_of_other_hosts(db, this_daemon(config)):
        placement.clean_stale_temp_files(config.output.outbox)


def finish_interrupted_publications(config: Config, db: Database) -> None:
    """Jobs whose results were complete and named when the last daemon died (or whose publication failed
    and waits for a retry) are finished now, before the outbox's stale temporary files are cleared
    (svfrd.service.results explains the order)."""
    host = this_daemon(config)
    for job in jobs_with_planned_results(db):
        if job.claim_host not in (host, None):
            continue  # another host's: finished by that host, or by the next attempt after its lease expired
        if results.complete_publication(config, db, job):
            job_logger(job.id).info("finished publishing the results of the interrupted run")


def requeue_jobs_of_a_dead_service(config: Config, db: Database) -> list[Job]:
    """Jobs left running: back in the queue without using up an attempt; a job the service died under
    `max_service_interruptions` times fails, and its inputs go to failed/ like any failed job's."""
    jobs = requeue_after_service_death(db, config.service.max_service_interruptions, host=this_daemon(config))
    _report_requeued(config, db, jobs, "the service stopped while it ran")
    return jobs


def requeue_jobs_with_expired_leases(config: Config, db: Database, now: datetime | None = None) -> list[Job]:
    """While running, every heartbeat: jobs of any host whose lease expired (that host died, or lost the
    database) go back to the queue like the jobs of a dead service; never a job whose lease still holds."""
    requeued = requeue_expired_claims(db, config.service.max_service_interruptions, now=now)
    for job, token in requeued:
        # Left in the shared outbox by a dead host, they would stay until some daemon starts with no other
        # host running; a host that comes back after its lease finds them gone and publishes nothing anyway.
        results.remove_temps_of_lost_attempt(config, job, token)
    jobs = [job for job, _token in requeued]
    _report_requeued(config, db, jobs, "its lease expired: the daemon running it ({host}) stopped renewing it")
    return jobs


def _report_requeued(config: Config, db: Database, jobs: list[Job], why: str) -> None:
    for job in jobs:
        logger = job_logger(job.id)
        if job.state == JobState.FAILED.value:
            logger.error("failed: %s", job.error_message)
            results.file_failed_inputs(config, db, job, job.error_message or "")
        elif job.state == JobState.QUEUED.value:
            logger.info("back in the queue: %s (%d of at most %d times)", why.format(host=job.claim_host),
                        job.service_interruptions, config.service.max_service_interruptions)
        else:
            logger.info("cancelled")


def file_inputs_of_failures_cut_short(config: Config, db: Database) -> list[Job]:
    """A failure is recorded before its inputs move to failed/; a death in between leaves the video in its
    inbox under a failed job. Every terminal failure ends with the inputs in failed/ beside NAME.error.txt, so
    that move is finished now, before intake could take the video for a new job."""
    filed = []
    for job in failed_jobs_with_source_under(db, [inbox.path for inbox in config.inboxes]):
        if not os.path.lexists(job.source_path):  # lexists: a refused symlink is moved as the link itself
            continue
        filed.append(results.file_failed_inputs(config, db, job, job.error_message or "the job failed"))
        job_logger(job.id).info("moved the inputs of this failed job to failed/ (the service had stopped before "
                                "it could)")
    return filed


# ---------------------------------------------------------------------------------------------------------------
# While the daemon runs, after its worker died or was stopped.


def unfinished_orphan(config: Config, db: Database, job: Job) -> Job | None:
    """The row of a job whose worker ended without recording its outcome, once its output is dealt with:
    results that were complete are published (the job is done: None), anything partial is removed.
    None too when the worker did record the outcome."""
    current = get_job(db, job.id)
    if current is None or current.state != JobState.RUNNING.value:
        return None
    if results.complete_publication(config, db, current):
        return None
    results.remove_temp_files(config, current)
    return current


def settle_orphaned_job(config: Config, db: Database, job: Job, death_message: str) -> None:
    """A job whose worker died: finish its publication if its results were complete, record a cancel if one
    was asked for, else count a transient failure (retried with backoff, or failed into failed/)."""
    _settle_stopped_job(config, db, job, TransientError(death_message))


def settle_timed_out_job(config: Config, db: Database, job: Job, message: str) -> None:
    """A job the supervisor stopped past its time limit ([limits] job_timeout_*), settled like any job whose
    worker died, except that it fails like bad input (not retried: it would hold the queue as long again) and
    its inputs go to failed/ beside a note saying `message`."""
    _settle_stopped_job(config, db, job, BadInputError(message))


def _settle_stopped_job(config: Config, db: Database, job: Job, error: Exception) -> None:
    """Nothing when the worker recorded the job's end first (or its results were complete: published now); a
    cancel when one was asked for; else `error` is logged and recorded, partial results removed."""
    current = unfinished_orphan(config, db, job)
    if current is None:
        return
    logger = job_logger(job.id)
    if current.cancel_requested:
        fail_job(db, job.id, JobCancelled("cancelled by the user; the worker was stopped to end it"),
                 retry_backoff=config.service.retry_backoff)
        logger.info("cancelled")
        return
    logger.error("%s", error)
    results.settle_failure(config, db, job.id, error)


def requeue_after_stop(config: Config, db: Database, job: Job) -> None:
    """The daemon is stopping and the worker ended without recording the job (killed): put it back,
    keeping no partial output and counting no attempt."""
    if unfinished_orphan(config, db, job) is None:
        return
    release_job(db, job.id)
    job_logger(job.id).info("back in the queue; it will run when the service starts again")
