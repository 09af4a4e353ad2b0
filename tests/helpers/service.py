"""A real svfrd daemon on a temporary folder, and small distinct face clips, for the end-to-end service tests.

`ServiceFolder` writes a config.toml (short quiet periods and scan intervals, a test engine from
`tests/helpers/engines.py`) and drops videos into its inbox; `Daemon` runs `python -m svfrd --config ... run` as a
subprocess from the repository root (so `tests.helpers.engines` is importable by the worker) and waits on the job
database the way a user would read it.

Jobs are deduplicated by content, so every clip meant to be its own job carries a `tag` stamped into a corner:
same face, different bytes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import av
import numpy as np
from PIL import Image
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError, ProgrammingError

from svfrd.config import Config, load_config, toml_repr
from svfrd.jobs.database import open_database, upgrade_database
from svfrd.jobs.model import Job
from svfrd.jobs.store import list_jobs
from tests.helpers.media_clips import moving_face_frames, write_clip, write_no_face_clip, write_truncated_copy
from tests.helpers.paths import FACE_MODEL, REPO_ROOT

#: The folders a second host on a shared filesystem uses in common with the first (`shares_folders_of`).
SHARED_FOLDERS = ("inbox", "outbox", "done", "failed")

FAST_SERVICE = {
    "scan_interval": 1.0,
    "quiet_period": 0.3,
    "sidecar_grace": 0.5,
    "max_attempts": 3,
    "retry_backoff": 0.2,
    "min_free_space_mb": 1,
    "on_stop": "requeue",
    "stop_timeout": 15,
}


@dataclass
class ServiceFolder:
    """A complete svfrd installation in one folder: config, inbox, outbox, done, failed, state."""

    root: Path
    engine: str = "tests.helpers.engines:InvertingEngine"
    service: dict = field(default_factory=dict)
    preview: bool = False
    face_model: Path = FACE_MODEL
    limits: dict = field(default_factory=dict)  # [limits] keys; none: the defaults
    web: dict = field(default_factory=dict)  # [web] keys; none: the defaults
    devices: list[str] | None = None  # [engine] devices: one worker each; None: one worker on "cpu"
    output: dict = field(default_factory=dict)  # more [output] keys (segment_seconds, ...)
    database: str | None = None  # [service] database_url (a PostgreSQL one); None: SQLite in the state folder
    #: Another installation whose inbox, outbox, done and failed this one uses: a second host on a shared
    #: filesystem (its own config and state folder). None: its own folders.
    shares_folders_of: "ServiceFolder | None" = None

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for name in ("inbox", "outbox", "done", "failed", "markers", "staging"):
            (self.root / name).mkdir(exist_ok=True)
        self.write_config()

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    def folder(self, name: str) -> Path:
        if self.shares_folders_of is not None and name in SHARED_FOLDERS:
            return self.shares_folders_of.folder(name)
        return self.root / name

    @property
    def inbox(self) -> Path:
        return self.folder("inbox")

    @property
    def outbox(self) -> Path:
        return self.folder("outbox")

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.root / 'state' / 'svfrd.db'}"

    def write_config(self) -> None:
        service = {**FAST_SERVICE, **self.service}
        lines = ["[service]", 'state_dir = "state"']
        if self.database is not None:
            lines.append(f"database_url = {toml_repr(self.database)}")
        lines += [f"{key} = {toml_repr(value)}" for key, value in service.items()]
        inbox, outbox, done, failed = (toml_repr(self._configured_path(name)) for name in SHARED_FOLDERS)
        lines += ["", "[[inbox]]", f"path = {inbox}", 'tasks = ["bfr"]', "",
                  "[output]", f"outbox = {outbox}", f"done = {done}", f"failed = {failed}",
                  f"preview = {toml_repr(self.preview)}", "crf = 23",
                  *[f"{key} = {toml_repr(value)}" for key, value in self.output.items()], "",
                  "[faces]", f"model = {toml_repr(str(self.face_model))}", "",
                  "[engine]", f"name = {toml_repr(self.engine)}", 'device = "cpu"', 'dtype = "fp32"']
        if self.devices is not None:
            lines.append(f"devices = {toml_repr(self.devices)}")
        if self.limits:
            lines += ["", "[limits]"] + [f"{key} = {toml_repr(value)}" for key, value in self.limits.items()]
        if self.web:
            lines += ["", "[web]"] + [f"{key} = {toml_repr(value)}" for key, value in self.web.items()]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _configured_path(self, name: str) -> str:
        """A folder as config.toml names it: relative to the config's folder, unless it is shared."""
        return name if self.shares_folders_of is None else str(self.folder(name))

    def drop(self, source: Path, name: str | None = None, sidecar: str | None = None,
             extras: dict[str, Path] | None = None) -> Path:
        """Put a video (and its sidecar and extra files first) into the inbox the way a careful copier does:
        complete files appear by rename."""
        name = name or source.name
        for extra_name, extra in (extras or {}).items():
            self._appear(self.inbox / extra_name, extra.read_bytes())
        if sidecar is not None:
            self._appear(self.inbox / (Path(name).stem + ".toml"), sidecar.encode())
        target = self.inbox / name
        self._appear(target, source.read_bytes())
        return target

    def _appear(self, target: Path, data: bytes) -> None:
        staged = self.root / "staging" / target.name
        staged.write_bytes(data)
        os.rename(staged, target)

    def jobs(self) -> list[Job]:
        """Every job, oldest first ([] while the daemon has not created the database yet)."""
        if self.database is None and not (self.root / "state" / "svfrd.db").exists():
            return []
        db = open_database(self.database_url)
        try:
            return sorted(list_jobs(db, limit=10_000), key=lambda job: job.id)
        except (OperationalError, ProgrammingError):  # the schema is being created right now
            return []
        finally:
            db.dispose()

    @contextmanager
    def open_store(self) -> Iterator[tuple[Config, Engine]]:
        """Its config and its job database, migrated, for tests that run the service's parts in-process."""
        config = load_config(self.config_path)
        upgrade_database(config.service.database_url)
        db = open_database(config.service.database_url)
        try:
            yield config, db
        finally:
            db.dispose()

    def files(self, name: str) -> list[str]:
        """Names in one of the folders, hidden ones included, sorted."""
        return sorted(p.name for p in self.folder(name).iterdir())


