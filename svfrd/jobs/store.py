"""The job store: the only code that reads or writes the jobs table. Every state change of a job is one short
database transaction; callers elsewhere (intake, supervisor, worker, results, the CLI, the status view) call
the functions here and never build SQL of their own.

States: queued -> running -> done | failed | cancelled. A transient failure sends a running job back to queued
with an exponential backoff (`not_before`) until `max_attempts` failures; bad input fails it for good. A job left
running by a service that died goes back too, counted apart (`requeue_after_service_death`).

Duplicates: the same content with the same normalised options has the same `dedupe_key`. Intake makes a job for
every drop (`enqueue_reusing`); when a job's turn comes, the results of a done job with its key are published
under its name instead of restoring again (`svfrd.service.results`), so dedupe saves GPU time but never a result.
`enqueue_job` instead returns the existing queued, running or done job (tests use it to make jobs). A failed or
cancelled job is never reused: dropping the file again restores it afresh, and `svfrd retry ID` re-runs the old
one.

All functions take the SQLAlchemy engine from `svfrd.jobs.database.open_database` and return detached `Job` objects.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from sqlalchemy import Engine, and_, func, or_, text, update
from sqlmodel import Session, col, select

from svfrd.config import tasks_to_text
from svfrd.domain import Task, priority_problem
from svfrd.errors import BadInputError, JobCancelled, ResourceError
from svfrd.files.hashing import file_sha256
from svfrd.jobs.model import ErrorKind, Job, JobState, ServiceState, utcnow

#: States in which a job blocks a new job for the same content and options.
DEDUPE_BLOCKING_STATES = (JobState.QUEUED.value, JobState.RUNNING.value, JobState.DONE.value)

#: The stage of a job rejected by intake before it ever ran (a bad sidecar).
INTAKE_STAGE = "intake"


class QueueError(Exception):
    """A request the queue cannot honour; the message says why (for the CLI)."""


class JobNotFound(QueueError, LookupError):
    pass


class JobStateError(QueueError):
    pass


def _session(db: Engine) -> Session:
    # Objects stay readable after the transaction ends: callers get plain, detached snapshots.
    return Session(db, expire_on_commit=False)


def _locked_job(session: Session, job_id: int) -> Job:
    """One row, locked for a read-modify-write in `session`'s transaction."""
    job = session.exec(select(Job).where(Job.id == job_id).with_for_update()).first()
    if job is None:
        raise JobNotFound(f"no job {job_id}; `svfrd status` lists the jobs")
    return job


def _change(db: Engine, job_id: int, **values: Any) -> Job:
    """Set some columns of one row (and `updated_at`) in a transaction of its own."""
    with _session(db) as session, session.begin():
        job = _locked_job(session, job_id)
        for name, value in values.items():
            setattr(job, name, value)
        job.updated_at = utcnow()
        return job


# ---------------------------------------------------------------------------------------------------------------
# Deduplication.


def normalised_options(options: Mapping[str, Any] | str | None) -> str:
    """Options as canonical JSON (sorted keys, no spaces), so equal options give equal text."""
    if isinstance(options, str):
        options = json.loads(options or "{}")
    return json.dumps(dict(options or {}), sort_keys=True, separators=(",", ":"))


