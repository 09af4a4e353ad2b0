"""The daemon: takes the state lock, keeps the queue fed from the inboxes, and runs jobs one at a time in a
supervised worker process (`svfrd.service.worker`).

The main loop sleeps in one `select` on: a self-pipe (woken by signals and by inbox file events), the worker's
pipe and the worker's process sentinel, with a timeout set to the next thing due (inbox rescan, backed-off job,
watchdog keep-alive, or the check of a running job). Idle, it wakes once per scan interval: no busy polling.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import selectors
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Callable

from sqlalchemy import Engine as Database
from sqlalchemy.exc import SQLAlchemyError

from svfrd.config import Config
from svfrd.errors import JobCancelled, TransientError
from svfrd.files import placement
from svfrd.jobs.database import open_database, upgrade_database
from svfrd.jobs.model import Job, JobState
from svfrd.jobs.store import (
    claim_next_job,
    fail_job,
    get_job,
    jobs_with_planned_results,
    release_job,
    requeue_interrupted,
    seconds_until_next_job,
)
from svfrd.ops import notify
from svfrd.ops.logs import job_logger
from svfrd.service import results
from svfrd.service.intake import Intake
from svfrd.service.lock import StateLockedError, acquire_state_lock
from svfrd.service.worker import worker_main

log = logging.getLogger(__name__)

#: While a job runs: how often its row is read (cancel requests, the status line).
RUNNING_CHECK_INTERVAL = 2.0
#: How long a cancelled job's worker may take to notice the cancel by itself before it is killed.
CANCEL_GRACE = 15.0
#: File events come in floods while a big file is copied in: scan at most this often because of them.
HINT_SCAN_SPACING = 0.5
#: Pause after an unexpected error in the main loop, so a persistent one does not spin.
LOOP_ERROR_PAUSE = 5.0
#: How long an idle worker gets to exit after "stop".
WORKER_EXIT_GRACE = 5.0
#: Consecutive worker deaths before it is ready after which the daemon gives up (a broken GPU or install).
MAX_STARTUP_DEATHS = 3

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_LOCKED = 0, 1, 2, 3


# ---------------------------------------------------------------------------------------------------------------
# Waking the main loop.


class Wakeup:
    """A self-pipe. Signals (through `signal.set_wakeup_fd`) and other threads write a byte to it, so the
    main loop's `select` returns at once instead of the loop polling a flag."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def fileno(self) -> int:
        return self._read

    @property
    def write_fd(self) -> int:
        return self._write

    def set(self) -> None:
        try:
            os.write(self._write, b"\0")
        except BlockingIOError:
            pass  # the pipe is full, so the loop will wake anyway

    def drain(self) -> None:
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)


# ---------------------------------------------------------------------------------------------------------------
# The worker process, seen from the supervisor.


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown"
        return f"signal {-exitcode}, {name}"
    return f"exit code {exitcode}"


@dataclass
class WorkerProcess:
    """One worker process and what the supervisor knows of it."""

    config: Config
    verbose: bool = False
    process: Any = None
    conn: Connection | None = None
    ready: bool = False
    engine_name: str | None = None
    job: Job | None = None
    cancel_seen_at: float | None = None

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe()
        self.process = context.Process(
            target=worker_main, args=(self.config, child_end, os.getpid(), self.verbose), name="svfrd-worker"
        )
        self.process.start()
        child_end.close()  # so that our end sees EOF when the worker dies
        self.conn, self.ready, self.job, self.cancel_seen_at = parent_end, False, None, None
        log.info("worker process %d started", self.process.pid)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    @property
    def idle(self) -> bool:
        return self.ready and self.job is None and self.alive

    def wait_objects(self) -> list:
        return [self.conn, self.process.sentinel] if self.process is not None else []

    def receive(self) -> list[tuple]:
        """Messages waiting on the pipe (none once the worker is gone)."""
        received = []
        try:
            while self.conn.poll():
                received.append(self.conn.recv())
        except (EOFError, OSError):
            pass
        return received

    def run(self, job: Job) -> None:
        self.job, self.cancel_seen_at = job, None
        try:
            self.conn.send(("run", job.id))
        except OSError:
            pass  # it just died: the death is handled with the job, as for any death mid-job

    def interrupt(self) -> None:
        """Ask the running job to stop at its next progress report and go back to the queue."""
        if self.alive:
            os.kill(self.pid, signal.SIGUSR1)

    def kill(self) -> None:
        if self.alive:
            self.process.kill()
        self.process.join()

    def stop(self) -> None:
        """End an idle worker: ask, then insist."""
        if self.alive:
            try:
                self.conn.send(("stop",))
            except OSError:
                pass
            self.process.join(WORKER_EXIT_GRACE)
        if self.process is not None:
            self.kill()
        if self.conn is not None:
            self.conn.close()


