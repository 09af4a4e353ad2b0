"""One daemon per state folder.

An exclusive `flock` on `state_dir/svfrd.lock`, held for the life of the process. The kernel drops it when the
process ends in any way (kill -9 included), so a stale lock file never blocks a restart; its content (pid, host,
start time) only serves the error message of a second daemon.
"""

from __future__ import annotations

import fcntl
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

LOCK_NAME = "svfrd.lock"

#: Held locks stay referenced here, so dropping the returned object does not close the file (and free the lock).
_held: list["StateLock"] = []


class StateLockedError(Exception):
    """Another daemon holds the state folder; the message names it and says what to do."""


class StateLock:
    """A held lock. `release()` is optional: process exit releases it too."""

    def __init__(self, path: Path, handle: IO[str]):
        self.path, self._handle = path, handle

    def release(self) -> None:
        if not self._handle.closed:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
        if self in _held:
            _held.remove(self)

    def __enter__(self) -> "StateLock":
        return self

    def __exit__(self, *_exc) -> None:
        self.release()


def _forget_locks_in_forked_child() -> None:
    """A forked worker gets copies of our descriptors; close them (no LOCK_UN, which would free the parent's
    lock) so that a worker outliving a killed daemon cannot keep the state folder locked."""
    for lock in _held:
        lock._handle.close()
    _held.clear()


os.register_at_fork(after_in_child=_forget_locks_in_forked_child)


def acquire_state_lock(state_dir: str | Path) -> StateLock:
    """Take the state folder's lock or raise StateLockedError naming the daemon that holds it."""
    path = Path(state_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    # "a+" neither truncates (the holder's details stay readable until we own the lock) nor fails if present.
    handle = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(handle)
        handle.close()
        raise StateLockedError(
            f"another svfrd daemon ({holder}) is already using the state folder {path.parent}; "
            "stop it first (e.g. `systemctl stop svfrd` or `kill <pid>`), or give this one its own "
            "[service] state_dir"
        ) from None
    os.set_inheritable(handle.fileno(), False)  # worker processes must not keep the lock alive
    _write_holder(handle)
    lock = StateLock(path, handle)
    _held.append(lock)
    return lock


def _write_holder(handle: IO[str]) -> None:
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid={os.getpid()} host={socket.gethostname()} started={started}\n")
    handle.flush()
    os.fsync(handle.fileno())


def _read_holder(handle: IO[str]) -> str:
    handle.seek(0)
    details = handle.read().strip()
    return details or "details unknown"
