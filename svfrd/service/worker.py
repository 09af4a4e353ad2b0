"""The worker process: runs one job at a time with an engine that stays loaded between jobs.

The supervisor (`svfrd.service.supervisor`) starts it with the multiprocessing "spawn" context (a fresh interpreter: no
inherited locks, threads or CUDA state) and talks to it over a Pipe, in the messages of
`svfrd.service.messages`:

    supervisor -> worker   RunJob(job_id)   Stop()
    worker -> supervisor   WorkerReady(engine_name)   WorkerStartFailed(message, config_problem)
                           JobDeadline(job_id, frames, seconds)   JobFinished(job_id, outcome, message)

JobDeadline comes once the job's video is probed: the supervisor stops a job still running past it
([limits] job_timeout_per_frame, job_timeout_min), however stuck its engine is.

A job that finds the service misconfigured (the face model deleted under the running service) goes back to the
queue with outcome CONFIG_ERROR, and the daemon stops: that is never the input's fault.

SIGUSR1 asks the worker to interrupt the running job at its next progress report (a clean stop of the daemon):
the job goes back to the queue without counting an attempt, keeping its checkpoints: the next run goes on from
them (docs/architecture.md, "Resume"). A job's checkpoints go when it ends (done, failed, cancelled,
superseded). The worker dies with the supervisor (Linux
parent-death signal), so an orphaned worker can never race a restarted daemon for the same job.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable

from sqlalchemy import Engine as Database

from svfrd.config import Config
from svfrd.domain import Task
from svfrd.engines.interface import Engine
from svfrd.errors import BadInputError, ConfigError, JobCancelled, SvfrdError, TransientError, is_fatal_gpu_error
from svfrd.files import beneath, placement
from svfrd.files.hashing import file_sha256
from svfrd.jobs import checkpoints
from svfrd.jobs.database import open_database
from svfrd.jobs.model import Job, JobState
from svfrd.jobs.store import (
    ClaimLost,
    fail_job,
    forget_planned_results,
    get_job,
    record_progress,
    release_job,
    supersede_job,
)
from svfrd.ops.logs import JobLogger, job_logger, setup_logging
from svfrd.service import input_copies, results
from svfrd.service.messages import (
    FromWorker,
    JobDeadline,
    JobFinished,
    Outcome,
    RunJob,
    Stop,
    ToWorker,
    WorkerReady,
    WorkerStartFailed,
)
from svfrd.service.report import build_report
from svfrd.service.source_video import HeldVideo, hold_video

log = logging.getLogger(__name__)

#: Outcomes that end a job for good: its checkpoints go. A retry, an interruption (the daemon stopping, a pause)
#: or a service misconfiguration keep them, so the job goes on where it was.
ENDED = frozenset({Outcome.DONE, Outcome.FAILED, Outcome.CANCELLED, Outcome.SUPERSEDED})

#: Seconds between progress writes to the job row (stage changes are written at once).
PROGRESS_INTERVAL = 2.0

_interrupt_requested = threading.Event()


class WorkerInterrupted(Exception):
    """Raised from a progress report after SIGUSR1: the daemon is stopping and re-queues the job."""


# ---------------------------------------------------------------------------------------------------------------
# Progress.


class JobProgress:
    """The `ProgressReporter` for one job: cheap to call per frame. It writes the row at most every `interval`
    seconds (and when a stage is first reached), estimates the time left in the stage reported, and raises
    JobCancelled when the user cancelled the job, or WorkerInterrupted when the daemon is stopping.

    Stages may interleave (the pipeline reports "encode" for each frame the engine "restore"s), so a stage's
    rate is measured from when it was first reached (and from the count it had then: each face's run of
    several goes on from the frames of the faces before it, svfrd.media.multiface), and its time is the sum of
    the spans reported under it."""

    def __init__(
        self,
        db: Database,
        job_id: int,
        interrupted: Callable[[], bool] = _interrupt_requested.is_set,
        interval: float = PROGRESS_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        claim_token: str | None = None,
    ):
        self.db, self.job_id, self.interrupted, self.claim_token = db, job_id, interrupted, claim_token
        self.interval, self.clock = interval, clock
        self.stage: str | None = None
        self.last_call = clock()
        self.last_write = -math.inf
        self.first_seen: dict[str, tuple[float, int]] = {}  # stage: (when, done then)
        self.seconds_by_stage: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.interrupted():
            raise WorkerInterrupted()
        now = self.clock()
        self._account(stage, now)
        new_stage = stage not in self.first_seen
        if new_stage:
            self.first_seen[stage] = (now, done)
        if new_stage or now - self.last_write >= self.interval:
            self.last_write = now
            if record_progress(self.db, self.job_id, stage, done, total, self.eta(stage, done, total, now),
                               claim_token=self.claim_token):
                raise JobCancelled("cancelled by the user (svfrd cancel)")

    def _account(self, stage: str | None, now: float) -> None:
        """The time since the last call belongs to the stage reported then."""
        if self.stage is not None:
            self.seconds_by_stage[self.stage] = self.seconds_by_stage.get(self.stage, 0.0) + now - self.last_call
        self.stage, self.last_call = stage, now

    def eta(self, stage: str, done: int, total: int | None, now: float) -> float | None:
        """Seconds left in `stage` at the rate seen so far in it (None until there is a rate)."""
        since, done_then = self.first_seen[stage]
        if not total or done <= done_then or done > total:
            return None
        return round((now - since) / (done - done_then) * (total - done), 1)

    def timings(self) -> dict[str, float]:
        """Seconds spent per stage so far."""
        self._account(self.stage, self.clock())
        return {stage: round(seconds, 3) for stage, seconds in self.seconds_by_stage.items()}


# ---------------------------------------------------------------------------------------------------------------
# One job.


class JobRunner:
    """Runs jobs in this process with one engine, and records how each ended."""

    def __init__(self, config: Config, db: Database, engine: Engine,
                 tell_supervisor: Callable[[FromWorker], None] = lambda message: None):
        self.config, self.db, self.engine = config, db, engine
        self.tell_supervisor = tell_supervisor
        self.must_restart = False  # set after a fatal GPU error: the worker exits once the job is settled
        #: The claim of the running job (None: unfenced, for callers that hold no claim).
        self.claim_token: str | None = None

    def run(self, job_id: int, claim_token: str | None = None) -> JobFinished:
        """Run the job to its end and say how it ended (the outcomes are in `svfrd.service.messages.Outcome`).
        With `claim_token`, every record is made only while that claim holds (svfrd.service.results)."""
        self.claim_token = claim_token
        job = get_job(self.db, job_id)
        if job is None:
            log.error("job %s vanished from the database before it ran", job_id)
            return JobFinished(job_id, Outcome.FAILED)
        logger = job_logger(job_id)
        self.remove_checkpoints_of_ended_jobs()
        finished = self._run_to_outcome(job, logger)
        if finished.outcome in ENDED:
            checkpoints.remove_folder(checkpoints.job_folder(self.config.service.state_dir, job_id))
        return finished

    def _run_to_outcome(self, job: Job, logger: JobLogger) -> JobFinished:
        job_id = job.id
        try:
            if self.claim_token is not None and job.claim_token != self.claim_token:
                raise ClaimLost(f"job {job_id} was claimed again before this worker started it")
            return self._run_and_settle(job, logger)
        except ClaimLost as err:  # also from recording a failure: the row is another attempt's now
            self._discard_own_temps(job)
            logger.warning("stopped without publishing: %s", err)
            return JobFinished(job_id, Outcome.CLAIM_LOST)

    def _run_and_settle(self, job: Job, logger: JobLogger) -> JobFinished:
        job_id = job.id
        try:
            return JobFinished(job_id, self._run(job, logger))
        except JobCancelled as err:
            self._discard_unpublished(job_id)
            fail_job(self.db, job_id, err, retry_backoff=self.config.service.retry_backoff,
                     claim_token=self.claim_token)
            logger.info("cancelled")
            return JobFinished(job_id, Outcome.CANCELLED)
        except WorkerInterrupted:
            self._release(job_id)
            logger.info("interrupted (the daemon is stopping, or paused): the job is back in the queue")
            return JobFinished(job_id, Outcome.INTERRUPTED)
        except ConfigError as err:
            self._release(job_id)
            return JobFinished(job_id, Outcome.CONFIG_ERROR, str(err))
        except (BadInputError, TransientError) as err:
            return JobFinished(job_id, self._settle(job_id, err, logger))
        except ClaimLost:
            raise  # no error of the job's: `run` drops this attempt (a progress report found the claim lost)
        except Exception as err:  # noqa: BLE001 - anything unexpected may be a passing fault: retry it
            logger.error("unexpected error", exc_info=True)  # as exc_info: the log keeps the traceback's lines
            if is_fatal_gpu_error(err):
                # The CUDA context is broken: retrying here would fail again. The job is retried by a fresh worker.
                self.must_restart = True
                logger.error("fatal GPU error; this worker exits so the supervisor starts a fresh one")
            return JobFinished(job_id, self._settle(job_id, unexpected_error(job, err), logger))

    def _run(self, job: Job, logger: JobLogger) -> Outcome:
        """Settle the job the cheapest way that is right: finish an earlier run's publication, hand a replaced
        video to a new job (superseded), publish a duplicate's earlier results, and only then restore."""
        if job.output_path:
            # An earlier run got as far as choosing its result names: finish that run instead of redoing it.
            if results.complete_publication(self.config, self.db, job, self.engine.name, self.claim_token):
                return Outcome.DONE
            logger.info("the results of an earlier, interrupted run are gone; restoring again")
            forget_planned_results(self.db, job.id)
        # Hashed and restored from one open file: a swap in the inbox meanwhile changes nothing (source_video).
        with hold_video(self.config, job) as video:
            new = supersede_if_replaced(self.db, job, video)
            if new is not None:
                logger.info("superseded: %s was replaced with different content after it was queued; job %d "
                            "restores the new content", job.source_name, new.id)
                return Outcome.SUPERSEDED
            if results.publish_reused_results(self.config, self.db, job, self.claim_token):
                return Outcome.DONE
            self._restore(job, logger, video)
        return Outcome.DONE

    def _restore(self, job: Job, logger: JobLogger, video: HeldVideo | None) -> None:
        from svfrd.media.pipeline import restore_video  # here, so `svfrd status` never loads the media stack

        video = self._check_before_restoring(job, video)
        job = input_copies.ensure_copies(self.db, job, self.config.service.state_dir)
        temps = results.temp_files(self.config, job)
        progress = JobProgress(self.db, job.id, claim_token=self.claim_token)
        started = time.monotonic()
        logger.info("restoring %s (tasks %s) with %s", job.source_name, "+".join(job.task_labels),
                    self.engine.name)
        resumable = pipeline_job(self.config, job, temps, video.media_path, self.engine.name)
        result = restore_video(resumable, self.engine, progress,
                               on_probed=lambda info: self._announce_deadline(job, info.frames))

        def write_report(finals: results.ResultFiles) -> None:
            report = build_report(job, self.engine.name, result, finals, progress.timings(),
                                  time.monotonic() - started, engine_details=getattr(self.engine, "details", dict)())
            temps.report.unlink(missing_ok=True)  # written again when another job took the names first
            results.write_json(temps.report, report.to_json())

        if result.resume:
            logger.info("resumed from frame %d: %d frames reused from an earlier run", result.resume["from_frame"],
                        result.resume["frames_reused"])

        planned = results.plan_and_record(self.config, self.db, job, result.frames, self.claim_token, write_report)
        if results.complete_publication(self.config, self.db, planned, self.engine.name, self.claim_token) is None:
            raise TransientError(f"the restored video of {job.source_name} vanished from the outbox before it "
                                 "was published; the job will run again")

    def remove_checkpoints_of_ended_jobs(self) -> None:
        """Checkpoints of jobs that ended without this worker (failed after a worker death, cancelled while
        queued, deleted); a job in any other state (queued, running, paused) may still resume."""
        state_dir = self.config.service.state_dir
        ended = {JobState.DONE.value, JobState.FAILED.value, JobState.CANCELLED.value}
        for job_id in checkpoints.job_ids_with_checkpoints(state_dir):
            job = get_job(self.db, job_id)
            if job is None or job.state in ended:
                checkpoints.remove_folder(checkpoints.job_folder(state_dir, job_id))

    def _announce_deadline(self, job: Job, frames: int) -> None:
        """The job's time limit is known once its frames are: the supervisor enforces it."""
        self.tell_supervisor(JobDeadline(job.id, frames, self.config.limits.job_timeout(frames)))

    def _check_before_restoring(self, job: Job, video: HeldVideo | None) -> HeldVideo:
        """Everything that must hold before a job's (long) restoration starts; each raises the error that
        decides what happens to the job. Checks of the input itself (it is still there) go here."""
        check_service_configured(self.config)
        video = check_source_present(job, video)
        check_free_space(self.config)
        return video

    def _settle(self, job_id: int, error: SvfrdError, logger: JobLogger) -> Outcome:
        self._discard_unpublished(job_id)
        job = results.settle_failure(self.config, self.db, job_id, error, self.claim_token)
        if job.state == JobState.QUEUED.value:
            logger.warning("will retry (attempt %d of %d failed): %s", job.attempts, job.max_attempts, error)
            return Outcome.RETRY
        logger.error("%s: %s", job.state, job.error_message)
        return Outcome.CANCELLED if job.state == JobState.CANCELLED.value else Outcome.FAILED

    def _release(self, job_id: int) -> None:
        """Back to the queue, due at once, no attempt counted: the job did nothing wrong."""
        self._discard_unpublished(job_id)
        release_job(self.db, job_id, self.claim_token)

    def _discard_unpublished(self, job_id: int) -> None:
        """Remove temporary results unless they were already planned for publication (then they are kept
        for `complete_publication`, see svfrd.service.results)."""
        job = get_job(self.db, job_id)
        if job is not None and not job.output_path:
            results.remove_temp_files(self.config, job)

    def _discard_own_temps(self, job: Job) -> None:
        """After losing the claim: remove this attempt's temporary results, unless this attempt had planned
        them (then the attempt that took the job over publishes them, svfrd.service.results)."""
        results.remove_temps_of_lost_attempt(self.config, get_job(self.db, job.id) or job, self.claim_token)


