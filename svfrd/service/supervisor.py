"""The daemon: takes the state lock, keeps the queue fed from the inboxes, and runs jobs one at a time in a
supervised worker process (`svfrd.service.worker`).

The main loop sleeps in one `select` on: a self-pipe (woken by signals and by inbox file events), the worker's
pipe and the worker's process sentinel, with a timeout set to the next thing due (`svfrd.service.timers`:
inbox rescan, backed-off job, watchdog keep-alive, or the check of a running job). Idle, it wakes once per scan
interval: no busy polling. A job still running past its time limit ([limits] job_timeout_per_frame and
job_timeout_min, known once the worker has probed its video) is stopped by killing the worker, and fails. What
happens after a death (of the worker, or of the last daemon) is in `svfrd.service.recovery`.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import selectors
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Callable

from sqlalchemy import Engine as Database
from sqlalchemy.exc import SQLAlchemyError

from svfrd.config import Config, LimitsConfig
from svfrd.files.placement import FOLDER_MODE
from svfrd.jobs.database import open_database, upgrade_database
from svfrd.jobs.model import Job, JobState
from svfrd.jobs.store import claim_next_job, get_job, seconds_until_next_job
from svfrd.ops import notify
from svfrd.ops.logs import job_logger
from svfrd.ops.notifications import Notifier
from svfrd.ops.printable import printable
from svfrd.service import recovery
from svfrd.service.clock import SYSTEM_CLOCK, Clock
from svfrd.service.gate import Gate, GateState
from svfrd.service.intake import Intake
from svfrd.service.lock import StateLockedError, acquire_state_lock
from svfrd.service.loop_errors import RepeatedErrors
from svfrd.service.messages import (
    FromWorker,
    JobDeadline,
    JobFinished,
    Outcome,
    RunJob,
    Stop,
    WorkerReady,
    WorkerStartFailed,
)
from svfrd.service.pause import read_pause
from svfrd.service.timers import LoopTimers
from svfrd.service.worker import service_config_problem, worker_main
from svfrd.web.child import WebPage

log = logging.getLogger(__name__)

#: Pause after an unexpected error in the main loop, so a persistent one does not spin.
LOOP_ERROR_PAUSE = 5.0
#: How long an idle worker gets to exit after Stop.
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

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe()
        self.process = context.Process(
            target=worker_main, args=(self.config, child_end, os.getpid(), self.verbose), name="svfrd-worker"
        )
        self.process.start()
        child_end.close()  # so that our end sees EOF when the worker dies
        self.conn, self.ready, self.job = parent_end, False, None
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

    def receive(self) -> list[FromWorker]:
        """Messages waiting on the pipe (none once the worker is gone)."""
        if self.process is None:  # let go while paused (Supervisor._let_worker_go_while_closed)
            return []
        received = []
        try:
            while self.conn.poll():
                received.append(self.conn.recv())
        except (EOFError, OSError):
            pass
        return received

    def run(self, job: Job) -> None:
        self.job = job
        try:
            self.conn.send(RunJob(job.id))
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
                self.conn.send(Stop())
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
    def __init__(self, config: Config, db: Database, verbose: bool = False, clock: Clock = SYSTEM_CLOCK,
                 web: WebPage | None = None):
        self.config, self.db, self.clock = config, db, clock
        self.web = web  # the page's child process with [web] enabled, restarted here when it dies
        self.wakeup = Wakeup()
        self.worker = WorkerProcess(config, verbose)
        self.intake = Intake(config, db, on_hint=self.wakeup.set, clock=self.clock.monotonic)
        self.timers = LoopTimers(scan_interval=config.service.scan_interval, cancel_grace=config.service.cancel_grace,
                                 watchdog_interval=notify.watchdog_interval(), clock=clock)
        self.stop_signal: int | None = None
        self.exit_code: int | None = None
        self.startup_deaths = 0
        self.loop_errors = RepeatedErrors(log)
        self.paused_until = -math.inf
        self.status_text = ""
        self.sent_status: str | None = None
        #: The running job's frame count, once the worker has probed its video (for the timeout message).
        self.job_frames: int | None = None
        # Pause, schedule and run-now (svfrd.service.gate): read on every pass, so a change acts within seconds.
        self.gate = Gate(config.schedule, lambda: read_pause(self.db), clock)
        self.gate_state: GateState = self.gate.check()
        self.interrupted_job: int | None = None  # the job asked to stop by the gate, asked once
        self.closed_announced = False
        self.notifier = Notifier(config.notify)  # [notify]: sent from a thread of its own, never waited for

    # -- life cycle --------------------------------------------------------------------------------------

    def run(self) -> int:
        self._install_signal_handlers()
        try:
            self._let_worker_go_while_closed()  # starts it unless paused or outside the schedule
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
        # `svfrd pause`/`resume` send SIGUSR1 after a change: a handler, so that the wakeup fd wakes the loop.
        signal.signal(signal.SIGUSR1, lambda _signum, _frame: None)

    def _on_stop_signal(self, signum: int, _frame: Any) -> None:
        if self.stop_signal is not None:
            # A second Ctrl-C / SIGTERM: the user does not want to wait for the running job.
            self.worker.interrupt()
        self.stop_signal = signum

    # -- one pass of the main loop -----------------------------------------------------------------------

    def _guarded(self, step: Callable[[], None]) -> None:
        """A failing step (database locked for too long, an unreadable inbox) is logged, and the service
        carries on: the worker and its loaded models are worth more than a restart. The loop then pauses
        for LOOP_ERROR_PAUSE on the clock, whatever its wait objects say (a dead worker's pipe and sentinel
        are always ready, and made an error repeat 40,000 times in four minutes)."""
        try:
            step()
        except Exception as err:  # noqa: BLE001
            self.loop_errors.failed(err, LOOP_ERROR_PAUSE)
            self.paused_until = self.clock.monotonic() + LOOP_ERROR_PAUSE
            self._pause()
        else:
            self.loop_errors.succeeded()

    def _pause(self) -> bool:
        """While an error pause lasts, wait for it (a signal cuts it short) and say True."""
        left = self.paused_until - self.clock.monotonic()
        if left <= 0:
            return False
        self._wait(left, watch_worker=False)
        return True

    def _step(self) -> None:
        if self._pause():
            return
        if self.timers.scan_due(self.intake.has_hints()):
            self._scan()
        self._handle_worker()
        if self.exit_code is not None or self.stop_signal is not None:
            return
        if self.web is not None:
            self.web.check()
        self.gate_state = self.gate.check()
        self._let_worker_go_while_closed()
        if self.worker.idle:
            self._start_next_job()
        if self.worker.job is not None and self.timers.running_check_due():
            self._check_running_job()
        self._keep_manager_informed()
        self._wait(self._seconds_to_sleep(), watch_web=True)

    def _scan(self) -> None:
        self.timers.scan_started()
        self.timers.scan_finished(self.intake.scan())

    def _start_next_job(self) -> None:
        job = claim_next_job(self.db, self.worker.pid, now=self.clock.now(), run_now_only=not self.gate_state.open)
        if job is None:
            return
        job_logger(job.id).info("started: %s", job.source_path)
        self.interrupted_job = None
        self.worker.run(job)
        self.timers.job_started()
        # Until its video is probed, a job gets the least any job gets.
        self.timers.set_job_timeout(self.config.limits.job_timeout_min)
        self.job_frames = None

    def _seconds_to_sleep(self) -> float:
        next_job_in = seconds_until_next_job(self.db, now=self.clock.now(), run_now_only=not self.gate_state.open
                                             ) if self.worker.idle else None
        restart_in = self.web.seconds_until_restart() if self.web is not None else None
        sleep = self.timers.seconds_to_sleep(hinted=self.intake.has_hints(), job_running=self.worker.job is not None,
                                             next_job_in=next_job_in, restart_in=restart_in)
        # A timer for the next schedule change, not polling (svfrd.service.gate).
        change_in = self.gate_state.seconds_until_change(self.clock.now())
        return sleep if change_in is None else min(sleep, change_in)

    def _let_worker_go_while_closed(self) -> None:
        """Paused or outside the schedule, an idle worker exits so that the GPU is free, and a fresh one starts
        when jobs may run again or a run-now job waits (docs/architecture.md, "Pause, schedule, priority,
        notifications")."""
        closed = not self.gate_state.open and seconds_until_next_job(self.db, now=self.clock.now(),
                                                                      run_now_only=True) != 0.0
        if closed != self.closed_announced:
            log.info("%s", f"{self.gate_state.describe()}: no job starts" if closed else "jobs may start again"
                     if self.gate_state.open else f"{self.gate_state.describe()}, but a run-now job starts")
            self.closed_announced = closed
        if closed and self.worker.idle:
            log.info("%s: the worker exits so that the GPU is free", self.gate_state.describe())
            self.worker.stop()
            self.worker.process = None
        elif not closed and self.worker.process is None and self.stop_signal is None:
            self.worker.start()

    def _wait(self, timeout: float, watch_worker: bool = True, watch_web: bool = False) -> None:
        """Sleep until `timeout`, a wake-up (signal, file event) or, with `watch_worker`, news from the worker;
        with `watch_web`, the web page's death."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.wakeup, selectors.EVENT_READ)
            for item in self.worker.wait_objects() if watch_worker else []:
                selector.register(item, selectors.EVENT_READ)
            # Only where check() runs next: a dead page's descriptor stays readable until then.
            for fd in self.web.wait_objects() if self.web is not None and watch_web else []:
                selector.register(fd, selectors.EVENT_READ)
            selector.select(timeout)
        self.wakeup.drain()

    # -- the worker --------------------------------------------------------------------------------------

    def _handle_worker(self) -> None:
        for message in self.worker.receive():
            self._on_worker_message(message)
        if self.exit_code is None and self.worker.process is not None and not self.worker.alive:
            self._on_worker_death()

    def _on_worker_message(self, message: FromWorker) -> None:
        match message:
            case WorkerReady(engine_name=name):
                self.worker.ready, self.worker.engine_name = True, name
                self.startup_deaths = 0
            case WorkerStartFailed(message=text, config_problem=config_problem):
                log.error("%s", text)
                self.exit_code = EXIT_CONFIG if config_problem else EXIT_FAILURE
            case JobFinished(job_id=job_id, outcome=Outcome.CONFIG_ERROR, message=text):
                # Not the input's fault: the job went back to the queue, and the service stops until fixed.
                log.error("svfrd stops: %s. Job %d is back in the queue and runs once this is fixed", text, job_id)
                self.worker.job = None
                self.exit_code = EXIT_CONFIG
            case JobDeadline(job_id=job_id, frames=frames, seconds=seconds):
                if self.worker.job is not None and self.worker.job.id == job_id:
                    self.timers.set_job_timeout(seconds)
                    self.job_frames = frames
                    job_logger(job_id).debug("%d frames: stopped if still running after %.0f s", frames, seconds)
            case JobFinished(job_id=job_id, outcome=outcome):
                job_logger(job_id).debug("the worker reports the job %s", outcome.value)
                self.worker.job = None
                self._notify_if_ended(job_id)
            case _:
                log.warning("ignored an unknown message from the worker: %r", message)

    def _on_worker_death(self, overdue_message: str | None = None) -> None:
        """Reap the dead worker, settle its job (`overdue_message`: it was killed for running past its time
        limit, and why) and start a fresh one: the one way a worker is restarted."""
        how = describe_exit(self.worker.process.exitcode)
        job = self.worker.job
        self.worker.kill()  # reap it
        if job is not None:
            self._settle_job_of_dead_worker(job, how, overdue_message)
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

    def _settle_job_of_dead_worker(self, job: Job, how: str, overdue_message: str | None) -> None:
        """Record what became of the dead worker's job. Should that fail, the worker is restarted all the
        same (else the loop would meet the same dead worker again and again); the job stays running in the
        database until the next start of the daemon puts it back in the queue."""
        try:
            if overdue_message is not None:
                recovery.settle_timed_out_job(self.config, self.db, job, overdue_message)
            else:
                recovery.settle_orphaned_job(
                    self.config, self.db, job,
                    f"the worker process died ({how}) while restoring {job.source_name}; "
                    "it was restarted and the job will be retried")
            self._notify_if_ended(job.id)
        except Exception:  # noqa: BLE001
            job_logger(job.id).error("could not record the end of this job after its worker ended (%s); it "
                                     "stays running until svfrd restarts", how, exc_info=True)

    def _notify_if_ended(self, job_id: int) -> None:
        """[notify] for a job that ended (done, failed, cancelled); not for one back in the queue."""
        job = get_job(self.db, job_id)
        if job is not None and JobState(job.state).finished:
            self.notifier.job_ended(job)

    def _check_running_job(self) -> None:
        """Read the running job's row: honour a cancel the worker did not act on, and update the status line."""
        self.timers.running_checked()
        if self.timers.job_overdue():
            self._stop_overdue_job()
            return
        job = get_job(self.db, self.worker.job.id)
        if job is None:
            return
        self.status_text = running_status(job)
        if self.gate_state.must_stop(job) and self.interrupted_job != job.id:
            self.interrupted_job = job.id
            job_logger(job.id).info("stopping: %s; the job goes back to the queue", self.gate_state.why_stopped())
            self.worker.interrupt()
        if job.cancel_requested and self.timers.cancel_overdue():
            job_logger(job.id).warning("the worker did not stop for the cancel within %g s ([service] "
                                       "cancel_grace); killing it", self.timers.cancel_grace)
            self.worker.process.kill()

    def _stop_overdue_job(self) -> None:
        """Past its time limit the job is stopped the only way a stuck engine cannot ignore: its worker is
        killed, and then handled as any dead worker (a fresh one is started). The job fails without a retry:
        it would hold the queue as long again."""
        message = timeout_message(self.worker.job, self.config.limits, self.job_frames, self.timers.job_timeout,
                                  self.timers.job_running_for())
        self.worker.kill()
        self._on_worker_death(overdue_message=message)

    def _keep_manager_informed(self) -> None:
        if self.worker.job is None and self.worker.process is None:
            self.status_text = self.gate_state.describe()
        elif self.worker.job is None:
            self.status_text = "idle, waiting for videos" if self.worker.ready else "loading the engine"
        if self.status_text != self.sent_status:
            notify.status(self.status_text)
            self.sent_status = self.status_text
        if self.timers.watchdog_due():
            notify.watchdog()
            self.timers.watchdog_sent()

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
            recovery.requeue_after_stop(self.config, self.db, job)
        self.worker.stop()
        self.notifier.close()
        log.info("stopped")
        return self.exit_code if self.exit_code is not None else EXIT_OK

    def _wind_down_running_job(self) -> None:
        """Finish the running job (on_stop = "finish") or interrupt it, within stop_timeout; then kill."""
        timeout = self.config.service.stop_timeout
        deadline = self.clock.monotonic() + timeout
        finishing = self.config.service.on_stop == "finish" and self.exit_code is None
        if finishing:
            job_logger(self.worker.job.id).info("finishing the running job before stopping (at most %.0f s)",
                                                timeout)
        else:
            self.worker.interrupt()
        while self.worker.job is not None and self.worker.alive and self.clock.monotonic() < deadline:
            notify.extend_timeout(deadline - self.clock.monotonic() + 10)
            self._wait(min(5.0, deadline - self.clock.monotonic()))
            for message in self.worker.receive():
                self._on_worker_message(message)
        if self.worker.job is not None and self.worker.alive:
            job_logger(self.worker.job.id).warning("the worker did not stop within %.0f s; killing it", timeout)
            self.worker.kill()


def timeout_message(job: Job, limits: LimitsConfig, frames: int | None, timeout: float, ran_for: float) -> str:
    """Why a running job was stopped, and what to do about it."""
    if frames is None:
        limit = f"[limits] job_timeout_min = {limits.job_timeout_min:g} s, as its video was not probed yet"
    else:
        limit = (f"[limits] job_timeout_per_frame = {limits.job_timeout_per_frame:g} s x {frames} frames, and at "
                 f"least [limits] job_timeout_min = {limits.job_timeout_min:g} s")
    return (f"stopped after {ran_for:.0f} s: {job.source_name} took longer than its time limit of {timeout:.0f} s "
            f"({limit}). The engine may be stuck (a hung GPU) or far slower than expected (many steps, SVFR on a "
            "CPU). It is not retried by itself, as it would hold the queue as long again: if the machine needs "
            f"more time, raise those keys in the service's config.toml and run `svfrd retry {job.id}`")


def running_status(job: Job) -> str:
    """The STATUS line `systemctl status` shows, e.g. "job 3: restoring interview.mp4 — pass 2, 42%"."""
    progress = "" if job.percent_done is None else f", {job.percent_done}%"
    return f"job {job.id}: restoring {printable(job.source_name)} — {job.stage or 'starting'}{progress}"


# ---------------------------------------------------------------------------------------------------------------
# Start-up.


def prepare_folders(config: Config) -> None:
    """Create the folders that are missing, for the service and its group only (README, "Permissions"); the
    modes of existing folders are the administrator's (a shared inbox is setgid and group-writable)."""
    for folder in [i.path for i in config.inboxes] + [
        config.output.outbox, config.output.done, config.output.failed, config.service.state_dir,
    ]:
        folder.mkdir(FOLDER_MODE, parents=True, exist_ok=True)


def run_daemon(config: Config, verbose: bool = False) -> int:
    """`svfrd run`: the service in the foreground until SIGTERM/SIGINT. Returns the exit code."""
    # A misconfigured service is not the inputs' fault: refuse to start before taking any (exit code 2).
    problem = service_config_problem(config)
    if problem is not None:
        log.error("svfrd cannot start: %s. Nothing in the inboxes was touched", problem)
        return EXIT_CONFIG
    # Until the loop's handler is installed, `svfrd pause` (SIGUSR1 to the lock's holder) must not end the daemon.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
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
        web = WebPage(config, verbose) if config.web.enabled else None
        try:
            recovery.recover_at_startup(config, db)
            if web is not None:
                web.start()  # after the upgrade: the page needs the schema
            return Supervisor(config, db, verbose, web=web).run()
        finally:
            if web is not None:
                web.stop()
            db.dispose()