def dedupe_key_for(
    content_hash: str,
    tasks: Iterable[Task | int] | str,
    options: Mapping[str, Any] | str | None,
    seed: int,
    mask_hash: str | None = None,
    reference_hash: str | None = None,
) -> str:
    """sha256 over everything that changes the result: the video's content, the tasks, the engine options,
    the seed and the content of the mask and reference images (not their names)."""
    identity = {
        "content": content_hash,
        "tasks": _tasks_text(tasks),
        "options": normalised_options(options),
        "seed": int(seed),
        "mask": mask_hash,
        "reference": reference_hash,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _tasks_text(tasks: Iterable[Task | int] | str) -> str:
    if isinstance(tasks, str):
        return tasks_to_text(frozenset(Task(int(t)) for t in tasks.split(",") if t.strip()))
    return tasks_to_text(frozenset(Task(int(t)) for t in tasks))


def _job_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Accept convenient forms (`tasks` as a set, `options` as a dict) and fill in `dedupe_key`."""
    fields = dict(fields)
    fields["options_json"] = normalised_options(fields.pop("options", fields.get("options_json")))
    fields["tasks"] = _tasks_text(fields["tasks"])
    if not fields.get("dedupe_key"):
        fields["dedupe_key"] = dedupe_key_for(
            fields["content_hash"],
            fields["tasks"],
            fields["options_json"],
            fields.get("seed", Job.model_fields["seed"].default),
            # The private copies where there are some: the inbox files are never opened again by path.
            _optional_file_hash(fields.get("mask_copy") or fields.get("mask_path")),
            _optional_file_hash(fields.get("reference_copy") or fields.get("reference_path")),
        )
    return fields


def _optional_file_hash(path: str | None) -> str | None:
    return file_sha256(path) if path else None


# ---------------------------------------------------------------------------------------------------------------
# Enqueue.


def enqueue_or_find(db: Engine, **fields: Any) -> tuple[Job, bool]:
    """(job, created): a new queued job, or the existing one with the same dedupe key that is queued,
    running or done. The check and the insert share one write transaction, so they cannot race."""
    fields = _job_fields(fields)
    with _session(db) as session, session.begin():
        existing = _find_blocking_duplicate(session, fields["dedupe_key"])
        if existing is not None:
            return existing, False
        job = Job(**fields, state=JobState.QUEUED.value)
        session.add(job)
        session.flush()
        return job, True


def enqueue_job(db: Engine, **fields: Any) -> Job:
    """A queued job for these Job columns (`tasks` may be a set of Task, `options` a dict), or the existing
    job with the same content and options (see the module docstring)."""
    return enqueue_or_find(db, **fields)[0]


def _find_blocking_duplicate(session: Session, dedupe_key: str) -> Job | None:
    query = (
        select(Job)
        .where(Job.dedupe_key == dedupe_key, col(Job.state).in_(DEDUPE_BLOCKING_STATES))
        .order_by(col(Job.id))
        .limit(1)
    )
    return session.exec(query).first()


def enqueue_reusing(db: Engine, **fields: Any) -> tuple[Job, Job | None]:
    """(new queued job, earlier job or None): a job for every drop, also when a job with the same dedupe key is
    queued, running or done (returned second). Such a duplicate costs no GPU time: when its turn comes, the
    worker publishes the earlier job's results under the duplicate's own name
    (`svfrd.service.results.publish_reused_results`). One transaction: a crash leaves both or neither."""
    fields = _job_fields(fields)
    with _session(db) as session, session.begin():
        return _insert_reusing(session, fields)


def _insert_reusing(session: Session, fields: dict[str, Any]) -> tuple[Job, Job | None]:
    earlier = _find_blocking_duplicate(session, fields["dedupe_key"])
    job = Job(**fields, state=JobState.QUEUED.value)
    session.add(job)
    session.flush()
    return job, earlier


def enqueue_input_unless_owned(db: Engine, owned_in: Iterable[str], still_there: Callable[[], bool],
                               **fields: Any) -> tuple[Job, Job | None] | None:
    """`enqueue_reusing` for a file found in an inbox, unless a job in one of the states `owned_in` already has
    it as its `source_path`, or the file is gone (`still_there()` is False): then None. One file becomes one job,
    however many daemons scan the inbox: the check and the insert are serialised across hosts
    (`_serialise`), so two hosts that found the same new file at the same instant cannot both queue it.
    The file is looked for after the rows: a job that finished meanwhile moved it to done/ before recording its
    new place, so either its row still names the file or the file is gone."""
    fields = _job_fields(fields)
    with _session(db) as session, session.begin():
        _serialise(session, INTAKE_LOCK_KEY)
        owned = select(Job.id).where(Job.source_path == fields["source_path"],
                                     col(Job.state).in_([JobState(s).value for s in owned_in]))
        if session.exec(owned.limit(1)).first() is not None or not still_there():
            return None
        return _insert_reusing(session, fields)


#: PostgreSQL advisory locks (arbitrary numbers that only svfrd uses in its database), held by the transaction
#: that checks and then writes: intake's check that a file is no job's yet, and a plan's check that its final
#: names are no other job's.
INTAKE_LOCK_KEY = 0x5FF4D001
PLANNING_LOCK_KEY = 0x5FF4D002


def _serialise(session: Session, key: int) -> None:
    """Hold the lock `key` until the transaction ends. PostgreSQL runs concurrent transactions side by side, so
    a check-then-write needs it; the commit releases it, and the next host's check (a new statement, READ
    COMMITTED) then sees what was written. SQLite serialises every write transaction already (BEGIN IMMEDIATE,
    svfrd.jobs.database)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def done_jobs_with_key(db: Engine, dedupe_key: str, exclude_id: int) -> list[Job]:
    """Done jobs (newest first) with this dedupe key, other than `exclude_id`: results a job may reuse."""
    query = (
        select(Job)
        .where(Job.dedupe_key == dedupe_key, Job.state == JobState.DONE.value, Job.id != exclude_id)
        .order_by(col(Job.id).desc())
    )
    with _session(db) as session:
        return list(session.exec(query).all())


def supersede_job(db: Engine, job_id: int, describe: Callable[[int], str], **fields: Any) -> Job:
    """The source of a job changed after it was queued: in one transaction a new queued job is made from
    `fields` (the new content's hash) and the old job cancelled with the message `describe(new job id)`,
    so a crash never leaves the file without a job. Returns the new job."""
    fields = _job_fields(fields)
    with _session(db) as session, session.begin():
        old = _locked_job(session, job_id)
        job = Job(**fields, state=JobState.QUEUED.value)
        session.add(job)
        session.flush()
        now = utcnow()
        old.state, old.finished_at, old.updated_at = JobState.CANCELLED.value, now, now
        _clear_claim(old)
        old.error_kind, old.error_message, old.eta_seconds = None, describe(job.id), None
        return job


