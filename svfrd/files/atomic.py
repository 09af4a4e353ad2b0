"""Writing a file so that a reader sees its old content or its new content, never half of it.

The content goes to a hidden temporary name in the target's own folder (the same filesystem, so the rename is
atomic; the dot makes intake, users and sync tools skip it), is fsynced, then renamed over the target, and the
folder is fsynced so that a power cut cannot undo the rename. `svfrd.files.placement.publish` builds on the same pieces
but never replaces an existing file.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

TEMP_SUFFIX = ".part"


def hidden_temp_path(target: Path, unique: bool = False) -> Path:
    """`.NAME.part` beside `target`. With `unique`: `.NAME.<pid>.part`, so two processes writing the same
    target never write into one temporary file."""
    pid = f".{os.getpid()}" if unique else ""
    return target.with_name(f".{target.name}{pid}{TEMP_SUFFIX}")


@contextmanager
def replacing(target: Path) -> Iterator[BinaryIO]:
    """A binary file for the new content of `target`. When the block ends without an error, the content is
    fsynced and renamed over `target`; after an error `target` is untouched and the temporary file removed."""
    temp = hidden_temp_path(target, unique=True)
    try:
        with open(temp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, target)
        fsync_folder(target.parent)
    finally:
        temp.unlink(missing_ok=True)


def write_replacing(target: Path, content: bytes | str) -> None:
    """Atomically give `target` this content (text is written as UTF-8)."""
    with replacing(target) as f:
        f.write(content.encode("utf-8") if isinstance(content, str) else content)


def copy_replacing(source: Path, target: Path) -> None:
    """Atomically give `target` the content of `source`, streamed (a video never sits in memory)."""
    with open(source, "rb") as src, replacing(target) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
