"""The service's private copies of the masks and reference images that jobs use.

A mask or reference lies in an inbox that others may write to. Intake reads it once, beneath the inbox
(`svfrd.files.beneath`), checks it, and keeps the bytes it checked in `STATE_DIR/inputs/<sha256>.<kind>`;
the job row names that copy (`mask_copy`, `reference_copy`) and the worker reads only the copy, after
checking that it still has the content its name says. So swapping the inbox file later (for another picture,
a symlink, a FIFO) changes nothing (docs/architecture.md, "Paths from an inbox").

Copies are named by content, so jobs with the same mask share one. A copy no queued or running job names is
removed at the next scan (`remove_unused`): a job that ended (done, failed, cancelled) leaves nothing behind, a
job waiting for a retry keeps its copy, and a failed job retried later gets a fresh copy from its mask where the
row says it lies now, if it is still the same content (`ensure_copies`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from sqlalchemy import Engine

from svfrd.errors import BadInputError
from svfrd.files import beneath
from svfrd.files.atomic import fsync_folder
from svfrd.jobs.model import Job
from svfrd.jobs.store import drop_paths_no_waiting_job_names, set_input_copies
from svfrd.service.sidecar import IMAGE_READ_LIMIT

log = logging.getLogger(__name__)

FOLDER = "inputs"
FILE_MODE = 0o640
#: (copy column, path column, what the messages call it)
KINDS = (("mask_copy", "mask_path", "mask"), ("reference_copy", "reference_path", "reference image"))


def copies_folder(state_dir: str | Path) -> Path:
    return Path(state_dir) / FOLDER


def copy_path(state_dir: str | Path, data: bytes, kind: str) -> Path:
    """Where the private copy of `data` lies (named by its content)."""
    return copies_folder(state_dir) / f"{hashlib.sha256(data).hexdigest()}.{kind.split()[0]}"


def keep_copy(state_dir: str | Path, data: bytes, kind: str) -> Path:
    """The private copy of `data` (written once, fsynced, mode 0640); returns its path."""
    folder = copies_folder(state_dir)
    folder.mkdir(mode=0o750, parents=True, exist_ok=True)
    path = copy_path(state_dir, data, kind)
    if copy_problem(path) is None:
        return path
    temp = folder / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.part"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)  # the same content under the same name: replacing a damaged copy is right
    finally:
        temp.unlink(missing_ok=True)
    fsync_folder(folder)
    return path


def copy_problem(path: str | Path) -> str | None:
    """Why the copy at `path` cannot be used (gone, or not the content its name says), or None."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "it is gone"
    except OSError as err:
        return f"it cannot be read ({err.strerror})"
    if hashlib.sha256(data).hexdigest() != path.name.split(".")[0]:
        return "its content changed"
    return None


def ensure_copies(db: Engine, job: Job, state_dir: str | Path) -> Job:
    """At job start: every mask and reference of the job has a sound private copy. A missing or damaged one
    (a failed job retried, a job queued before copies existed) is made again from the file where the row says
    it lies, read beneath its folder; raises BadInputError when that file is not the content the job was
    queued with. Returns the row as it is now. The row names a copy before it is written: a scan removing
    unused copies meanwhile (`remove_unused`) then keeps it."""
    for copy_column, path_column, kind in KINDS:
        path, copy = getattr(job, path_column), getattr(job, copy_column)
        if path is None or (copy is not None and copy_problem(copy) is None):
            continue
        data = _read_input(job, Path(path), kind)
        wanted = copy_path(state_dir, data, kind)
        if copy is not None and Path(copy).name != wanted.name:
            raise BadInputError(
                f"the {kind} {Path(path).name} is no longer the file the job was queued with (svfrd's own copy "
                f"of it is gone too, so it cannot be restored as asked). Drop the video with its sidecar and "
                f"{kind} into the inbox again"
            )
        if copy is None:
            job = set_input_copies(db, job.id, **{copy_column: wanted})
        keep_copy(state_dir, data, kind)
    return job


def _read_input(job: Job, path: Path, kind: str) -> bytes:
    """The file's bytes, opened beneath its inbox (or, once moved to done/ or failed/, beneath its folder)."""
    root = Path(job.inbox) if beneath.is_beneath(job.inbox, path) else path.parent
    try:
        return beneath.read_plain_file(root, path, IMAGE_READ_LIMIT)
    except FileNotFoundError:
        raise BadInputError(f"the {kind} {path} is no longer there: it was moved or deleted before the job "
                            f"ran. Drop the video with its sidecar and {kind} into the inbox again") from None


def remove_unused(db: Engine, state_dir: str | Path) -> list[Path]:
    """Remove the copies that no queued or running job names. The check and the removal hold the queue, so
    a job retried or claimed meanwhile (the worker, `svfrd retry`) waits and then makes its copy again at
    start (`ensure_copies`) instead of starting with its copy gone. Returns what was removed."""
    folder = copies_folder(state_dir)
    try:
        names = [entry.path for entry in os.scandir(folder) if not entry.name.startswith(".")]
    except FileNotFoundError:
        return []
    columns = [copy_column for copy_column, _, _ in KINDS]
    removed = drop_paths_no_waiting_job_names(db, names, columns, lambda name: Path(name).unlink(missing_ok=True))
    return [Path(name) for name in removed]
