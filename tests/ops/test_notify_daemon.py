"""A real `svfrd run` talks to a stand-in service manager: READY once it is started, STATUS lines, WATCHDOG
keep-alives at half of $WATCHDOG_USEC, and STOPPING on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from svfrd.jobs.database import current_revision, head_revision
from tests.helpers.media_clips import face_model_path, write_moving_face_clip
from tests.helpers.paths import REPO_ROOT

REPO = REPO_ROOT
WATCHDOG_USEC = 1_000_000  # keep-alives every 0.5 s


def write_config(folder: Path, engine: str = "InvertingEngine") -> Path:
    config = folder / "config.toml"
    config.write_text(
        "[service]\nscan_interval = 0.5\nquiet_period = 0.2\nsidecar_grace = 0\nstop_timeout = 20\n"
        "min_free_space_mb = 1\n\n"
        '[[inbox]]\npath = "inbox"\n\n'
        f'[faces]\nmodel = "{face_model_path()}"\n\n'
        "[output]\npreview = false\n\n"
        f'[engine]\nname = "tests.helpers.engines:{engine}"\ndevice = "cpu"\n'
    )
    return config


def start_daemon(config: Path, manager: "ManagerSocket", **env_vars: str) -> subprocess.Popen:
    env = dict(os.environ, NOTIFY_SOCKET=str(manager.path), WATCHDOG_USEC=str(WATCHDOG_USEC), PYTHONUNBUFFERED="1",
               **env_vars)
    env.pop("WATCHDOG_PID", None)
    return subprocess.Popen([sys.executable, "-m", "svfrd", "--config", str(config), "run"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class ManagerSocket:
    """The datagram socket systemd would listen on; keeps every message with its arrival time."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[tuple[float, str]] = []

    def wait_for(self, line: str, timeout: float, daemon: subprocess.Popen, on_arrival=None) -> float:
        """Receive until a message holds `line` (a whole `KEY=value` line or a `KEY=` prefix); its arrival time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(0.5)
            try:
                message = self.sock.recv(4096).decode()
            except socket.timeout:
                if daemon.poll() is not None:
                    raise AssertionError(f"the daemon exited ({daemon.returncode}) before {line!r}: "
                                         f"{daemon.stderr.read()[-3000:]}") from None
                continue
            arrived = time.monotonic()
            self.messages.append((arrived, message))
            if any(got == line or (line.endswith("=") and got.startswith(line)) for got in message.splitlines()):
                if on_arrival:
                    on_arrival()
                return arrived
        raise AssertionError(f"no {line!r} within {timeout} s; got {[m for _, m in self.messages]}")

    def lines(self, prefix: str) -> list[tuple[float, str]]:
        return [(t, line) for t, m in self.messages for line in m.splitlines() if line.startswith(prefix)]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def manager(tmp_path: Path):
    sock = ManagerSocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def test_daemon_reports_ready_status_watchdog_and_stopping(tmp_path: Path, manager: ManagerSocket) -> None:
    config = write_config(tmp_path)
    database = f"sqlite:///{tmp_path / 'state' / 'svfrd.db'}"
    daemon = start_daemon(config, manager)
    schema_at_ready: list[str | None] = []
    try:
        ready_at = manager.wait_for(
            "READY=1", 60, daemon, on_arrival=lambda: schema_at_ready.append(current_revision(database)))
        # READY means started: the database is migrated and the inbox folder exists.
        assert schema_at_ready == [head_revision(database)]
        assert (tmp_path / "inbox").is_dir()
        manager.wait_for("STATUS=", 10, daemon)
        for _ in range(3):
            manager.wait_for("WATCHDOG=1", 5, daemon)
        daemon.send_signal(signal.SIGTERM)
        manager.wait_for("STOPPING=1", 20, daemon)
        _, stderr = daemon.communicate(timeout=30)
    finally:
        daemon.kill()
        daemon.wait()
    assert daemon.returncode == 0, stderr
    statuses = [line for _, line in manager.lines("STATUS=")]
    assert statuses and all(len(s) > len("STATUS=") for s in statuses)
    # Keep-alives come regularly, at about half the watchdog deadline, never later than the deadline.
    pings = [t for t, _ in manager.lines("WATCHDOG=1")]
    assert len(pings) >= 3
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert max(gaps) < WATCHDOG_USEC / 1e6, gaps
    assert all(t >= ready_at for t, _ in manager.lines("STATUS="))


def test_status_names_the_running_job_and_stopping_asks_for_time(tmp_path: Path, manager: ManagerSocket) -> None:
    config = write_config(tmp_path, engine="SlowEngine")
    write_moving_face_clip(tmp_path / "interview.mp4", frames=8, width=160, height=120)
    daemon = start_daemon(config, manager, SVFRD_TEST_SECONDS_PER_FRAME="1.0")
    try:
        manager.wait_for("READY=1", 60, daemon)
        (tmp_path / "inbox").mkdir(exist_ok=True)
        os.replace(tmp_path / "interview.mp4", tmp_path / "inbox" / "interview.mp4")
        deadline = time.monotonic() + 60
        while not any("interview.mp4" in line for _, line in manager.lines("STATUS=")):
            assert time.monotonic() < deadline, manager.messages
            manager.wait_for("STATUS=", 60, daemon)
        daemon.send_signal(signal.SIGTERM)
        manager.wait_for("STOPPING=1", 20, daemon)
        manager.wait_for("EXTEND_TIMEOUT_USEC=", 20, daemon)
        _, stderr = daemon.communicate(timeout=40)
    finally:
        daemon.kill()
        daemon.wait()
    assert daemon.returncode == 0, stderr
    job_status = next(line for _, line in manager.lines("STATUS=") if "interview.mp4" in line)
    assert "job 1" in job_status, manager.messages
    (_, extend), *_ = manager.lines("EXTEND_TIMEOUT_USEC=")
    assert 0 < int(extend.split("=")[1]) <= 30_000_000  # stop_timeout (20 s) plus a margin
