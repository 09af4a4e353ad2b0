"""A job's video, opened once when the job starts and read only through that open file.

The video lies in an inbox that others may write to (docs/architecture.md, "Paths from an inbox"). Opening it
by path at every stage (hash, probe, face pass, decodes, audio copy) would let someone swap a folder on its way
for a link (`inbox/trip -> /elsewhere`) between two of them, and the service would restore a file that was never
given to it. So the worker opens the video once, beneath its inbox (`svfrd.files.beneath`: no link in any part
of the path, a plain file only), hashes it from that open file, and the media code reads the same open file.

The media code opens files by path (PyAV, and each stage opens its own demuxer). It is given a link in the
service's private STATE_DIR/reading/jobN/, named like the video (so messages name the video), that points at
`/proc/self/fd/N`, the descriptor held here. Opening that reaches the file held open, wherever its name has
gone since, and nobody who writes to an inbox can change the link. /proc/self/fd is Linux-only; so is svfrd (a
systemd service).
"""

from __future__ import annotations

import shutil
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from svfrd.config import Config
from svfrd.files import beneath
from svfrd.jobs.model import Job

FOLDER = "reading"


@dataclass(frozen=True)
class HeldVideo:
    """The job's video, open. `file` is read for the hash; `media_path` opens the same file for the media code."""

    file: BinaryIO
    media_path: Path


@contextmanager
def hold_video(config: Config, job: Job) -> Iterator[HeldVideo | None]:
    """The job's video held open until the block ends; None when it is no longer where the row says. Raises
    BadInputError when the way to it passes a link, or it is not a plain file."""
    with ExitStack() as stack:
        try:
            file = stack.enter_context(_open_video(config, job))
        except FileNotFoundError:
            file = None
        if file is None:
            yield None
        else:
            yield HeldVideo(file, stack.enter_context(_link_to(config, job, file)))


def _open_video(config: Config, job: Job):
    """Beneath the inbox while the video is there; a retried job's video in failed/ beneath that folder (the
    service's own). The file itself may be a link only in an inbox that says `follow_symlinks = true`."""
    source = Path(job.source_path)
    root = Path(job.inbox) if beneath.is_beneath(job.inbox, source) else source.parent
    return beneath.open_plain_file(root, source, follow_last_link=_follows_links(config, job.inbox))


def _follows_links(config: Config, inbox: str) -> bool:
    return any(str(configured.path) == inbox and configured.follow_symlinks for configured in config.inboxes)


@contextmanager
def _link_to(config: Config, job: Job, file: BinaryIO) -> Iterator[Path]:
    folder = Path(config.service.state_dir) / FOLDER / f"job{job.id}"
    shutil.rmtree(folder, ignore_errors=True)  # left by a worker that was killed mid-job
    folder.mkdir(mode=0o750, parents=True)
    link = folder / Path(job.source_path).name
    link.symlink_to(f"/proc/self/fd/{file.fileno()}")  # resolved in the process that opens it: this worker
    try:
        yield link
    finally:
        shutil.rmtree(folder, ignore_errors=True)
