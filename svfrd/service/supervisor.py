"""The daemon: takes the state lock, keeps the queue fed from the inboxes, and runs jobs in supervised worker
processes (`svfrd.service.workers`), one per entry of `[engine] devices`, each taking the next job when idle.

The main loop sleeps in one `select` on: a self-pipe (woken by signals and by inbox file events), each worker's
pipe and process sentinel, with a timeout set to the next thing due (`svfrd.service.timers`: inbox rescan,
backed-off job, watchdog keep-alive, a running job's check, the lease heartbeat). Idle, it wakes once per scan
interval and heartbeat: no busy polling. A job still running past its time limit ([limits]
job_timeout_per_frame and job_timeout_min, known once the worker has probed its video) is stopped by killing its
worker, and fails. The supervisor renews the leases of its running jobs, and puts back in the queue the jobs of
any host whose leases expired (docs/architecture.md, "Workers, claims and leases"). What happens after a death
(of a worker, or of the last daemon) is in `svfrd.service.recovery`.
"""

from __future__ import annotations

import logging
import math
import os
import selectors
import signal
from typing import Any, Callable

from sqlalchemy import Engine as Database
from sqlalchemy.exc import SQLAlchemyError

from svfrd.config import Config, LimitsConfig
from svfrd.files.placement import FOLDER_MODE
from svfrd.jobs.database import open_database, upgrade_database
from svfrd.jobs.model import Job, JobState
from svfrd.jobs.store import claim_is_held, claim_next_job, get_job, renew_lease, seconds_until_next_job
from svfrd.ops import notify
from svfrd.ops.logs import job_logger
from svfrd.ops.notifications import Notifier
from svfrd.ops.printable import printable
from svfrd.service import recovery, results
from svfrd.service.clock import SYSTEM_CLOCK, Clock
from svfrd.service.gate import Gate, GateState
from svfrd.service.intake import Intake
from svfrd.service.lock import StateLockedError, acquire_state_lock
from svfrd.service.loop_errors import RepeatedErrors
from svfrd.service.messages import FromWorker, JobDeadline, JobFinished, Outcome, WorkerReady, WorkerStartFailed
from svfrd.service.pause import read_pause
from svfrd.service.timers import LoopTimers, Periodic
from svfrd.service.worker import service_config_problem
from svfrd.service.workers import WorkerProcess, describe_exit, worker_pool
from svfrd.web.child import WebPage

log = logging.getLogger(__name__)

#: Pause after an unexpected error in the main loop, so a persistent one does not spin.
LOOP_ERROR_PAUSE = 5.0
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
# The daemon.