def insert_failed_job(db: Engine, error: BadInputError, **fields: Any) -> Job:
    """Record an input rejected at intake (bad sidecar) as a failed job, so it shows in `svfrd status`
    with its reason. Never deduplicated: each rejected drop is its own record. Its stage is "intake": it
    cannot be retried, as its sidecar has to be corrected first."""
    fields = _job_fields(fields)
    now = utcnow()
    job = Job(
        **fields,
        stage=INTAKE_STAGE,
        state=JobState.FAILED.value,
        error_kind=ErrorKind.BAD_INPUT.value,
        error_message=str(error),
        finished_at=now,
        updated_at=now,
    )
    with _session(db) as session, session.begin():
        session.add(job)
    return job


def forget_unfiled_failure(db: Engine, job_id: int) -> None:
    """Remove a failed row that `insert_failed_job` made for a file intake then could not move to failed/: the
    file is still in the inbox and is looked at again, so it must not also be the source of a failed job (it
    would be left alone forever, and a second refusal would record it twice)."""
    with _session(db) as session, session.begin():
        job = _locked_job(session, job_id)
        if job.state == JobState.FAILED.value and job.stage == INTAKE_STAGE:
            session.delete(job)


# ---------------------------------------------------------------------------------------------------------------
# Claim & run.


#: Seconds a claim holds without renewal when the caller names none ([service] lease is what the daemon uses).
DEFAULT_LEASE = 90.0


class ClaimLost(QueueError):
    """The job is no longer this worker's: its lease expired and it went back to the queue (and maybe to
    another worker). Whatever the worker still holds must be thrown away, never published (fencing)."""


def new_claim_token() -> str:
    """128 random bits: unique across hosts without any coordination."""
    return secrets.token_hex(16)


