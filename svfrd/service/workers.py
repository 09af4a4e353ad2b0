"""The worker processes, seen from the supervisor: one per entry of `[engine] devices`, each with its own engine
and models loaded on its device (`svfrd.service.worker` is the process itself).

Each worker is idle or busy on its own, with its own running job, its claim token, its job's time limit and
cancel grace (a `LoopTimers` of its own, on the supervisor's clock), and its own count of deaths while starting.
docs/architecture.md, "Workers, claims and leases", says how the jobs are shared out.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any

from svfrd.config import Config
from svfrd.jobs.model import Job
from svfrd.service.clock import SYSTEM_CLOCK, Clock
from svfrd.service.messages import FromWorker, RunJob, Stop
from svfrd.service.timers import LoopTimers
from svfrd.service.worker import worker_main

log = logging.getLogger(__name__)

#: How long an idle worker gets to exit after Stop.
WORKER_EXIT_GRACE = 5.0


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


def config_for_device(config: Config, device: str) -> Config:
    """The configuration one worker runs with: the service's, its engine on `device`."""
    return replace(config, engine=replace(config.engine, device=device))


@dataclass
class WorkerProcess:
    """One worker process and what the supervisor knows of it."""

    config: Config
    verbose: bool = False
    device: str | None = None
    clock: Clock = SYSTEM_CLOCK
    process: Any = None
    conn: Connection | None = None
    ready: bool = False
    engine_name: str | None = None
    job: Job | None = None
    #: The running job's frame count, once the worker has probed its video (for the timeout message).
    job_frames: int | None = None
    #: Consecutive deaths before it was ready (MAX_STARTUP_DEATHS in svfrd.service.supervisor).
    startup_deaths: int = 0
    #: The job the gate (pause, schedule) asked to stop, asked once.
    interrupted_job: int | None = None
    timers: LoopTimers = field(init=False)

    def __post_init__(self) -> None:
        self.device = self.device or self.config.engine.device
        # Only its job's timing is used: the running-job check, the time limit, the cancel grace.
        self.timers = LoopTimers(scan_interval=self.config.service.scan_interval,
                                 cancel_grace=self.config.service.cancel_grace, clock=self.clock)

    @property
    def name(self) -> str:
        return f"worker {self.pid} ({self.device})" if self.process is not None else f"worker ({self.device})"

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe()
        self.process = context.Process(
            target=worker_main, args=(self.config, child_end, os.getpid(), self.verbose),
            name=f"svfrd-worker-{self.device}",
        )
        self.process.start()
        child_end.close()  # so that our end sees EOF when the worker dies
        self.conn, self.ready, self.job = parent_end, False, None
        log.info("worker process %d started on %s", self.process.pid, self.device)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    @property
    def idle(self) -> bool:
        return self.ready and self.job is None and self.alive

    @property
    def claim_token(self) -> str | None:
        return self.job.claim_token if self.job is not None else None

    def wait_objects(self) -> list:
        return [self.conn, self.process.sentinel] if self.process is not None else []

    def receive(self) -> list[FromWorker]:
        """Messages waiting on the pipe (none once the worker is gone)."""
        if self.process is None:  # let go while closed (Supervisor._let_workers_go_while_closed)
            return []
        received = []
        try:
            while self.conn.poll():
                received.append(self.conn.recv())
        except (EOFError, OSError):
            pass
        return received

    def run(self, job: Job) -> None:
        self.job, self.job_frames = job, None
        self.timers.job_started()
        # Until its video is probed, a job gets the least any job gets.
        self.timers.set_job_timeout(self.config.limits.job_timeout_min)
        try:
            self.conn.send(RunJob(job.id, job.claim_token))
        except OSError:
            pass  # it just died: the death is handled with the job, as for any death mid-job

    def interrupt(self) -> None:
        """Ask the running job to stop at its next progress report and go back to the queue."""
        if self.alive:
            os.kill(self.pid, signal.SIGUSR1)

    def kill(self) -> None:
        if self.alive:
            self.process.kill()
        if self.process is not None:
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

    def let_go(self) -> None:
        """End the worker and leave none on its device (paused, outside the schedule): its models leave the GPU.
        `start` makes a fresh one."""
        self.stop()
        self.process, self.conn, self.ready = None, None, False


def worker_pool(config: Config, verbose: bool = False, clock: Clock = SYSTEM_CLOCK) -> list[WorkerProcess]:
    """One worker per entry of `[engine] devices` (by default one, on `[engine] device`)."""
    return [WorkerProcess(config_for_device(config, device), verbose, device, clock)
            for device in config.engine.worker_devices]