class Supervisor:
    def __init__(self, config: Config, db: Database, verbose: bool = False, clock: Clock = SYSTEM_CLOCK,
                 web: WebPage | None = None):
        self.config, self.db, self.clock = config, db, clock
        self.web = web  # the page's child process with [web] enabled, restarted here when it dies
        self.wakeup = Wakeup()
        self.workers: list[WorkerProcess] = worker_pool(config, verbose, clock)
        self.host = recovery.this_daemon(config)
        self.intake = Intake(config, db, on_hint=self.wakeup.set, clock=self.clock.monotonic)
        self.timers = LoopTimers(scan_interval=config.service.scan_interval, cancel_grace=config.service.cancel_grace,
                                 watchdog_interval=notify.watchdog_interval(), clock=clock)
        # Renewing this daemon's leases, and looking for expired ones of any host, both every heartbeat.
        self.heartbeat = Periodic(config.service.heartbeat, clock)
        self.lease_check = Periodic(config.service.heartbeat, clock)
        self.stop_signal: int | None = None
        self.exit_code: int | None = None
        self.loop_errors = RepeatedErrors(log)
        self.paused_until = -math.inf
        self.status_text = ""
        self.sent_status: str | None = None
        # Pause, schedule and run-now (svfrd.service.gate): read on every pass, so a change acts within seconds.
        self.gate = Gate(config.schedule, lambda: read_pause(self.db), clock)
        self.gate_state: GateState = self.gate.check()
        self.closed_announced = False
        self.notifier = Notifier(config.notify)  # [notify]: sent from a thread of its own, never waited for

    @property
    def worker(self) -> WorkerProcess:
        """The first worker (the only one with the default `[engine] devices`)."""
        return self.workers[0]

    @worker.setter
    def worker(self, worker: WorkerProcess) -> None:
        self.workers[0] = worker

    def busy_workers(self) -> list[WorkerProcess]:
        return [worker for worker in self.workers if worker.job is not None]

    # -- life cycle --------------------------------------------------------------------------------------

    def run(self) -> int:
        self._install_signal_handlers()
        try:
            self._let_workers_go_while_closed()  # starts them unless paused or outside the schedule
            self.intake.start()
            self._guarded(self._scan)
            notify.ready()
            log.info("svfrd is running with %d worker(s) on %s: watching %s", len(self.workers),
                     ", ".join(worker.device for worker in self.workers),
                     ", ".join(str(i.path) for i in self.config.inboxes))
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
            # A second Ctrl-C / SIGTERM: the user does not want to wait for the running jobs.
            for worker in self.workers:
                worker.interrupt()
        self.stop_signal = signum

    # -- one pass of the main loop -----------------------------------------------------------------------

    def _guarded(self, step: Callable[[], None]) -> None:
        """A failing step (database locked for too long, an unreadable inbox) is logged, and the service
        carries on: the workers and their loaded models are worth more than a restart. The loop then pauses
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
        if self.heartbeat.due():
            self._renew_leases()
        if self.lease_check.due():
            self._requeue_expired_leases()
        self.gate_state = self.gate.check()
        self._let_workers_go_while_closed()
        for worker in self.workers:
            if worker.idle:
                self._start_next_job(worker)
        for worker in self.busy_workers():
            if worker.timers.running_check_due():
                self._check_running_job(worker)
        self._keep_manager_informed()
        self._wait(self._seconds_to_sleep(), watch_web=True)

    def _scan(self) -> None:
        self.timers.scan_started()
        self.timers.scan_finished(self.intake.scan())

    def _start_next_job(self, worker: WorkerProcess | None = None) -> None:
        worker = worker or self.worker
        job = claim_next_job(self.db, worker.pid, now=self.clock.now(), host=self.host, device=worker.device,
                             lease_seconds=self.config.service.lease, run_now_only=not self.gate_state.open)
        if job is None:
            return
        worker.interrupted_job = None
        job_logger(job.id).info("started on %s: %s", worker.device, job.source_path)
        worker.run(job)

    def _seconds_to_sleep(self) -> float:
        idle = any(worker.idle for worker in self.workers)
        next_job_in = seconds_until_next_job(self.db, now=self.clock.now(), run_now_only=not self.gate_state.open
                                             ) if idle else None
        restart_in = self.web.seconds_until_restart() if self.web is not None else None
        sleep = self.timers.seconds_to_sleep(hinted=self.intake.has_hints(), job_running=False,
                                             next_job_in=next_job_in, restart_in=restart_in)
        now = self.clock.monotonic()
        checks = [max(0.0, worker.timers.next_running_check - now) for worker in self.busy_workers()]
        # A timer for the next schedule change, not polling (svfrd.service.gate).
        change_in = self.gate_state.seconds_until_change(self.clock.now())
        changes = [] if change_in is None else [change_in]
        return min([sleep, self.heartbeat.seconds_until_due(), self.lease_check.seconds_until_due(), *checks,
                    *changes])

    def _closed(self) -> bool:
        """Paused or outside the schedule, with no run-now job due: no job may start."""
        return not self.gate_state.open and seconds_until_next_job(self.db, now=self.clock.now(),
                                                                   run_now_only=True) != 0.0

    def _let_workers_go_while_closed(self) -> None:
        """While closed, idle workers exit so that the GPUs are free, and fresh ones start when jobs may run
        again or a run-now job waits (docs/architecture.md, "Pause, schedule, priority, notifications")."""
        closed = self._closed()
        if closed != self.closed_announced:
            log.info("%s", f"{self.gate_state.describe()}: no job starts" if closed else "jobs may start again"
                     if self.gate_state.open else f"{self.gate_state.describe()}, but a run-now job starts")
            self.closed_announced = closed
        for worker in self.workers:
            if closed and worker.idle:
                log.info("%s: the worker exits so that the GPU is free (%s)", self.gate_state.describe(), worker.name)
                worker.let_go()
            elif not closed and worker.process is None and self.stop_signal is None:
                worker.start()

    def _wait(self, timeout: float, watch_worker: bool = True, watch_web: bool = False) -> None:
        """Sleep until `timeout`, a wake-up (signal, file event) or, with `watch_worker`, news from a worker;
        with `watch_web`, the web page's death."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.wakeup, selectors.EVENT_READ)
            for item in [item for worker in self.workers for item in worker.wait_objects()] if watch_worker else []:
                selector.register(item, selectors.EVENT_READ)
            # Only where check() runs next: a dead page's descriptor stays readable until then.
            for fd in self.web.wait_objects() if self.web is not None and watch_web else []:
                selector.register(fd, selectors.EVENT_READ)
            selector.select(timeout)
        self.wakeup.drain()

    # -- leases ------------------------------------------------------------------------------------------

    def _renew_leases(self) -> None:
        """The heartbeat comes from here, not from the busy worker: a long GPU kernel cannot starve it. A lease
        found lost (this daemon could not reach the database for longer than the lease) means the job may
        run elsewhere now: its worker is stopped, and fencing keeps it from publishing anything meanwhile."""
        self.heartbeat.done()
        for worker in self.busy_workers():
            if renew_lease(self.db, worker.job.id, worker.claim_token, self.config.service.lease,
                           now=self.clock.now()):
                continue
            job_logger(worker.job.id).warning(
                "this daemon lost the job's lease (not renewed within [service] lease = %g s); the job went back "
                "to the queue, so %s is stopped and its results are discarded", self.config.service.lease,
                worker.name)
            worker.kill()
            self._on_worker_death(worker)

    def _requeue_expired_leases(self) -> None:
        self.lease_check.done()
        recovery.requeue_jobs_with_expired_leases(self.config, self.db, now=self.clock.now())

    # -- the workers -------------------------------------------------------------------------------------

    def _handle_worker(self) -> None:
        """Act on every worker's messages, then on its death."""
        for worker in list(self.workers):
            for message in worker.receive():
                self._on_worker_message(message, worker)
            if self.exit_code is None and worker.process is not None and not worker.alive:
                self._on_worker_death(worker)

    def _on_worker_message(self, message: FromWorker, worker: WorkerProcess | None = None) -> None:
        worker = worker or self.worker
        match message:
            case WorkerReady(engine_name=name):
                worker.ready, worker.engine_name = True, name
                worker.startup_deaths = 0
            case WorkerStartFailed(message=text, config_problem=config_problem):
                log.error("%s", text)
                self.exit_code = EXIT_CONFIG if config_problem else EXIT_FAILURE
            case JobFinished(job_id=job_id, outcome=Outcome.CONFIG_ERROR, message=text):
                # Not the input's fault: the job went back to the queue, and the service stops until fixed.
                log.error("svfrd stops: %s. Job %d is back in the queue and runs once this is fixed", text, job_id)
                worker.job = None
                self.exit_code = EXIT_CONFIG
            case JobDeadline(job_id=job_id, frames=frames, seconds=seconds):
                if worker.job is not None and worker.job.id == job_id:
                    worker.timers.set_job_timeout(seconds)
                    worker.job_frames = frames
                    job_logger(job_id).debug("%d frames: stopped if still running after %.0f s", frames, seconds)
            case JobFinished(job_id=job_id, outcome=outcome):
                job_logger(job_id).debug("the worker reports the job %s", outcome.value)
                worker.job = None
                self._notify_if_ended(job_id)
            case _:
                log.warning("ignored an unknown message from the worker: %r", message)

    def _on_worker_death(self, worker: WorkerProcess | None = None, overdue_message: str | None = None) -> None:
        """Reap a dead worker, settle its own job (`overdue_message`: it was killed for running past its time
        limit, and why) and start a fresh one on its device: the one way a worker is restarted. The other
        workers and their jobs go on untouched."""
        worker = worker or self.worker
        how = describe_exit(worker.process.exitcode)
        job = worker.job
        worker.kill()  # reap it
        if job is not None:
            self._settle_job_of_dead_worker(job, how, overdue_message)
        elif not worker.ready:
            worker.startup_deaths += 1
            log.error("the worker process on %s died while starting (%s)", worker.device, how)
            if worker.startup_deaths >= MAX_STARTUP_DEATHS:
                log.error("the worker on %s died %d times while starting; giving up (see the errors above)",
                          worker.device, worker.startup_deaths)
                self.exit_code = EXIT_FAILURE
                return
        else:
            log.warning("the idle worker process on %s died (%s); restarting it", worker.device, how)
        if self.stop_signal is None and not self._closed():
            worker.start()
        else:
            worker.let_go()  # started again when the gate opens

    def _settle_job_of_dead_worker(self, job: Job, how: str, overdue_message: str | None) -> None:
        """Record what became of the dead worker's job, unless its claim was lost (it may run elsewhere now:
        only that attempt may record it). Should recording fail, the worker is restarted all the same (else
        the loop would meet the same dead worker again and again); the job stays running in the database
        until its lease expires or the next start of the daemon puts it back in the queue."""
        try:
            current = get_job(self.db, job.id)
            if job.claim_token is not None and not claim_is_held(current, job.claim_token):
                job_logger(job.id).info("its worker ended (%s) after the job was no longer its own; nothing to "
                                        "record, and its unpublished files are removed", how)
                results.remove_temps_of_lost_attempt(self.config, current or job, job.claim_token)
                return
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
                                     "stays running until its lease expires or svfrd restarts", how, exc_info=True)

    def _notify_if_ended(self, job_id: int) -> None:
        """[notify] for a job that ended (done, failed, cancelled); not for one back in the queue."""
        job = get_job(self.db, job_id)
        if job is not None and JobState(job.state).finished:
            self.notifier.job_ended(job)

    def _check_running_job(self, worker: WorkerProcess | None = None) -> None:
        """Read a running job's row: honour a cancel the worker did not act on, and update the status line."""
        worker = worker or self.worker
        worker.timers.running_checked()
        if worker.timers.job_overdue():
            self._stop_overdue_job(worker)
            return
        job = get_job(self.db, worker.job.id)
        if job is None:
            return
        self.status_text = running_status(job)
        if self.gate_state.must_stop(job) and worker.interrupted_job != job.id:
            worker.interrupted_job = job.id
            job_logger(job.id).info("stopping: %s; the job goes back to the queue", self.gate_state.why_stopped())
            worker.interrupt()
        if job.cancel_requested and worker.timers.cancel_overdue():
            job_logger(job.id).warning("the worker did not stop for the cancel within %g s ([service] "
                                       "cancel_grace); killing it", worker.timers.cancel_grace)
            worker.process.kill()

    def _stop_overdue_job(self, worker: WorkerProcess) -> None:
        """Past its time limit the job is stopped the only way a stuck engine cannot ignore: its worker is
        killed, and then handled as any dead worker (a fresh one is started). The job fails without a retry:
        it would hold the queue as long again."""
        message = timeout_message(worker.job, self.config.limits, worker.job_frames, worker.timers.job_timeout,
                                  worker.timers.job_running_for())
        worker.kill()
        self._on_worker_death(worker, overdue_message=message)

    def _keep_manager_informed(self) -> None:
        busy = self.busy_workers()
        if not busy and all(worker.process is None for worker in self.workers):
            self.status_text = self.gate_state.describe()
        elif not busy:
            ready = all(worker.ready for worker in self.workers)
            self.status_text = "idle, waiting for videos" if ready else "loading the engine"
        elif len(self.workers) > 1:
            self.status_text = f"{len(busy)} of {len(self.workers)} workers busy"
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
        if any(worker.job is not None and worker.alive for worker in self.workers):
            self._wind_down_running_jobs()
        for worker in self.workers:
            if worker.job is not None:
                recovery.requeue_after_stop(self.config, self.db, worker.job)
            worker.stop()
        self.notifier.close()
        log.info("stopped")
        return self.exit_code if self.exit_code is not None else EXIT_OK

    def _wind_down_running_jobs(self) -> None:
        """Finish the running jobs (on_stop = "finish") or interrupt them, within stop_timeout; then kill.
        Leases are renewed meanwhile: a job being finished is still this daemon's."""
        timeout = self.config.service.stop_timeout
        deadline = self.clock.monotonic() + timeout
        finishing = self.config.service.on_stop == "finish" and self.exit_code is None
        for worker in self.busy_workers():
            if finishing:
                job_logger(worker.job.id).info("finishing the running job before stopping (at most %.0f s)",
                                               timeout)
            else:
                worker.interrupt()

        def still_running() -> list[WorkerProcess]:
            return [worker for worker in self.busy_workers() if worker.alive]

        while still_running() and self.clock.monotonic() < deadline:
            notify.extend_timeout(deadline - self.clock.monotonic() + 10)
            self._wait(min(5.0, deadline - self.clock.monotonic(), self.heartbeat.seconds_until_due()))
            for worker in self.workers:
                for message in worker.receive():
                    self._on_worker_message(message, worker)
            if self.heartbeat.due():
                self.heartbeat.done()
                for worker in still_running():
                    renew_lease(self.db, worker.job.id, worker.claim_token, self.config.service.lease,
                                now=self.clock.now())
        for worker in still_running():
            job_logger(worker.job.id).warning("the worker did not stop within %.0f s; killing it", timeout)
            worker.kill()


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
