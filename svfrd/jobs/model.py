"""The jobs table: the single source of truth shared by intake, supervisor, worker and status view, all of which
read and write it through `svfrd.jobs.store`.

Schema changes go through an Alembic migration in `migrations/versions/`; never `create_all`.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from svfrd.domain import DEFAULT_SEED, Task


def utcnow() -> datetime:
    """Aware UTC: SQLModel's datetime columns refuse naive values and return aware UTC ones."""
    return datetime.now(timezone.utc)


def as_utc(moment: datetime | None) -> datetime | None:
    """Rows written by an older svfrd (or read back by a database without time zones) hold naive UTC times."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=timezone.utc)


class JobState(str, enum.Enum):
    """queued -> running -> done | failed | cancelled. A running job whose worker died goes back to queued
    (a transient failure, counted in `attempts`) until `max_attempts` is reached. A job left running by a
    daemon that died (killed, power loss) goes back too, counted apart in `service_interruptions`."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class ErrorKind(str, enum.Enum):
    BAD_INPUT = "bad_input"  # never retried
    TRANSIENT = "transient"  # retried with backoff up to max_attempts
    RESOURCE = "resource"  # the job needs more than the machine has (GPU memory): never retried, input fine


class Job(SQLModel, table=True):
    __tablename__ = "jobs"

    id: int | None = Field(default=None, primary_key=True)
    state: str = Field(default=JobState.QUEUED.value, index=True)

    # What was dropped, and where it lies now (inbox, then done/ or failed/).
    inbox: str
    source_name: str
    source_path: str
    sidecar_path: str | None = None
    mask_path: str | None = None
    reference_path: str | None = None
    # The service's own copies of the mask and reference, read once at intake; the worker uses these, so a
    # later change to the inbox files changes nothing (svfrd.service.input_copies).
    mask_copy: str | None = None
    reference_copy: str | None = None

    # What to do: task ids "0,2", engine options as JSON, seed.
    tasks: str
    options_json: str = "{}"
    seed: int = DEFAULT_SEED

    # Deduplication: the same content with the same normalised options has the same key; a later job with an
    # earlier one's key reuses its results instead of restoring again (svfrd.jobs.store, svfrd.service.results).
    content_hash: str = Field(index=True)
    dedupe_key: str = Field(index=True)

    # Scheduling.
    attempts: int = 0
    max_attempts: int = 3
    # Deaths of the whole service while the job ran: not the job's fault, so not counted in `attempts`.
    service_interruptions: int = 0
    not_before: datetime | None = None
    cancel_requested: bool = False
    # Higher runs first, then arrival (-100..100; docs/architecture.md, "Pause, schedule, priority, notifications").
    priority: int = 0
    # `svfrd run-now ID`: runs before the others, whatever the pause and the schedule say.
    run_now: bool = False
    worker_pid: int | None = None
    # The claim of a running job (docs/architecture.md, "Workers, claims and leases"): who runs it, a fresh
    # random token per claim that publication compares (fencing), and until when the claim holds unless renewed.
    claim_host: str | None = None
    claim_device: str | None = None
    claim_token: str | None = None
    lease_expires_at: datetime | None = None
    # The claim token of the attempt that planned the results (`output_path`): its temporary files carry it.
    plan_token: str | None = None

    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)

    # Progress, written by the worker at most every few seconds.
    stage: str | None = None
    frames_done: int = 0
    frames_total: int | None = None
    eta_seconds: float | None = None

    # Results.
    engine: str | None = None
    output_path: str | None = None
    report_path: str | None = None
    error_kind: str | None = None
    error_message: str | None = None

    @property
    def percent_done(self) -> int | None:
        """Frames done of the total, in whole percent; None while the total is unknown."""
        return 100 * self.frames_done // self.frames_total if self.frames_total else None

    @property
    def task_ids(self) -> list[int]:
        return [int(t) for t in self.tasks.split(",") if t != ""]

    @property
    def task_labels(self) -> list[str]:
        """The tasks by name, e.g. ["bfr", "inpaint"] (as the report and the logs show them)."""
        return [Task(t).label for t in self.task_ids]


# The queue's order (svfrd.jobs.store.QUEUE_ORDER): a claim finds the next queued job without a sort.
Index("ix_jobs_queue_order", Job.state, Job.run_now.desc(), Job.priority.desc(), Job.created_at, Job.id)


class ServiceState(SQLModel, table=True):
    """Settings of the running service that a command changes while it runs, one row per name (the pause:
    svfrd.service.pause). In the database so they survive a restart and every client sees the same."""

    __tablename__ = "service_state"

    name: str = Field(primary_key=True)
    value: str
    updated_at: datetime = Field(default_factory=utcnow)
