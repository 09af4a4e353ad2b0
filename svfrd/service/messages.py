"""What the supervisor and its worker process say to each other over their pipe (pickled, so plain frozen
dataclasses). The receiver dispatches on the type; `svfrd.service.worker` explains the protocol."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(str, enum.Enum):
    """How a job ended in the worker."""

    DONE = "done"
    FAILED = "failed"
    RETRY = "retry"  # a transient failure: back in the queue with a backoff
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"  # its video was replaced after it was queued: cancelled, a new job restores it
    INTERRUPTED = "interrupted"  # the daemon is stopping: back in the queue, no attempt counted
    CONFIG_ERROR = "config_error"  # the service is misconfigured: back in the queue, the daemon stops
    CLAIM_LOST = "claim_lost"  # its lease expired and the job went back to the queue: nothing was recorded


# Supervisor -> worker.


@dataclass(frozen=True)
class RunJob:
    job_id: int
    #: The claim the supervisor made for this run: every record the worker makes checks it (fencing).
    claim_token: str | None = None


@dataclass(frozen=True)
class Stop:
    """End the idle worker."""


# Worker -> supervisor.


@dataclass(frozen=True)
class WorkerReady:
    engine_name: str


@dataclass(frozen=True)
class WorkerStartFailed:
    message: str
    config_problem: bool  # the configuration is at fault (exit code 2), not the machine


@dataclass(frozen=True)
class JobFinished:
    job_id: int
    outcome: Outcome
    message: str = ""  # for CONFIG_ERROR: what is wrong and how to fix it


@dataclass(frozen=True)
class JobDeadline:
    """Sent once the running job's video is probed: it may run `seconds` in all, from when it was started, as
    [limits] job_timeout_per_frame and job_timeout_min give for its `frames`."""

    job_id: int
    frames: int
    seconds: float


ToWorker = RunJob | Stop
FromWorker = WorkerReady | WorkerStartFailed | JobFinished | JobDeadline
