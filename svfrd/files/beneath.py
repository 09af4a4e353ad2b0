"""Opening files *beneath* an inbox: no symlink in any part of the path, nothing outside the inbox, plain
files only.

An inbox is often writable by other people (docs/architecture.md, "Paths from an inbox"). Whoever can write
there can plant a symlink in place of a folder (`inbox/st -> ../state`) or of a file, or a FIFO that blocks the
reader forever. So every path the service opens or moves out of an inbox is walked one component at a time
from an open descriptor of the inbox with `O_NOFOLLOW`: a symlink anywhere is refused (ELOOP), `..` is refused
before anything is opened, and what is finally opened is checked with `fstat` to be a plain file (no FIFO,
device or socket; `O_NONBLOCK` keeps the open of a FIFO from waiting for a writer).

The inbox folder itself is opened as configured (an administrator may point it through a link).
"""

from __future__ import annotations

import errno
import os
import stat
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator

from svfrd.errors import BadInputError

_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def relative_parts(root: str | Path, path: str | Path) -> tuple[str, ...]:
    """The components of `path` below `root`, by name only (nothing is resolved): `path` may be absolute and
    under `root`, or relative to it. Raises BadInputError for `..`, an empty name, or a path not under `root`."""
    path = PurePosixPath(path)
    if path.is_absolute():
        try:
            path = path.relative_to(PurePosixPath(root))
        except ValueError:
            raise BadInputError(f"{path} is not inside {root}; svfrd only takes files from inside the inbox") from None
    parts = path.parts
    if not parts or any(part in ("", ".", "..") for part in parts):
        raise BadInputError(f"{path} must name a file inside {root} without '..'; put the file next to the video")
    return parts


@contextmanager
def open_folder(root: str | Path, relative: str | Path | tuple[str, ...] = ()) -> Iterator[int]:
    """A descriptor of the folder `relative` below `root` (`root` itself for `()`), reached without
    following any symlink. Closed when the block ends."""
    fd = open_folder_fd(root, relative)
    try:
        yield fd
    finally:
        os.close(fd)


def open_folder_fd(root: str | Path, relative: str | Path | tuple[str, ...] = ()) -> int:
    """Like `open_folder`, but the caller closes the descriptor."""
    parts = _folder_parts(root, relative)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    walked = Path(root)
    try:
        for part in parts:
            walked = walked / part
            next_fd = _open_component(part, _FOLDER_FLAGS, fd, walked, root, "folder")
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _folder_parts(root: str | Path, relative: str | Path | tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(relative, tuple):
        return relative
    if str(relative) in ("", ".") or PurePosixPath(relative) == PurePosixPath(root):
        return ()
    return relative_parts(root, relative)


@contextmanager
def open_plain_file(root: str | Path, path: str | Path, follow_last_link: bool = False) -> Iterator[BinaryIO]:
    """`path` (absolute under `root`, or relative to it) opened for reading as a binary file, reached without
    following any symlink, and only if it is a plain file. Raises BadInputError saying what to do otherwise,
    FileNotFoundError when it is not there. `follow_last_link`: the file itself may be a link, followed
    wherever it points (an inbox with `follow_symlinks = true`); its folders still may not."""
    parts = relative_parts(root, path)
    flags = _FILE_FLAGS & ~os.O_NOFOLLOW if follow_last_link else _FILE_FLAGS
    with open_folder(root, parts[:-1]) as folder:
        fd = _open_component(parts[-1], flags, folder, Path(root).joinpath(*parts), root, "file")
    try:
        _require_plain_file(fd, Path(root).joinpath(*parts))
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def read_plain_file(root: str | Path, path: str | Path, limit: int) -> bytes:
    """The content of `path` (see `open_plain_file`), at most `limit` bytes; raises BadInputError when the file
    is bigger."""
    with open_plain_file(root, path) as f:
        return read_at_most(f, limit, Path(root).joinpath(*relative_parts(root, path)))


def read_at_most(f: BinaryIO, limit: int, shown: str | Path) -> bytes:
    """Read an open file whole, but never more than `limit` bytes (one more is read to tell a bigger file)."""
    data = f.read(limit + 1)
    if len(data) > limit:
        raise BadInputError(f"{shown} is bigger than {_size(limit)}, the most svfrd reads from such a file; "
                            "use a smaller file")
    return data


def is_plain_file_beneath(root: str | Path, path: str | Path) -> bool:
    """Whether `path` is a plain file reached below `root` without any symlink (the file is not read)."""
    try:
        with open_plain_file(root, path):
            return True
    except (BadInputError, OSError):
        return False


def lexists_beneath(root: str | Path, path: str | Path) -> bool:
    """Whether `path` exists (of any kind, a link too) in a folder reached below `root` without any symlink."""
    try:
        parts = relative_parts(root, path)
        with open_folder(root, parts[:-1]) as folder:
            os.stat(parts[-1], dir_fd=folder, follow_symlinks=False)
    except (BadInputError, OSError):
        return False
    return True


def is_beneath(root: str | Path, path: str | Path) -> bool:
    """Whether `path` lies under `root` by name (nothing is resolved)."""
    return PurePosixPath(path).is_relative_to(PurePosixPath(root)) and PurePosixPath(path) != PurePosixPath(root)


def _open_component(name: str, flags: int, dir_fd: int, shown: Path, root: str | Path, kind: str) -> int:
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as err:
        # With O_DIRECTORY, Linux reports a symlink as ENOTDIR rather than ELOOP.
        if err.errno == errno.ELOOP or (err.errno == errno.ENOTDIR and _is_link(name, dir_fd)):
            raise BadInputError(
                f"{shown} is a symbolic link, and svfrd follows no link inside an inbox ({root}): a link could "
                f"make the service read or move a file that was not given to it. Copy the {kind} itself in"
            ) from None
        if err.errno == errno.ENOTDIR:
            raise BadInputError(f"{shown} is not a folder; name a file inside the folder of the video") from None
        if err.errno == errno.ENXIO:  # a socket cannot be opened at all
            _require_plain_file_named(name, dir_fd, shown)
        raise


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _require_plain_file(fd: int, shown: Path) -> None:
    _require_plain_mode(os.fstat(fd).st_mode, shown)


def _require_plain_file_named(name: str, dir_fd: int, shown: Path) -> None:
    _require_plain_mode(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode, shown)


def _require_plain_mode(mode: int, shown: Path) -> None:
    if not stat.S_ISREG(mode):
        raise BadInputError(f"{shown} is {_kind(mode)}, not a plain file; svfrd only reads plain files from an "
                            "inbox. Copy the file itself in")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a plain file"


def _size(limit: int) -> str:
    if limit < 1024:
        return f"{limit} bytes"
    return f"{limit // 1024} KiB" if limit < 1 << 20 else f"{limit // (1 << 20)} MiB"
