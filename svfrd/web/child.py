"""`[web] enabled = true`: `svfrd run` serves the page from a child process (`svfrd web`).

A child rather than a thread: the supervisor's main loop stays one `select` with nothing else to schedule, a
slow upload or a crash in the page cannot stall or take down the queue, and the child runs as the same user
with the same umask, so it has no more privilege than the service. It ends with the service (SIGTERM on the
way out, and Linux's parent-death signal if the service is killed).

When the page dies, the supervisor starts it again after a pause that grows while it keeps dying soon after
its start (`svfrd.service.timers.RestartBackoff`, on the supervisor's clock), so a page that cannot run never
spins. Its address is tried first: while the port is taken, no child is started and the log says so once.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

from svfrd.config import Config, parse_listen_address
from svfrd.ops.ports import bind_problem
from svfrd.service.clock import SYSTEM_CLOCK, Clock
from svfrd.service.timers import RestartBackoff

log = logging.getLogger("svfrd.web")
#: Seconds the page gets to close its connections when the service stops.
STOP_GRACE = 5.0


def web_command(config: Config, verbose: bool = False) -> list[str]:
    return [sys.executable, "-m", "svfrd", "--config", str(config.path)] + (["-v"] if verbose else []) + ["web"]


def listen_problem(listen: str) -> str | None:
    """Why the page could not listen on `listen` now (its port taken, an address not of this machine)."""
    host, port = parse_listen_address(listen)
    err = bind_problem(host, port)
    return None if err is None else f"cannot listen on {listen}: {err.strerror}"


def exit_description(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class WebPage:
    """The page's child process, restarted with growing pauses when it dies. `command` (default: `svfrd web`
    with this config) and `clock` are passed in by tests."""

    def __init__(self, config: Config, verbose: bool = False, clock: Clock = SYSTEM_CLOCK,
                 command: list[str] | None = None):
        self.listen = config.web.listen
        self.command = command or web_command(config, verbose)
        self.backoff = RestartBackoff(clock=clock)
        self.process: subprocess.Popen | None = None
        self.exit_fd: int | None = None  # readable once the child has ended (a pidfd), to wake the main loop
        self.reported_problem: str | None = None

    def start(self) -> None:
        """Start the page, unless its address cannot be listened on now: then say why (once while it stays
        the same) and try again after the next pause."""
        problem = listen_problem(self.listen)
        if problem is not None:
            pause = self.backoff.failed()
            if problem != self.reported_problem:
                log.warning("the web page %s; `svfrd doctor` names who holds the port, or choose another in [web] "
                            "listen. Trying again after growing pauses (at most every %.0f s) without saying this "
                            "again", problem, self.backoff.max_pause)
                self.reported_problem = problem
            else:
                log.debug("the web page still %s; next try in %.0f s", problem, pause)
            return
        if self.reported_problem is not None:
            log.info("the web page's address %s can be listened on again", self.listen)
            self.reported_problem = None
        self.process = self._spawn()
        self.exit_fd = _exit_fd(self.process.pid)
        self.backoff.started()
        log.info("the web page runs in process %d on %s ([web] enabled)", self.process.pid, self.listen)

    def _spawn(self) -> subprocess.Popen:
        env = {**os.environ, "SVFRD_WEB_PARENT": str(os.getpid())}
        env.pop("NOTIFY_SOCKET", None)  # systemd's notifications are the service's, not the page's
        return subprocess.Popen(self.command, env=env, stdin=subprocess.DEVNULL)

    def check(self) -> None:
        """On each pass of the main loop: notice that the page died, and restart it once its pause is over."""
        if self.process is not None and self.process.poll() is not None:
            code = self.process.returncode
            self._forget_process()
            pause = self.backoff.failed()
            log.warning("the web page stopped (%s; its lines above say why); starting it again in %.0f s",
                        exit_description(code), pause)
        if self.process is None and self.backoff.due():
            self.start()

    def seconds_until_restart(self) -> float | None:
        return None if self.process is not None else self.backoff.seconds_until_due()

    def wait_objects(self) -> list[int]:
        return [self.exit_fd] if self.exit_fd is not None else []

    def _forget_process(self) -> None:
        self.process = None
        if self.exit_fd is not None:
            os.close(self.exit_fd)
            self.exit_fd = None

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is not None:
            log.warning("the web page had stopped (%s); its lines above say why", exit_description(process.returncode))
        else:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._forget_process()


def _exit_fd(pid: int) -> int | None:
    """A descriptor that becomes readable when `pid` ends (Linux 5.3 and newer); None elsewhere: the main loop
    then notices the death on its next pass (at least once per scan interval)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None