class Daemon:
    """`svfrd run` as a subprocess; its log goes to a file the assertions can show."""

    def __init__(self, folder: ServiceFolder, log_name: str = "daemon.log", env: dict[str, str] | None = None,
                 cwd: Path = REPO_ROOT, own_process_group: bool = False):
        self.folder = folder
        self.cwd = cwd
        self.log_path = folder.root / log_name
        self.extra_env = env or {}
        self.own_process_group = own_process_group  # needed by `kill_service`
        self.process: subprocess.Popen | None = None

    def start(self) -> "Daemon":
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "SVFRD_TEST_MARKER": str(self.folder.root / "markers"),
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **self.extra_env}
        env.pop("NOTIFY_SOCKET", None)
        env.pop("WATCHDOG_USEC", None)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "svfrd", "--config", str(self.folder.config_path), "run"],
                cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=self.own_process_group,
            )
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def kill(self) -> None:
        """kill -9, as a crash or the OOM killer would."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def kill_service(self) -> None:
        """SIGKILL to the daemon and its worker at the same instant, as a power loss ends them."""
        assert self.own_process_group, "start the Daemon with own_process_group=True"
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the daemon did not exit within {timeout} s\n{self.log()[-4000:]}") from None

    def stop(self) -> int | None:
        """SIGTERM and wait; for test teardown."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)

    def wait_until(self, what: str, condition: Callable[[], object], timeout: float = 60.0,
                   interval: float = 0.2, while_alive: bool = True) -> object:
        """Poll `condition` until it returns something truthy; fail with the daemon's log otherwise (also
        as soon as the daemon exits, unless `while_alive` is False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            if while_alive and self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"the daemon exited ({self.process.returncode}) while waiting for {what}\n"
                                     f"{self.log()[-4000:]}")
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{self.log()[-4000:]}")

    def wait_for_jobs(self, count: int, states: set[str], timeout: float = 60.0) -> list[Job]:
        """Wait until there are `count` jobs, all in one of `states`."""

        def settled() -> list[Job] | None:
            jobs = self.folder.jobs()
            if len(jobs) >= count and all(job.state in states for job in jobs):
                return jobs
            return None

        return self.wait_until(f"{count} job(s) in {sorted(states)}", settled, timeout)

    def wait_for_running_stage(self, stages: set[str], timeout: float = 60.0) -> Job:
        """Wait until a job runs in one of `stages` (so a kill or signal lands mid-restoration)."""

        def running() -> Job | None:
            return next((j for j in self.folder.jobs() if j.state == "running" and j.stage in stages), None)

        return self.wait_until(f"a job running in {sorted(stages)}", running, timeout, interval=0.1)

    def wait_until_serving(self, timeout: float = 60.0) -> None:
        """Wait until start-up is complete (the log says so after the first scan)."""
        self.wait_until("the daemon to start", lambda: "svfrd is running" in self.log(), timeout)

    def __enter__(self) -> "Daemon":
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------------------------
# Clips.

CLIP_SIZE = 160
CLIP_FRAMES = 4


@lru_cache(maxsize=4)
def _face_frames(frames: int, size: int) -> tuple[np.ndarray, ...]:
    return tuple(moving_face_frames(frames, size, size))


def write_face_clip(path: Path, tag: int = 0, frames: int = CLIP_FRAMES, size: int = CLIP_SIZE) -> Path:
    """The moving astronaut, `frames` frames of `size` x `size`, with `tag` stamped in the bottom-left corner."""
    stamped = []
    for frame in _face_frames(frames, size):
        frame = frame.copy()
        for bit in range(12):  # 12 bits of tag as 4x4 black/white squares
            value = 255 if (tag >> bit) & 1 else 0
            frame[size - 4 : size, bit * 4 : bit * 4 + 4] = value
        stamped.append(frame)
    return write_clip(Path(path), stamped, fps=25)


def write_corrupt_video(path: Path) -> Path:
    """Bytes that are no video at all, under a video name."""
    Path(path).write_bytes(b"this is not a video file, just text with an .mp4 name\n" * 200)
    return Path(path)


def write_truncated_video(source: Path, path: Path) -> Path:
    """The first third of a real clip, as an interrupted upload leaves it."""
    return write_truncated_copy(source, path, keep=0.3)


def write_faceless_video(path: Path) -> Path:
    return write_no_face_clip(Path(path), frames=4)


def write_mask(path: Path, size: int = CLIP_SIZE) -> Path:
    """A frame-sized inpainting mask: a white bar across the lower third (like burnt-in subtitles)."""
    pixels = np.zeros((size, size), np.uint8)
    pixels[size * 2 // 3 : size * 2 // 3 + 12, :] = 255
    Image.fromarray(pixels).save(path)
    return Path(path)


def read_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