# ---------------------------------------------------------------------------------------------------------------
# The daemon.


class Supervisor:
    def __init__(self, config: Config, db: Database, verbose: bool = False):
        self.config, self.db = config, db
        self.wakeup = Wakeup()
        self.worker = WorkerProcess(config, verbose)
        self.intake = Intake(config, db, on_hint=self.wakeup.set)
        self.last_scan = -math.inf
        self.stop_signal: int | None = None
        self.exit_code: int | None = None
        self.next_scan = 0.0
        self.next_running_check = 0.0
        self.next_watchdog = 0.0
        self.watchdog_interval = notify.watchdog_interval()
        self.startup_deaths = 0
        self.status_text = ""
        self.sent_status: str | None = None

    # -- life cycle --------------------------------------------------------------------------------------

    def run(self) -> int:
        self._install_signal_handlers()
        try:
            self.worker.start()
            self.intake.start()
            self._guarded(self._scan)
            notify.ready()
            log.info("svfrd is running: watching %s", ", ".join(str(i.path) for i in self.config.inboxes))
            while self.stop_signal is None and self.exit_code is None:
                self._guarded(self._step)
            return self._shutdown()
        finally:
            signal.set_wakeup_fd(-1)  # before closing: the fd number may be reused by anything
            self.wakeup.close()

    def _install_signal_handlers(self) -> None:
        signal.set_wakeup_fd(self.wakeup.write_fd, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop_signal)

    def _on_stop_signal(self, signum: int, _frame: Any) -> None:
        if self.stop_signal is not None:
            # A second Ctrl-C / SIGTERM: the user does not want to wait for the running job.
            self.worker.interrupt()
        self.stop_signal = signum

    # -- one pass of the main loop -----------------------------------------------------------------------

    def _guarded(self, step: Callable[[], None]) -> None:
        """A failing step (database locked for too long, an unreadable inbox) is logged, and the service
        carries on: the worker and its loaded models are worth more than a restart."""
        try:
            step()
        except Exception:  # noqa: BLE001
            log.exception("the main loop hit an error; carrying on in %.0f s", LOOP_ERROR_PAUSE)
            self._wait(LOOP_ERROR_PAUSE)

    def _step(self) -> None:
        now = time.monotonic()
        if now >= self.next_scan or (self.intake.has_hints() and now >= self.last_scan + HINT_SCAN_SPACING):
            self._scan()
        self._handle_worker()
        if self.exit_code is not None or self.stop_signal is not None:
            return
        if self.worker.idle:
            self._start_next_job()
        if self.worker.job is not None and time.monotonic() >= self.next_running_check:
            self._check_running_job()
        self._keep_manager_informed()
        self._wait(self._seconds_to_sleep())

    def _scan(self) -> None:
        self.last_scan = time.monotonic()
        wait = self.intake.scan()
        # A file waiting out its quiet period is looked at again as soon as it may be ready.
        due = self.config.service.scan_interval if wait is None else min(self.config.service.scan_interval, wait)
        self.next_scan = time.monotonic() + due

    def _start_next_job(self) -> None:
        job = claim_next_job(self.db, self.worker.pid)
        if job is None:
            return
        job_logger(job.id).info("started: %s", job.source_path)
        self.worker.run(job)
        self.next_running_check = time.monotonic() + RUNNING_CHECK_INTERVAL

    def _seconds_to_sleep(self) -> float:
        now = time.monotonic()
        deadlines = [self.next_scan]
        if self.intake.has_hints():
            deadlines.append(self.last_scan + HINT_SCAN_SPACING)
        if self.worker.job is not None:
            deadlines.append(self.next_running_check)
        elif self.worker.idle:
            due = seconds_until_next_job(self.db)
            if due is not None:
                deadlines.append(now + due)
        if self.watchdog_interval:
            deadlines.append(self.next_watchdog)
        return max(0.0, min(deadlines) - now)

    def _wait(self, timeout: float) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.wakeup, selectors.EVENT_READ)
            for item in self.worker.wait_objects():
                selector.register(item, selectors.EVENT_READ)
            selector.select(timeout)
        self.wakeup.drain()

    # -- the worker --------------------------------------------------------------------------------------

    def _handle_worker(self) -> None:
        for message in self.worker.receive():
            self._on_worker_message(message)
        if self.exit_code is None and self.worker.process is not None and not self.worker.alive:
            self._on_worker_death()

    def _on_worker_message(self, message: tuple) -> None:
        kind = message[0]
        if kind == "ready":
            self.worker.ready, self.worker.engine_name = True, message[1]
            self.startup_deaths = 0
        elif kind == "start_failed":
            _, text, error_kind = message
            log.error("%s", text)
            self.exit_code = EXIT_CONFIG if error_kind == "config" else EXIT_FAILURE
        elif kind == "finished":
            _, job_id, outcome = message
            job_logger(job_id).debug("the worker reports the job %s", outcome)
            self.worker.job = None

    def _on_worker_death(self) -> None:
        how = describe_exit(self.worker.process.exitcode)
        job = self.worker.job
        self.worker.kill()  # reap it
        if job is not None:
            self._settle_orphaned_job(job, f"the worker process died ({how}) while restoring {job.source_name}; "
                                           "it was restarted and the job will be retried")
        elif not self.worker.ready:
            self.startup_deaths += 1
            log.error("the worker process died while starting (%s)", how)
            if self.startup_deaths >= MAX_STARTUP_DEATHS:
                log.error("the worker died %d times while starting; giving up (see the errors above)",
                          self.startup_deaths)
                self.exit_code = EXIT_FAILURE
                return
        else:
            log.warning("the idle worker process died (%s); restarting it", how)
        if self.stop_signal is None:
            self.worker.start()

    def _unfinished_orphan(self, job: Job) -> Job | None:
        """The row of a job whose worker ended without recording its outcome, once its output is dealt with:
        results that were complete are published (the job is done: None), anything partial is removed.
        None too when the worker did record the outcome."""
        current = get_job(self.db, job.id)
        if current is None or current.state != JobState.RUNNING.value:
            return None
        if results.complete_publication(self.config, self.db, current):
            return None
        results.remove_temp_files(self.config, current)
        return current

    def _settle_orphaned_job(self, job: Job, death_message: str) -> None:
        """A job whose worker is gone: finish its publication if its results were complete, record a
        cancel if one was asked for, else count a transient failure (retried with backoff)."""
        current = self._unfinished_orphan(job)
        if current is None:
            return
        logger = job_logger(job.id)
        if current.cancel_requested:
            fail_job(self.db, job.id, JobCancelled("cancelled by the user; the worker was stopped to end it"),
                     retry_backoff=self.config.service.retry_backoff)
            logger.info("cancelled")
            return
        logger.error("%s", death_message)
        results.settle_failure(self.config, self.db, job.id, TransientError(death_message))

    def _check_running_job(self) -> None:
        """Read the running job's row: honour a cancel the worker did not act on, and update the status line."""
        self.next_running_check = time.monotonic() + RUNNING_CHECK_INTERVAL
        job = get_job(self.db, self.worker.job.id)
        if job is None:
            return
        self.status_text = running_status(job)
        if not job.cancel_requested:
            return
        now = time.monotonic()
        if self.worker.cancel_seen_at is None:
            self.worker.cancel_seen_at = now
        elif now - self.worker.cancel_seen_at > CANCEL_GRACE:
            job_logger(job.id).warning("the worker did not stop for the cancel within %.0f s; killing it",
                                       CANCEL_GRACE)
            self.worker.process.kill()

    def _keep_manager_informed(self) -> None:
        if self.worker.job is None:
            self.status_text = "idle, waiting for videos" if self.worker.ready else "loading the engine"
        if self.status_text != self.sent_status:
            notify.status(self.status_text)
            self.sent_status = self.status_text
        if self.watchdog_interval and time.monotonic() >= self.next_watchdog:
            notify.watchdog()
            self.next_watchdog = time.monotonic() + self.watchdog_interval

    # -- stopping ----------------------------------------------------------------------------------------

    def _shutdown(self) -> int:
        reason = signal.Signals(self.stop_signal).name if self.stop_signal else "a fatal error"
        log.info("stopping (%s)", reason)
        notify.stopping()
        self.intake.stop()
        if self.worker.job is not None and self.worker.alive:
            self._wind_down_running_job()
        job = self.worker.job
        if job is not None:
            self._requeue_after_stop(job)
        self.worker.stop()
        log.info("stopped")
        return self.exit_code if self.exit_code is not None else EXIT_OK

    def _wind_down_running_job(self) -> None:
        """Finish the running job (on_stop = "finish") or interrupt it, within stop_timeout; then kill."""
        timeout = self.config.service.stop_timeout
        deadline = time.monotonic() + timeout
        finishing = self.config.service.on_stop == "finish" and self.exit_code is None
        if finishing:
            job_logger(self.worker.job.id).info("finishing the running job before stopping (at most %.0f s)",
                                                timeout)
        else:
            self.worker.interrupt()
        while self.worker.job is not None and self.worker.alive and time.monotonic() < deadline:
            notify.extend_timeout(deadline - time.monotonic() + 10)
            self._wait(min(5.0, deadline - time.monotonic()))
            for message in self.worker.receive():
                self._on_worker_message(message)
        if self.worker.job is not None and self.worker.alive:
            job_logger(self.worker.job.id).warning("the worker did not stop within %.0f s; killing it", timeout)
            self.worker.kill()

    def _requeue_after_stop(self, job: Job) -> None:
        """The worker ended without recording the job (killed): put it back, keeping no partial output."""
        if self._unfinished_orphan(job) is None:
            return
        release_job(self.db, job.id)
        job_logger(job.id).info("back in the queue; it will run when the service starts again")