def claim_next_job(db: Engine, worker_pid: int, now: datetime | None = None, *, host: str | None = None,
                   device: str | None = None, lease_seconds: float = DEFAULT_LEASE, run_now_only: bool = False
                   ) -> Job | None:
    """Atomically move the first due queued job to running and return it (None if nothing is due): run-now
    jobs first, then by priority, then the oldest. `run_now_only`: while paused or outside the schedule
    (svfrd.service.gate), only jobs given `svfrd run-now`. The claim records
    the claimant (`host`: the daemon's name, `svfrd.service.recovery.this_daemon`; device; worker pid), a fresh
    `claim_token` and `lease_expires_at`.

    The pick is `SELECT … FOR UPDATE SKIP LOCKED`, then an UPDATE of that row in the same transaction: on
    PostgreSQL concurrent claimers skip each other's rows; SQLite has no row locks (SQLAlchemy drops the
    clause) and serialises the whole transaction with BEGIN IMMEDIATE (svfrd.jobs.database). The repeated
    `state = 'queued'` in the UPDATE keeps a claim from ever taking a row that changed meanwhile. tests/jobs run
    every store test on both databases."""
    now = now or utcnow()
    pick = (
        select(Job.id)
        .where(Job.state == JobState.QUEUED.value, _is_due(now), *_run_now_filter(run_now_only))
        .order_by(*QUEUE_ORDER)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    with _session(db) as session, session.begin():
        job_id = session.exec(pick).first()
        if job_id is None:
            return None
        claim = (
            update(Job)
            .where(col(Job.id) == job_id, Job.state == JobState.QUEUED.value)
            .values(
                state=JobState.RUNNING.value,
                worker_pid=worker_pid,
                claim_host=host,
                claim_device=device,
                claim_token=new_claim_token(),
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                started_at=now,
                updated_at=now,
                stage=None,
                frames_done=0,
                frames_total=None,
                eta_seconds=None,
            )
            .returning(Job)
            .execution_options(synchronize_session=False)
        )
        return session.execute(claim).scalars().first()


def renew_lease(db: Engine, job_id: int, claim_token: str, lease_seconds: float,
                now: datetime | None = None) -> bool:
    """Extend the lease of a running job this claim still holds to `now + lease_seconds`. False when the
    claim is lost (the job was re-queued after its lease expired, or finished): nothing is changed then."""
    now = now or utcnow()
    statement = (
        update(Job)
        .where(col(Job.id) == job_id, Job.claim_token == claim_token, Job.state == JobState.RUNNING.value)
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    with db.begin() as connection:
        return connection.execute(statement).rowcount == 1


def requeue_expired_leases(db: Engine, max_interruptions: int, now: datetime | None = None) -> list[Job]:
    """Running jobs whose lease expired before `now` (the host that ran them died, or lost the database):
    back in the queue, due at once, counted as a service interruption like a job left by a dead daemon
    (`requeue_after_service_death`); a job reaching `max_interruptions` fails. A job whose lease has not
    expired is never touched, whichever host asks. Returns the jobs, as they are now."""
    return [job for job, _token in requeue_expired_claims(db, max_interruptions, now)]


def requeue_expired_claims(db: Engine, max_interruptions: int, now: datetime | None = None) -> list[tuple[Job, str]]:
    """`requeue_expired_leases`, each job with the token of the claim that expired (its attempt's temporary
    files carry it in their names)."""
    now = now or utcnow()
    expired = (select(Job).where(Job.state == JobState.RUNNING.value, col(Job.lease_expires_at).is_not(None),
                                 col(Job.lease_expires_at) < now)
               .with_for_update(skip_locked=True))
    with _session(db) as session, session.begin():
        requeued = []
        for job in session.exec(expired).all():
            token = job.claim_token
            _requeue_stranded(job, max_interruptions, now)
            requeued.append((job, token))
        return requeued


def running_jobs_of_other_hosts(db: Engine, host: str) -> list[Job]:
    """Running jobs claimed by a host other than `host` (which share the outbox with this one)."""
    query = select(Job).where(Job.state == JobState.RUNNING.value, col(Job.claim_host).is_not(None),
                              Job.claim_host != host)
    with _session(db) as session:
        return list(session.exec(query).all())


def claim_is_held(job: Job | None, claim_token: str | None) -> bool:
    """Fencing: whether `job` is still running under the claim `claim_token` (None: no claim to check)."""
    if claim_token is None:
        return job is not None
    return job is not None and job.state == JobState.RUNNING.value and job.claim_token == claim_token


def check_claim(db: Engine, job_id: int, claim_token: str | None) -> None:
    """Raise ClaimLost unless the job still runs under `claim_token` (no check for None)."""
    if claim_token is None:
        return
    with _session(db) as session:
        job = session.get(Job, job_id)
    if not claim_is_held(job, claim_token):
        raise ClaimLost(_claim_lost_message(job_id))


def _claim_lost_message(job_id: int) -> str:
    return (f"job {job_id} is no longer this worker's: its lease expired (the worker was paused, or its host lost "
            "the database for longer than [service] lease) and the job went back to the queue; this worker's "
            "results are discarded so that they cannot replace those of the newer attempt")


def _clear_claim(job: Job) -> None:
    """The job is no longer running: its claim ends (host and device stay, saying where it ran last)."""
    job.worker_pid = job.claim_token = job.lease_expires_at = None


def _held_job(session: Session, job_id: int, claim_token: str | None) -> Job:
    """`_locked_job`, raising ClaimLost when the job no longer runs under `claim_token` (None: no check)."""
    job = _locked_job(session, job_id)
    if not claim_is_held(job, claim_token):
        raise ClaimLost(_claim_lost_message(job_id))
    return job


#: The order in which queued jobs run.
QUEUE_ORDER = (col(Job.run_now).desc(), col(Job.priority).desc(), col(Job.created_at), col(Job.id))


def _run_now_filter(run_now_only: bool) -> list:
    return [col(Job.run_now).is_(True)] if run_now_only else []


def _is_due(now: datetime):
    return or_(col(Job.not_before).is_(None), col(Job.not_before) <= now)


def seconds_until_next_job(db: Engine, now: datetime | None = None, run_now_only: bool = False) -> float | None:
    """0 if a queued job is due now, the wait until the earliest backed-off one, None if none is queued
    (`run_now_only`: counting only run-now jobs, as `claim_next_job`). Lets the supervisor sleep exactly as long
    as needed instead of polling."""
    now = now or utcnow()
    # One query, as the idle supervisor asks on every wake-up.
    query = select(func.count(), func.count(Job.not_before), func.min(Job.not_before)).where(
        Job.state == JobState.QUEUED.value, *_run_now_filter(run_now_only)
    )
    with _session(db) as session, session.begin():
        queued, backed_off, earliest = session.exec(query).one()
    if queued == 0:
        return None
    if backed_off < queued:  # a queued job without `not_before` is due now
        return 0.0
    return max(0.0, (earliest - now).total_seconds())


def record_progress(
    db: Engine, job_id: int, stage: str, done: int, total: int | None, eta_seconds: float | None,
    claim_token: str | None = None,
) -> bool:
    """Store the job's progress. Returns whether a cancel was requested, so the worker's progress reporter
    learns it with no extra query. With `claim_token`, only while that claim holds (else ClaimLost): a worker
    that lost its lease learns it here and stops early."""
    statement = update(Job).where(col(Job.id) == job_id)
    if claim_token is not None:
        statement = statement.where(Job.claim_token == claim_token, Job.state == JobState.RUNNING.value)
    statement = (
        statement
        .values(stage=stage, frames_done=done, frames_total=total, eta_seconds=eta_seconds, updated_at=utcnow())
        .returning(Job.cancel_requested)
    )
    with db.begin() as connection:
        cancel_requested = connection.execute(statement).scalar()
    if cancel_requested is None:
        raise ClaimLost(_claim_lost_message(job_id)) if claim_token is not None else JobNotFound(f"no job {job_id}")
    return bool(cancel_requested)


# ---------------------------------------------------------------------------------------------------------------
# Finish & fail.


def finish_job(
    db: Engine, job_id: int, *, engine: str, output_path: str | Path, report_path: str | Path | None,
    claim_token: str | None = None,
) -> Job:
    """Record the job done. With `claim_token`, only while the job still runs under that claim (else
    ClaimLost, and nothing is written): a worker that lost its lease never records over a newer attempt."""
    now = utcnow()
    with _session(db) as session, session.begin():
        job = _held_job(session, job_id, claim_token)
        job.state, job.engine, job.stage = JobState.DONE.value, engine, "done"
        job.output_path, job.report_path = str(output_path), str(report_path) if report_path else None
        job.eta_seconds, job.finished_at, job.updated_at = None, now, now
        job.error_kind = job.error_message = None
        _clear_claim(job)
        return job


def fail_job(
    db: Engine, job_id: int, error: BaseException, *, retry_backoff: float, now: datetime | None = None,
    claim_token: str | None = None,
) -> Job:
    """Record a failure. Bad input: failed for good. Cancellation (or a transient failure after a cancel was
    requested): cancelled. Anything else counts as transient: queued again after
    `retry_backoff * 2**(attempts-1)` seconds, or failed once `max_attempts` failures are reached."""
    with _session(db) as session, session.begin():
        job = _held_job(session, job_id, claim_token)
        now = now or utcnow()
        job.updated_at, job.eta_seconds = now, None
        _clear_claim(job)
        if isinstance(error, JobCancelled) or job.cancel_requested:
            job.state, job.finished_at = JobState.CANCELLED.value, now
            job.error_kind, job.error_message = None, str(error) or "cancelled by the user"
        elif isinstance(error, BadInputError):
            job.state, job.finished_at = JobState.FAILED.value, now
            job.error_kind, job.error_message = _kind_failed_for_good(error), str(error)
        else:
            _count_transient_failure(job, str(error) or type(error).__name__, retry_backoff, now)
        return job


def _kind_failed_for_good(error: BadInputError) -> str:
    """A job too big for the machine fails for good like bad input, but the record says the input is fine."""
    return ErrorKind.RESOURCE.value if isinstance(error, ResourceError) else ErrorKind.BAD_INPUT.value


def _count_transient_failure(job: Job, message: str, retry_backoff: float, now: datetime) -> None:
    job.attempts += 1
    job.error_kind = ErrorKind.TRANSIENT.value
    if job.attempts >= job.max_attempts:
        job.state, job.finished_at = JobState.FAILED.value, now
        job.error_message = f"{message} (gave up after {job.attempts} attempts)"
    else:
        job.state = JobState.QUEUED.value
        job.not_before = now + timedelta(seconds=retry_backoff * 2 ** (job.attempts - 1))
        job.error_message = message


def release_job(db: Engine, job_id: int, claim_token: str | None = None) -> Job:
    """A clean stop (SIGTERM with on_stop = "requeue"): the running job goes back to queued, due at once,
    without counting an attempt: nothing went wrong with it. With `claim_token`: only while that claim holds."""
    with _session(db) as session, session.begin():
        job = _held_job(session, job_id, claim_token)
        job.state, job.not_before, job.stage, job.eta_seconds = JobState.QUEUED.value, None, None, None
        job.updated_at = utcnow()
        _clear_claim(job)
        return job


def set_input_paths(db: Engine, job_id: int, **paths: str | Path | None) -> Job:
    """Record where the job's input files lie now (after moving them to done/ or failed/).
    Keys: source_path, sidecar_path, mask_path, reference_path."""
    allowed = {"source_path", "sidecar_path", "mask_path", "reference_path"}
    if not set(paths) <= allowed:
        raise TypeError(f"unknown path fields {sorted(set(paths) - allowed)}")
    return _change(db, job_id, **{k: (str(v) if v is not None else None) for k, v in paths.items()})


def set_input_copies(db: Engine, job_id: int, **copies: str | Path | None) -> Job:
    """Record the service's private copies of the job's images (svfrd.service.input_copies).
    Keys: mask_copy, reference_copy."""
    allowed = {"mask_copy", "reference_copy"}
    if not set(copies) <= allowed:
        raise TypeError(f"unknown copy fields {sorted(set(copies) - allowed)}")
    return _change(db, job_id, **{k: (str(v) if v is not None else None) for k, v in copies.items()})


def input_needed_by_other_jobs(db: Engine, job_id: int, column: str, path: str | Path) -> bool:
    """Whether another job that has not finished (queued or running) names `path` in `column` (mask_path,
    reference_path): that file must stay where the other job expects it."""
    attribute = getattr(Job, column)
    query = select(Job.id).where(
        attribute == str(path), Job.id != job_id, col(Job.state).in_([JobState.QUEUED.value, JobState.RUNNING.value])
    )
    with _session(db) as session:
        return session.exec(query).first() is not None


# ---------------------------------------------------------------------------------------------------------------
# Recovery after the whole service died (used by `svfrd.service.recovery` at start-up).


def service_interruption_message(job: Job) -> str:
    """Why a job failed after the service died under it `service_interruptions` times, and what to do."""
    return (
        f"the service stopped {_times(job.service_interruptions)} while this job ran (killed, crashed, or the "
        "machine lost power), so svfrd gave up on it in case the job itself brings the service or the machine "
        "down. The system log (journalctl) says what stopped the service; if this job was not the cause, run "
        f"`svfrd retry {job.id}`, or raise [service] max_service_interruptions"
    )


def service_requeue_message(job: Job, max_interruptions: int) -> str:
    """Why a job went back to the queue after the service died under it (`svfrd show` prints it, also while the
    job runs again, so it tells what happened rather than the state)."""
    return (
        "requeued: the service stopped while this job ran (killed, crashed, or the machine lost power), "
        f"{job.service_interruptions} of at most {max_interruptions} times before svfrd gives up on it; this "
        "counts as no failed attempt"
    )


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def requeue_after_service_death(db: Engine, max_interruptions: int, now: datetime | None = None,
                                host: str | None = None) -> list[Job]:
    """At start-up (the state lock held, so no other daemon of this state folder runs): jobs left running by a
    daemon that died go back to the queue, due at once, counting a service interruption instead of an attempt:
    a power loss is not the job's fault. A job reaching `max_interruptions` fails; one the user cancelled ends
    cancelled. With `host`, only the jobs claimed on that host (or by an svfrd from before claims named their
    host): another host's jobs are its own, or go back when their lease expires (`requeue_expired_leases`).
    Returns the jobs found, as they are now."""
    now = now or utcnow()
    query = select(Job).where(Job.state == JobState.RUNNING.value)
    if host is not None:
        query = query.where(or_(Job.claim_host == host, col(Job.claim_host).is_(None)))
    with _session(db) as session, session.begin():
        stranded = session.exec(query).all()
        for job in stranded:
            _requeue_stranded(job, max_interruptions, now)
        return list(stranded)


def _requeue_stranded(job: Job, max_interruptions: int, now: datetime) -> None:
    """A running job whose daemon is gone: queued again (or failed, or cancelled), no attempt counted."""
    job.updated_at, job.eta_seconds = now, None
    _clear_claim(job)
    if job.cancel_requested:
        job.state, job.finished_at = JobState.CANCELLED.value, now
        job.error_message = "cancelled by the user"
        return
    job.service_interruptions += 1
    if job.service_interruptions >= max_interruptions:
        job.state, job.finished_at = JobState.FAILED.value, now
        job.error_kind, job.error_message = ErrorKind.TRANSIENT.value, service_interruption_message(job)
    else:
        job.state, job.not_before, job.stage = JobState.QUEUED.value, None, None
        job.error_message = service_requeue_message(job, max_interruptions)


def failed_jobs_with_source_under(db: Engine, folders: Iterable[Path]) -> list[Job]:
    """Failed jobs whose row still places their video in one of `folders` (the inboxes): the failure was
    recorded, then the service died before the inputs were moved to failed/."""
    prefixes = [str(folder).rstrip("/") + "/" for folder in folders]
    if not prefixes:
        return []
    with _session(db) as session:
        return list(session.exec(
            select(Job)
            .where(Job.state == JobState.FAILED.value)
            .where(or_(*(col(Job.source_path).startswith(prefix, autoescape=True) for prefix in prefixes)))
            .order_by(Job.id)
        ).all())


# ---------------------------------------------------------------------------------------------------------------
# Publication plan: the final result names are recorded before any rename (see svfrd.service.results).


class NameTaken(QueueError):
    """Another unfinished job has already planned this final name: choose the next free one."""


def record_planned_results(
    db: Engine, job_id: int, *, output_path: str | Path, report_path: str | Path, frames: int,
    claim_token: str | None = None,
) -> Job:
    """Record the final names of a job's results before any of them is renamed, with the final frame count
    (which the throttled progress reports may not have written). Returns the updated job.

    In the same transaction: the claim is checked (ClaimLost, with `claim_token`), and the name must not be
    planned by another queued or running job (NameTaken): with several workers, two jobs for videos of the
    same name may both find a name free on disk before either renames anything."""
    with _session(db) as session, session.begin():
        _serialise(session, PLANNING_LOCK_KEY)  # else two hosts planning at once could both find the name free
        job = _held_job(session, job_id, claim_token)
        if _name_planned_elsewhere(session, job_id, str(output_path)):
            raise NameTaken(f"{output_path} is planned by another job")
        job.output_path, job.report_path, job.stage = str(output_path), str(report_path), "publish"
        job.plan_token = job.claim_token
        job.frames_done, job.frames_total, job.eta_seconds, job.updated_at = frames, frames, None, utcnow()
        return job


def _name_planned_elsewhere(session: Session, job_id: int, output_path: str) -> bool:
    query = select(Job.id).where(Job.output_path == output_path, Job.id != job_id,
                                 col(Job.state).in_([JobState.QUEUED.value, JobState.RUNNING.value]))
    return session.exec(query.limit(1)).first() is not None


def planned_names_of_other_jobs(db: Engine, job_id: int) -> set[str]:
    """The result names other queued or running jobs have planned (not yet on disk, maybe)."""
    query = select(Job.output_path).where(col(Job.output_path).is_not(None), Job.id != job_id,
                                          col(Job.state).in_([JobState.QUEUED.value, JobState.RUNNING.value]))
    with _session(db) as session:
        return set(session.exec(query).all())


def forget_planned_results(db: Engine, job_id: int) -> None:
    """The planned results are gone (deleted by hand): the job runs again and plans anew."""
    _change(db, job_id, output_path=None, report_path=None, plan_token=None)


def jobs_with_planned_results(db: Engine) -> list[Job]:
    """Unfinished jobs whose results were already named: their publication was cut short."""
    query = select(Job).where(
        col(Job.output_path).is_not(None), col(Job.state).in_([JobState.RUNNING.value, JobState.QUEUED.value])
    )
    with _session(db) as session:
        return list(session.exec(query).all())


# ---------------------------------------------------------------------------------------------------------------
# User requests (CLI).


def request_cancel(db: Engine, job_id: int) -> Job:
    """A queued job is cancelled at once; a running one gets `cancel_requested`, which the worker sees at
    its next progress report. Raises JobStateError for a finished job."""
    with _session(db) as session, session.begin():
        job = _locked_job(session, job_id)
        now = utcnow()
        if job.state == JobState.QUEUED.value:
            job.state, job.finished_at = JobState.CANCELLED.value, now
            job.error_message = "cancelled by the user"
        elif job.state == JobState.RUNNING.value:
            job.cancel_requested = True
        else:
            raise JobStateError(f"job {job_id} is already {job.state}; nothing to cancel")
        job.updated_at = now
        return job


def retry_job(db: Engine, job_id: int) -> Job:
    """A failed or cancelled job goes back to the queue with a fresh attempt count, as an ordinary job: a
    run-now request was for the run that ended (docs/architecture.md §9), so `svfrd run-now` hurries it again."""
    with _session(db) as session, session.begin():
        job = _locked_job(session, job_id)
        if job.state not in (JobState.FAILED.value, JobState.CANCELLED.value):
            raise JobStateError(f"job {job_id} is {job.state}; only failed or cancelled jobs can be retried")
        if job.stage == INTAKE_STAGE:
            raise JobStateError(f"job {job_id} was rejected at intake, so retrying cannot help: {job.error_message}")
        job.state, job.attempts, job.not_before = JobState.QUEUED.value, 0, None
        job.service_interruptions = 0
        job.cancel_requested, job.finished_at, job.run_now = False, None, False
        _clear_claim(job)
        job.error_kind = job.error_message = job.stage = None
        job.frames_done, job.frames_total, job.eta_seconds = 0, None, None
        job.updated_at = utcnow()
        return job


def set_priority(db: Engine, job_id: int, priority: int) -> Job:
    """`svfrd priority ID N`: where a queued job stands in the queue (a running or finished one keeps it, for
    the record, but it changes nothing)."""
    problem = priority_problem(priority)
    if problem:
        raise QueueError(f"priority {priority}: {problem}")
    with _session(db) as session, session.begin():
        job = _locked_job(session, job_id)
        if job.state != JobState.QUEUED.value:
            raise JobStateError(f"job {job_id} is {job.state}; only a queued job's priority can be changed")
        job.priority, job.updated_at = priority, utcnow()
        return job


def request_run_now(db: Engine, job_id: int) -> Job:
    """`svfrd run-now ID`: the queued job runs next, whatever the pause and the schedule say (a backed-off
    retry waits no longer)."""
    with _session(db) as session, session.begin():
        job = _locked_job(session, job_id)
        if job.state != JobState.QUEUED.value:
            raise JobStateError(f"job {job_id} is {job.state}; only a queued job can be run now "
                                f"(`svfrd retry {job_id}` queues a failed or cancelled one again)")
        job.run_now, job.not_before, job.updated_at = True, None, utcnow()
        return job


def read_service_state(db: Engine, name: str) -> str | None:
    """A setting of the service that a command changes while it runs (the pause: svfrd.service.pause)."""
    with _session(db) as session:
        row = session.get(ServiceState, name)
        return None if row is None else row.value


def write_service_state(db: Engine, name: str, value: str) -> None:
    with _session(db) as session, session.begin():
        row = session.get(ServiceState, name)
        if row is None:
            session.add(ServiceState(name=name, value=value))
        else:
            row.value, row.updated_at = value, utcnow()


# ---------------------------------------------------------------------------------------------------------------
# Queries for views (`svfrd status`, `show`, the live view, intake's scans). Read-only engines work here.


def get_job(db: Engine, job_id: int) -> Job | None:
    with _session(db) as session:
        return session.get(Job, job_id)


def list_jobs(db: Engine, limit: int = 50, states: Iterable[str | JobState] | None = None) -> list[Job]:
    """The most recent jobs first."""
    query = select(Job).order_by(col(Job.id).desc()).limit(limit)
    if states is not None:
        query = query.where(col(Job.state).in_([JobState(s).value for s in states]))
    with _session(db) as session:
        return list(session.exec(query).all())


def paths_owned_by_jobs(
    db: Engine, paths: Iterable[str], states: Iterable[str | JobState], column: str = "source_path"
) -> set[str]:
    """Those of `paths` that are the `column` (source_path, mask_path, ...) of a job in one of `states`.
    Intake uses it to leave alone the files that queued, running or failed jobs still own; only the one
    column is read, so a rescan of a busy inbox stays cheap."""
    paths = list(paths)
    if not paths:
        return set()
    attribute = getattr(Job, column)
    query = select(attribute).where(col(attribute).in_(paths), col(Job.state).in_([JobState(s).value for s in states]))
    with _session(db) as session:
        return set(session.exec(query).all())


def drop_paths_no_waiting_job_names(
    db: Engine, paths: Iterable[str], columns: Iterable[str], drop: Callable[[str], None]
) -> list[str]:
    """Call `drop` for each of `paths` that no queued or running job names in any of `columns`, inside one
    write transaction (SQLite: BEGIN IMMEDIATE): no job can be queued, retried or claimed between the check
    and the drop, so none starts to find a file it needs gone. Returns the paths dropped."""
    paths = list(paths)
    if not paths:
        return []
    waiting = [JobState.QUEUED.value, JobState.RUNNING.value]
    with _session(db) as session, session.begin():
        named: set[str] = set()
        for column in columns:
            attribute = getattr(Job, column)
            named |= set(session.exec(select(attribute).where(col(attribute).in_(paths),
                                                              col(Job.state).in_(waiting))).all())
        unused = [path for path in paths if path not in named]
        for path in unused:
            drop(path)
    return unused


@dataclass
class Overview:
    """The jobs table at one moment, as the live status view shows it."""

    counts: dict[str, int]  # jobs per state
    running: list[Job]
    queued: list[Job]  # the next few, in claim order
    recent: list[Job]  # finished jobs, newest first


def overview(db: Engine, *, queued_limit: int, recent_limit: int) -> Overview:
    """Counts per state, the running jobs, the next queued ones and the latest finished ones, read in one
    transaction so the numbers and the lists agree."""
    finished = [state.value for state in JobState if state.finished]
    with _session(db) as session, session.begin():
        counts = dict(session.exec(select(Job.state, func.count()).group_by(Job.state)).all())
        running = session.exec(select(Job).where(Job.state == JobState.RUNNING.value).order_by(col(Job.id))).all()
        queued = session.exec(
            select(Job).where(Job.state == JobState.QUEUED.value)
            .order_by(*QUEUE_ORDER).limit(queued_limit)
        ).all()
        recent = session.exec(
            select(Job).where(col(Job.state).in_(finished))
            .order_by(col(Job.finished_at).desc(), col(Job.id).desc()).limit(recent_limit)
        ).all()
    return Overview(counts=counts, running=list(running), queued=list(queued), recent=list(recent))


# ---------------------------------------------------------------------------------------------------------------
# Queries for the web page (svfrd.web).


def jobs_updated_since(db: Engine, moment: datetime, page: int = 200) -> list[Job]:
    """All jobs whose row changed at or after `moment` (every change sets `updated_at`), oldest change first:
    what the page's event stream polls for. Read in indexed pages of `page` rows, each starting after the last
    row of the one before: with a plain limit, more than `page` rows changed at about the same moment (a
    folder of videos taken at once) would hide every later change from a caller that moves `moment` on by
    the rows it saw."""
    jobs: list[Job] = []
    after: Job | None = None
    with _session(db) as session:
        while True:
            query = select(Job).where(col(Job.updated_at) >= moment)
            if after is not None:
                query = query.where(or_(col(Job.updated_at) > after.updated_at,
                                        and_(col(Job.updated_at) == after.updated_at, col(Job.id) > after.id)))
            rows = list(session.exec(query.order_by(col(Job.updated_at), col(Job.id)).limit(page)).all())
            jobs += rows
            if len(rows) < page:
                return jobs
            after = rows[-1]


def latest_job_id(db: Engine) -> int:
    """The highest job id so far (0 for an empty table): jobs made later have higher ids."""
    with _session(db) as session:
        return session.exec(select(func.max(Job.id))).one() or 0


def job_for_source(db: Engine, source_path: str | Path, after_id: int) -> Job | None:
    """The job intake made for the file now at `source_path`, among the jobs newer than `after_id` (an older
    job may have had a file of the same name, since moved to done/)."""
    query = (select(Job).where(Job.source_path == str(source_path), col(Job.id) > after_id)
             .order_by(col(Job.id)).limit(1))
    with _session(db) as session:
        return session.exec(query).first()