def unexpected_error(job: Job, err: Exception) -> TransientError:
    return TransientError(
        f"unexpected {type(err).__name__} while restoring {job.source_name}: {err} (the traceback is in the "
        f"service log); such errors are retried up to {job.max_attempts} times in all"
    )


def job_identity(config: Config, job: Job, engine_name: str) -> dict:
    """What decides a job's result: a checkpoint made under anything else is never resumed from
    (svfrd.jobs.checkpoints)."""
    from svfrd import __version__

    return {
        "job": job.id, "source_sha256": job.content_hash, "tasks": job.tasks, "options": job.options_json,
        "seed": job.seed, "mask": job.mask_copy, "reference": job.reference_copy, "engine": engine_name,
        "svfrd": __version__, "faces": config.faces, "engine_config": config.engine,
        "output": [config.output.mode, config.output.crf, config.output.segment_seconds],
    }


def pipeline_job(config: Config, job: Job, temps: results.ResultFiles, source: Path, engine_name: str | None = None):
    """What the pipeline needs; `source` is the path that opens the video held open (`HeldVideo.media_path`).
    With `engine_name` the job is resumable: it checkpoints into STATE_DIR/checkpoints/job<ID>/."""
    from svfrd.media.pipeline import PipelineJob

    return PipelineJob(
        source=source,
        output=temps.video,
        tasks=frozenset(Task(t) for t in job.task_ids),
        seed=job.seed,
        # The service's own copies, read once at intake: never the inbox files (svfrd.service.input_copies).
        mask_path=Path(job.mask_copy) if job.mask_copy else None,
        reference_path=Path(job.reference_copy) if job.reference_copy else None,
        options=json.loads(job.options_json or "{}"),
        faces=config.faces,
        output_cfg=config.output,
        preview_video=temps.preview,
        contact_sheet=temps.contact_sheet,
        limits=config.limits,
        checkpoints=checkpoints.job_folder(config.service.state_dir, job.id) if engine_name else None,
        identity=job_identity(config, job, engine_name) if engine_name else {},
    )


