"""One daemon per state folder: the second one is refused with a message naming the first."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from svfrd.service.lock import StateLockedError, acquire_state_lock

HOLD_LOCK = """
import sys, time
from svfrd.service.lock import acquire_state_lock
acquire_state_lock(sys.argv[1])
print("locked", flush=True)
time.sleep(60)
"""


def start_holder(state_dir) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(state_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_lock_on_the_same_state_folder_is_refused_naming_the_holder(tmp_path):
    holder = start_holder(tmp_path / "state")
    try:
        with pytest.raises(StateLockedError) as info:
            acquire_state_lock(tmp_path / "state")
        message = str(info.value)
        assert f"pid={holder.pid}" in message and "already using the state folder" in message
        assert "stop it first" in message
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_free_again_after_kill_9(tmp_path):
    holder = start_holder(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    lock = acquire_state_lock(tmp_path)
    assert f"pid={os.getpid()}" in (tmp_path / "svfrd.lock").read_text()
    lock.release()


def test_release_lets_another_holder_in_and_other_folders_are_independent(tmp_path):
    first = acquire_state_lock(tmp_path / "a")
    other = acquire_state_lock(tmp_path / "b")
    with pytest.raises(StateLockedError):
        acquire_state_lock(tmp_path / "a")
    first.release()
    with acquire_state_lock(tmp_path / "a"):
        pass
    other.release()


HOLD_LOCK_WITH_CHILD = """
import subprocess, sys, time
from svfrd.service.lock import acquire_state_lock
acquire_state_lock(sys.argv[1])
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], close_fds=False)
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_worker_child_that_outlives_the_daemon_does_not_keep_the_lock(tmp_path):
    daemon = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK_WITH_CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    child_pid = int(daemon.stdout.readline())
    try:
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait()
        acquire_state_lock(tmp_path).release()
    finally:
        os.kill(child_pid, signal.SIGKILL)


def acquire_soon(state_dir, within: float = 2.0):
    """A just-forked child drops its copy of the lock when its at-fork hook runs, a moment after fork()
    returned in the parent: allow that moment, far less than the child's life."""
    deadline = time.monotonic() + within
    while True:
        try:
            return acquire_state_lock(state_dir)
        except StateLockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def test_a_forked_worker_that_outlives_the_daemon_does_not_keep_the_lock(tmp_path):
    script = HOLD_LOCK_WITH_CHILD.replace(
        'child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], close_fds=False)',
        "import multiprocessing\nchild = multiprocessing.get_context('fork').Process(target=time.sleep, args=(30,))"
        "\nchild.start()",
    )
    daemon = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    child_pid = int(daemon.stdout.readline())
    try:
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait()
        acquire_soon(tmp_path).release()
    finally:
        os.kill(child_pid, signal.SIGKILL)
