"""`svfrd pause`, `svfrd pause --after-current` and `svfrd resume` (docs/architecture.md, "Pause, schedule,
priority, notifications").

The pause is a row of the `service_state` table, so it survives a restart of the service and the command can
set it while the daemon runs (or while it is stopped). After changing it, the command wakes the daemon with
SIGUSR1; the daemon also reads it at each check of the running job (every few seconds) and on every wake-up,
so a lost signal (the command run by a user who may not signal the service) only delays it.
"""

from __future__ import annotations

import enum
import fcntl
import os
import re
import signal
from pathlib import Path

from sqlalchemy import Engine as Database

from svfrd.jobs.store import read_service_state, write_service_state
from svfrd.service.lock import LOCK_NAME

PAUSE_KEY = "pause"


class Pause(str, enum.Enum):
    NONE = ""
    NOW = "now"  # the running job stops at once (back in the queue), nothing starts
    AFTER_CURRENT = "after_current"  # the running job finishes, then nothing starts

    @property
    def label(self) -> str:
        return {Pause.NONE: "", Pause.NOW: "paused", Pause.AFTER_CURRENT: "paused after current"}[self]


def read_pause(db: Database) -> Pause:
    value = read_service_state(db, PAUSE_KEY)
    try:
        return Pause(value) if value is not None else Pause.NONE
    except ValueError:  # written by a newer svfrd: pausing is the careful reading
        return Pause.NOW


def set_pause(db: Database, pause: Pause) -> None:
    write_service_state(db, PAUSE_KEY, pause.value)


def wake_daemon(state_dir: Path) -> bool:
    """Send SIGUSR1 to the daemon holding the state folder's lock, so it acts on a changed pause at once.
    False when no daemon runs or it cannot be signalled (another user's service): it then notices within a
    scan interval. The pid is read only while the lock is held, so a stale lock file is never trusted."""
    path = Path(state_dir) / LOCK_NAME
    try:
        with open(path, encoding="utf-8") as handle:
            if _lock_is_free(handle):
                return False
            pid = _holder_pid(handle.read())
        if pid is None or pid == os.getpid():
            return False
        os.kill(pid, signal.SIGUSR1)
        return True
    except OSError:  # no lock file (never ran), or not allowed to signal
        return False


def _lock_is_free(handle) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(handle, fcntl.LOCK_UN)
    return True


def _holder_pid(details: str) -> int | None:
    match = re.search(r"\bpid=(\d+)\b", details)
    return int(match[1]) if match else None