def service_config_problem(config: Config) -> str | None:
    """What in the configuration stops every job from running, before any is taken (None when all is well).
    Checked by the daemon before it starts, and by each job in case it changed since."""
    from svfrd.media.face_model import face_model_problem

    problem = face_model_problem(config.faces.model)
    if problem is not None:
        return f"{problem}, or set `[faces] model` in {config.path} to where the file is"
    return None


def check_service_configured(config: Config) -> None:
    problem = service_config_problem(config)
    if problem is not None:
        raise ConfigError(problem)


def supersede_if_replaced(db: Database, job: Job, video: HeldVideo | None) -> Job | None:
    """Hash the job's video again (from the file held open for the job): a file overwritten while its job
    waited is a new job (returned), and the old one is cancelled saying so, so that dedupe and the report never
    name content that was not restored. Only a video still in its inbox is checked; a missing one is left for
    `check_source_present`."""
    if video is None or not beneath.is_beneath(job.inbox, job.source_path):
        return None
    content_hash = file_sha256(video.file)
    if content_hash == job.content_hash:
        return None
    return supersede_job(
        db, job.id,
        lambda new_id: (f"superseded: {job.source_name} was replaced with different content after it was queued; "
                        f"job {new_id} restores the new content"),
        inbox=job.inbox, source_name=job.source_name, source_path=job.source_path, sidecar_path=job.sidecar_path,
        mask_path=job.mask_path, reference_path=job.reference_path, mask_copy=job.mask_copy,
        reference_copy=job.reference_copy, tasks=job.tasks, options_json=job.options_json,
        seed=job.seed, content_hash=content_hash, max_attempts=job.max_attempts,
    )


