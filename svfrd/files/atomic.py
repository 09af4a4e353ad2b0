"""Writing a file so that a reader sees its old content or its new content, never half of it.

The content goes to a hidden temporary name in the target's own folder (the same filesystem, so the rename is
atomic; the dot makes intake, users and sync tools skip it), is fsynced, then renamed over the target, and the
folder is fsynced so that a power cut cannot undo the rename. `svfrd.files.placement.publish` builds on the same pieces
but never replaces an existing file.

Temporary names are predictable, and whoever can write to the folder could plant a symlink there in advance
(`.clip.mp4.part -> /some/file/of/ours`). So a temporary file is always created new (`create_temp`:
`O_CREAT | O_EXCL | O_NOFOLLOW`) and written through the descriptor that created it; nothing here writes by name
into a file it did not just create.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

TEMP_SUFFIX = ".part"
# Results and notes: readable by the service's group, not by the world (README, "Permissions").
PRIVATE_FILE_MODE = 0o640
# The service's umask: nothing it creates is for the world; its group may read (README, "Permissions").
SERVICE_UMASK = 0o027
_CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def hidden_temp_path(target: Path, unique: bool = False) -> Path:
    """`.NAME.part` beside `target`. With `unique`: `.NAME.<pid>.part`, so two processes writing the same
    target never write into one temporary file."""
    pid = f".{os.getpid()}" if unique else ""
    return target.with_name(f".{target.name}{pid}{TEMP_SUFFIX}")


def create_new(path: Path, mode: int = PRIVATE_FILE_MODE) -> BinaryIO:
    """A new, empty file at `path`, open for writing. Raises FileExistsError when anything (a file, a symlink,
    a folder) is there already: never writes into an existing file, never through a symlink. The umask applies
    to `mode`."""
    return os.fdopen(os.open(path, _CREATE_NEW, mode), "wb")


def is_temp_name(name: str) -> bool:
    """Whether `name` has the form of our temporary names (`hidden_temp_path`): `.NAME.part`, `.NAME.<pid>.part`."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX) and len(name) > len(TEMP_SUFFIX) + 1


def create_temp(path: Path, mode: int = PRIVATE_FILE_MODE) -> BinaryIO:
    """`create_new` for one of our own temporary names (`is_temp_name`). A plain file in the way (left by an
    interrupted run) or a symlink (planted: removed, never followed) is removed once; anything else there (a
    folder, a FIFO, a device), something there again at once, or anything at all under a name that is not one
    of ours (a caller's mistake must never cost a user's file) is an error naming the folder."""
    try:
        return create_new(path, mode)
    except FileExistsError:
        pass
    try:
        if not is_temp_name(path.name):
            raise FileExistsError(errno.EEXIST, "it is not one of svfrd's temporary names, so it is never removed")
        if not _is_plain_file_or_symlink(path):
            raise FileExistsError(errno.EEXIST, "it is not a plain file")
        os.unlink(path)  # a symlink itself, never its target
        return create_new(path, mode)
    except (FileExistsError, PermissionError) as err:
        raise FileExistsError(
            err.errno, f"cannot create the temporary file {path}: something else is in the way ({err.strerror}); "
            f"check who else can write to {path.parent}", str(path)
        ) from None


def _is_plain_file_or_symlink(path: Path) -> bool:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return True  # gone meanwhile: nothing in the way any more
    return stat.S_ISREG(mode) or stat.S_ISLNK(mode)


@contextmanager
def replacing(target: Path, mode: int = 0o666) -> Iterator[BinaryIO]:
    """A binary file for the new content of `target`. When the block ends without an error, the content is
    fsynced and renamed over `target`; after an error `target` is untouched and the temporary file removed.
    The new file gets `mode` less the umask (by default what `open` would give it)."""
    temp = hidden_temp_path(target, unique=True)
    try:
        with create_temp(temp, mode) as f:
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
    """fsync the file named `path`; a symlink there is an error (ELOOP), never followed."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
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


def restrict_umask(bits: int = SERVICE_UMASK) -> int:
    """Add `bits` to this process's umask (inherited by its workers); a stricter umask stays as it is. Returns
    the umask now in force."""
    old = os.umask(bits)
    os.umask(old | bits)
    return old | bits
