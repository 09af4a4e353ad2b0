"""`[web] enabled = true`: `svfrd run` serves the page from a child process (`svfrd web`).

A child rather than a thread: the supervisor's main loop stays one `select` with nothing else to schedule, a
slow upload or a crash in the page cannot stall or take down the queue, and the child runs as the same user
with the same umask, so it has no more privilege than the service. It ends with the service (SIGTERM on the
way out, and Linux's parent-death signal if the service is killed).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

from svfrd.config import Config

log = logging.getLogger("svfrd.web")
#: Seconds the page gets to close its connections when the service stops.
STOP_GRACE = 5.0


def start_web_child(config: Config, verbose: bool = False) -> subprocess.Popen | None:
    if not config.web.enabled:
        return None
    command = [sys.executable, "-m", "svfrd", "--config", str(config.path)] + (["-v"] if verbose else []) + ["web"]
    env = {**os.environ, "SVFRD_WEB_PARENT": str(os.getpid())}
    env.pop("NOTIFY_SOCKET", None)  # systemd's notifications are the service's, not the page's
    child = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
    log.info("the web page runs in process %d on %s ([web] enabled)", child.pid, config.web.listen)
    return child


def stop_web_child(child: subprocess.Popen | None) -> None:
    if child is None:
        return
    if child.poll() is not None:
        log.warning("the web page had stopped (exit code %s); its lines above say why", child.returncode)
        return
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