def check_source_present(job: Job, video: HeldVideo | None) -> HeldVideo:
    if video is None:
        raise BadInputError(
            f"{job.source_path} is no longer there: it was moved or deleted before its turn came. "
            "Drop the video into the inbox again to restore it"
        )
    return video


def check_free_space(config: Config) -> None:
    config.output.outbox.mkdir(parents=True, exist_ok=True)
    placement.ensure_free_space(config.output.outbox, config.service.min_free_space_mb)


# ---------------------------------------------------------------------------------------------------------------
# The process.


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL us when the supervisor dies, so no orphan finishes a job a new daemon re-runs."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        log.warning("cannot ask to be stopped with the daemon (prctl unavailable)")
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _install_signal_handlers() -> None:
    # Ctrl-C at a terminal reaches the whole process group; only the supervisor decides what to do with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, lambda _signum, _frame: _interrupt_requested.set())


def use_worker_device(device: str, set_device=None) -> None:
    """Make `device` ("cuda:N") this process's current CUDA device. The engine puts its models there
    explicitly, but whatever allocates on "the current device" (a bare "cuda", CUDA graphs, kernels of
    libraries, the CUDA context itself) would otherwise land on GPU 0 in every worker (docs/architecture.md,
    "Workers, claims and leases"). Other devices ("cpu", "auto", "cuda") leave the default alone."""
    kind, _, index = device.partition(":")
    if kind != "cuda" or not index.isdigit():
        return
    if set_device is None:
        import torch

        if not torch.cuda.is_available():
            return  # the engine says what is wrong with the device and what to do
        set_device = torch.cuda.set_device
    set_device(int(index))