def running_status(job: Job) -> str:
    """The STATUS line `systemctl status` shows, e.g. "job 3: restoring interview.mp4 — pass 2, 42%"."""
    progress = "" if job.percent_done is None else f", {job.percent_done}%"
    return f"job {job.id}: restoring {job.source_name} — {job.stage or 'starting'}{progress}"


# ---------------------------------------------------------------------------------------------------------------
# Start-up.


def prepare_folders(config: Config) -> None:
    for folder in [i.path for i in config.inboxes] + [
        config.output.outbox, config.output.done, config.output.failed, config.service.state_dir,
    ]:
        folder.mkdir(parents=True, exist_ok=True)


def finish_interrupted_publications(config: Config, db: Database) -> None:
    """Jobs whose results were complete and named when the last daemon died (or whose publication failed
    and waits for a retry) are finished now, before the outbox's stale temporary files are cleared
    (svfrd.service.results explains the order)."""
    for job in jobs_with_planned_results(db):
        if results.complete_publication(config, db, job):
            job_logger(job.id).info("finished publishing the results of the interrupted run")


def run_daemon(config: Config, verbose: bool = False) -> int:
    """`svfrd run`: the service in the foreground until SIGTERM/SIGINT. Returns the exit code."""
    try:
        lock = acquire_state_lock(config.service.state_dir)
    except StateLockedError as err:
        log.error("%s", err)
        return EXIT_LOCKED
    with lock:
        try:
            prepare_folders(config)
            upgrade_database(config.service.database_url)
        except (OSError, ImportError, SQLAlchemyError) as err:  # ImportError: no driver for the URL
            log.error("cannot prepare the folders and the job database: %s; `svfrd doctor` checks them", err)
            return EXIT_FAILURE
        db = open_database(config.service.database_url)
        try:
            finish_interrupted_publications(config, db)
            requeued = requeue_interrupted(db)
            if requeued:
                log.info("%d job(s) left running by the last daemon are back in the queue", requeued)
            placement.clean_stale_temp_files(config.output.outbox)
            return Supervisor(config, db, verbose).run()
        finally:
            db.dispose()