def _create_engine(config: Config) -> Engine:
    from svfrd.engines import create_engine

    return create_engine(config.engine, face_model=config.faces.model)


def worker_main(config: Config, conn: Connection, parent_pid: int, verbose: bool = False) -> None:
    """Entry point of the worker process."""
    setup_logging(verbose)
    _die_with_parent(parent_pid)
    _install_signal_handlers()
    try:
        check_service_configured(config)
        use_worker_device(config.engine.device)
        engine = _create_engine(config)
        import svfrd.media.pipeline  # noqa: F401 - load the media stack now, not in the first job's time
    except Exception as err:  # noqa: BLE001 - reported to the supervisor, which exits with the message
        if not isinstance(err, SvfrdError):
            log.error("the worker could not start", exc_info=True)
        conn.send(WorkerStartFailed(f"the worker could not start: {err}", isinstance(err, ConfigError)))
        return
    db = open_database(config.service.database_url)
    runner = JobRunner(config, db, engine, tell_supervisor=conn.send)
    runner.remove_checkpoints_of_ended_jobs()  # e.g. of a publication that start-up recovery finished
    conn.send(WorkerReady(engine.name))
    log.info("worker %d ready with the %s engine", os.getpid(), engine.name)
    serve(conn, runner)


def serve(conn: Connection, runner: JobRunner) -> None:
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the supervisor is gone
        if not run_message(conn, runner, message):
            return


def run_message(conn: Connection, runner: JobRunner, message: ToWorker) -> bool:
    """Act on one message from the supervisor; False when the worker is to end."""
    match message:
        case RunJob(job_id=job_id, claim_token=claim_token):
            finished = runner.run(job_id, claim_token)
            # Cleared only between jobs: an interrupt sent just after RunJob must still stop that job.
            _interrupt_requested.clear()
            conn.send(finished)
            return not runner.must_restart
        case Stop():
            return False
    log.error("ignored an unknown message from the supervisor: %r", message)
    return True
