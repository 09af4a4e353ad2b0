"""Putting files in their final place without ever losing or overwriting one.

Results are written under a hidden temporary name in the outbox (same filesystem), fsynced, then given their
final name with a hard link, which fails instead of replacing an existing file; name clashes get `-2`, `-3`, ...
Inputs are moved the same way (copy + fsync first when the folders are on different filesystems), and the
folders are fsynced so that a power cut cannot undo a rename. Temporary files are created new, never through
a planted symlink (`svfrd.files.atomic.create_temp`); results and notes are readable by the service's group,
not by the world (`PRIVATE_FILE_MODE`), and folders made here are `FOLDER_MODE`.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import stat
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from svfrd.errors import TransientError
from svfrd.files.atomic import TEMP_SUFFIX, create_temp, fsync_file, fsync_folder, hidden_temp_path, is_temp_name
from svfrd.files.beneath import is_beneath, open_folder, relative_parts
from svfrd.ops.printable import printable, printable_lines

log = logging.getLogger(__name__)

MAX_NAME_TRIES = 10_000
FOLDER_MODE = 0o750  # the service and its group (README, "Permissions"); the umask applies as well


def temp_output_path(outbox: str | Path, final_name: str) -> Path:
    """Where to write `final_name` before publishing it: `.NAME.part` in the outbox. The dot and the suffix
    make intake, users and sync tools ignore it; being in the outbox keeps the final rename atomic. The name is
    predictable: create the file with `svfrd.files.atomic.create_temp`, never by opening the path."""
    outbox = Path(outbox)
    outbox.mkdir(FOLDER_MODE, parents=True, exist_ok=True)
    return hidden_temp_path(outbox / final_name)


def publish(temp: str | Path, final: str | Path) -> Path:
    """fsync `temp` and give it the name `final`, or `final` with -2, -3, ... if that is taken.
    Returns the name used. Never replaces an existing file. A publish cut short between its link and its
    unlink (a crash) is finished: the name that is already this very file is the one used."""
    temp, final = Path(temp), Path(final)
    fsync_file(temp)
    for (candidate,) in numbered_names([final]):
        try:
            _link_or_rename(temp, candidate)
        except FileExistsError:
            if not _is_hard_link_of(candidate, temp):
                continue
            os.unlink(temp)
        fsync_folder(final.parent)
        return candidate
    raise TransientError(f"no free name for {final} after {MAX_NAME_TRIES} tries; clean up {final.parent}")


def publish_text(folder: str | Path, name: str, text: str) -> Path:
    """Write a small text file (report, error note) durably under `name` (or a numbered variant)."""
    temp = temp_output_path(folder, name)
    with create_temp(temp) as f:
        f.write(text.encode("utf-8"))
    return publish(temp, Path(folder) / name)


def move_input_to(
    folder: str | Path, paths: Iterable[str | Path | None], beneath: str | Path | None = None,
    names: Iterable[str] | None = None,
) -> list[Path]:
    """Move an input's files (video, sidecar, mask; None entries skipped) into `folder`, keeping them
    together: if any name is taken, all get the same number (`clip-2.mp4`, `clip-2.toml`). Files already in
    `folder` (a retried job's input in failed/) stay as they are; a move cut short between its link and its
    unlink (a crash) is finished. `names`: other names for them in `folder`, one per path that is not None
    (a name too long to keep is refused under a shortened one, see svfrd.files.names). Returns the new paths
    in the given order (without the None entries). Nothing is overwritten or lost.

    A source under `beneath` (the inbox it came from) is moved by name from its folder opened without
    following any symlink (`svfrd.files.beneath`), so a planted link (`inbox/st -> ../state`) cannot make the
    service move a file from outside the inbox; a link as the last component is moved itself, never its
    target. Raises BadInputError when such a path passes through a link."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        sources = _entries([Path(p) for p in paths if p is not None], beneath, stack)
        wanted = dict(zip([s.path for s in sources], names)) if names is not None else {
            s.path: s.name_only for s in sources}
        placed = {s.path: s.path for s in sources if _lies_in(s, folder) and s.name_only == wanted[s.path]}
        for source in sources:
            if source.path not in placed and _is_hard_link_of(folder / wanted[source.path], source):
                os.unlink(source.name, dir_fd=source.dir_fd)
                placed[source.path] = folder / wanted[source.path]
        to_move = [s for s in sources if s.path not in placed]
        if to_move:
            moved = _move_together(folder, to_move, [wanted[s.path] for s in to_move])
            placed.update(zip([s.path for s in to_move], moved))
        return [placed[s.path] for s in sources]


@dataclass(frozen=True)
class _Entry:
    """A file by name: `name` in the folder open as `dir_fd`, or, with `dir_fd` None, the path `name`."""

    path: Path
    dir_fd: int | None
    name: str

    @property
    def name_only(self) -> str:
        return self.path.name

    @staticmethod
    def at(path: Path) -> "_Entry":
        return _Entry(path, None, str(path))


def _entries(paths: list[Path], beneath: str | Path | None, stack: ExitStack) -> list[_Entry]:
    """Each path as an `_Entry`; those under `beneath` name their file from a safely opened folder (one
    descriptor per folder, closed by `stack`)."""
    folders: dict[tuple[str, ...], int] = {}
    entries = []
    for path in paths:
        if beneath is None or not is_beneath(beneath, path):
            entries.append(_Entry.at(path))
            continue
        parts = relative_parts(beneath, path)
        if parts[:-1] not in folders:
            folders[parts[:-1]] = stack.enter_context(open_folder(beneath, parts[:-1]))
        entries.append(_Entry(path, folders[parts[:-1]], parts[-1]))
    return entries


def _lies_in(entry: _Entry, folder: Path) -> bool:
    if entry.dir_fd is None:
        return entry.path.parent.resolve() == folder.resolve()
    here, there = os.fstat(entry.dir_fd), os.stat(folder)
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _move_together(folder: Path, sources: list[_Entry], names: list[str]) -> list[Path]:
    for targets in numbered_names([folder / name for name in names]):
        if any(os.path.lexists(n) for n in targets):
            continue
        try:
            moved = []
            for source, target in zip(sources, targets):
                _move_one(source, _Entry.at(target))
                moved.append(target)
        except FileExistsError:  # someone took a name meanwhile: put back what we moved, try the next number
            for source, target in zip(sources, moved):
                _move_one(_Entry.at(target), source)
            continue
        fsync_folder(folder)
        for source in sources:
            if source.dir_fd is None:
                fsync_folder(source.path.parent)
            else:
                os.fsync(source.dir_fd)
        return targets
    raise TransientError(f"no free names in {folder} after {MAX_NAME_TRIES} tries; clean up {folder}")


def mirror_folder(root: str | Path, source_name: str) -> Path:
    """Where an input's files go under `root` (outbox, done/, failed/): the folder it had under its inbox, so
    `inbox/trip/a.mp4` gives `root/trip`. `source_name` is the path relative to the inbox that intake records."""
    return Path(root).joinpath(*PurePosixPath(source_name).parent.parts)


def link_or_copy(source: str | Path, target: str | Path) -> None:
    """Give `target` the content of `source`: a hard link (no space, no time), or a copy where the filesystem
    cannot link (another device, no hard links). A leftover `target` from an interrupted run is replaced only
    under one of our temporary names (`is_temp_name`): anything under another name is an error, never removed,
    as in `create_temp` (a caller's mistake must never cost a user's file). Neither name is followed if it is a
    symlink."""
    source, target = Path(source), Path(target)
    if is_temp_name(target.name):
        target.unlink(missing_ok=True)
    try:
        os.link(source, target, follow_symlinks=False)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, _in_the_way(target), str(target)) from None
    except OSError as err:
        if err.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        with open(os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as src, \
                create_temp(target) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)


def _in_the_way(target: Path) -> str:
    why = ("it is not one of svfrd's temporary names, so it is never replaced" if not is_temp_name(target.name)
           else "it appeared again at once")
    return f"cannot link {target}: something is in the way ({why}); check who else can write to {target.parent}"


def error_report_name(source_name: str) -> str:
    """`clip.mp4` -> `clip.error.txt`."""
    return f"{PurePosixPath(source_name).stem}.error.txt"


def write_error_report(failed_folder: str | Path, source_name: str, message: str) -> Path:
    """`NAME.error.txt` beside the failed input (pass the input's name as it lies in failed/, so a
    renamed `clip-2.mp4` gets `clip-2.error.txt`). Names in it are shown with their control characters escaped
    (`svfrd.ops.printable`), so printing the note at a terminal runs no escape sequence."""
    text = f"svfrd could not process {printable(source_name)}.\n\n{printable_lines(message.rstrip())}\n"
    return publish_text(failed_folder, error_report_name(source_name), text)


def free_space_mb(folder: str | Path) -> float:
    """Free space available to this user in the filesystem of `folder` (its nearest existing parent)."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize / (1024 * 1024)


def ensure_free_space(folder: str | Path, need_mb: float) -> None:
    """Raise TransientError (the job is retried later) when `folder` has less than `need_mb` free."""
    free = free_space_mb(folder)
    if free < need_mb:
        raise TransientError(
            f"disk full: {free:.0f} MB free in {folder}, need {need_mb:.0f} MB ([service] min_free_space_mb); "
            "free space and the job will be retried"
        )


#: Marks a job's scratch folder beside its temporary result: `..NAME.part.spool-XXXXXXXX.part` (`spool_folder`).
SPOOL_MARK = ".spool-"
#: What `tempfile` puts between the mark and the suffix: 8 of these characters.
_SPOOL_RANDOM = r"[a-z0-9_]{8}"
#: The only files a spool folder holds (`svfrd.media.multiface.CropSpool`); nothing else in one is removed.
SPOOL_FILE = re.compile(r"track-[0-9]+\.png-spool")


def spool_folder(temp_result: Path) -> tempfile.TemporaryDirectory:
    """A scratch folder for the job writing `temp_result` (its `.NAME.part` in the outbox), beside it on the
    same disk, removed when the job ends. A crash leaves it behind; the job's cleanup (`remove_spool_folders`)
    and start-up (`clean_stale_temp_files`) then remove it by its exact name: a dot, the temporary result's
    name, the mark, tempfile's 8 random characters, `.part`."""
    return tempfile.TemporaryDirectory(prefix=f".{temp_result.name}{SPOOL_MARK}", suffix=TEMP_SUFFIX,
                                       dir=temp_result.parent)


def _is_spool_name(name: str, of_result: str | None = None) -> bool:
    """Whether `name` is exactly what `spool_folder` makes for the temporary result `of_result` (or for any of
    ours, `.NAME.part`): a user's folder that merely looks alike is never taken for one."""
    result = re.escape(of_result) if of_result is not None else r"\..+" + re.escape(TEMP_SUFFIX)
    return re.fullmatch(r"\." + result + re.escape(SPOOL_MARK) + _SPOOL_RANDOM + re.escape(TEMP_SUFFIX),
                        name, re.DOTALL) is not None


def remove_spool_folders(temp_result: Path) -> list[Path]:
    """Remove the scratch folders a killed run of the job writing `temp_result` left beside it."""
    return _remove_spools(temp_result.parent, temp_result.name)


def _remove_spools(folder: Path, of_result: str | None) -> list[Path]:
    """`_remove_spool` for each spool folder in `folder` (of `of_result`, or of any result)."""
    try:
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return []
    try:
        names = [name for name in os.listdir(folder_fd) if _is_spool_name(name, of_result)]
        return [folder / name for name in names if _remove_spool(folder_fd, name, folder)]
    finally:
        os.close(folder_fd)


def _remove_spool(folder_fd: int, name: str, folder: Path) -> bool:
    """Remove the spool folder `name` of the folder open as `folder_fd`: opened without following a symlink,
    only its `SPOOL_FILE` entries are unlinked (a symlink among them is removed itself, never its target),
    then the folder, which fails while anything else is in it. Returns whether it is gone."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder_fd)
    except OSError:
        return False  # gone meanwhile, a symlink, or not a folder: not ours to remove
    try:
        for entry in [e.name for e in os.scandir(fd) if SPOOL_FILE.fullmatch(e.name)]:
            if not stat.S_ISDIR(os.stat(entry, dir_fd=fd, follow_symlinks=False).st_mode):
                os.unlink(entry, dir_fd=fd)
    finally:
        os.close(fd)
    try:
        os.rmdir(name, dir_fd=folder_fd)
    except OSError as err:
        if err.errno != errno.ENOTEMPTY:
            raise
        log.warning("left %s in place: it is named like svfrd's scratch folder but holds files svfrd did not "
                    "write; move them out (or the folder away) and remove it", printable(str(folder / name)))
        return False
    return True


def clean_stale_temp_files(outbox: str | Path) -> list[Path]:
    """At start-up: remove `.NAME.part` files and scratch folders (`spool_folder`) left by a daemon that died
    mid-write (only our own patterns; the job that wrote them is re-queued and writes them again). Returns
    what was removed."""
    outbox = Path(outbox)
    if not outbox.is_dir():
        return []
    removed = []
    with os.scandir(outbox) as entries:
        for entry in entries:
            if is_temp_name(entry.name) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    removed += _remove_spools(outbox, None)
    if removed:
        fsync_folder(outbox)
    return removed


# ---------------------------------------------------------------------------------------------------------------


def free_stem(folder: Path, stem: str, suffixes: Iterable[str],
              skip: Callable[[str], bool] = lambda candidate: False) -> str | None:
    """The first of `stem`, `stem-2`, `stem-3`, ... for which no `stem + suffix` exists in `folder` (and not
    `skip(candidate)`), so files that belong together share one number. None when all are taken."""
    suffixes = list(suffixes)
    for number in range(1, MAX_NAME_TRIES):
        candidate = stem if number == 1 else f"{stem}-{number}"
        if skip(candidate):
            continue
        if not any(os.path.lexists(folder / (candidate + suffix)) for suffix in suffixes):
            return candidate
    return None


def numbered_names(paths: list[Path]):
    """The names as given, then with -2, -3, ... before the last suffix, all with the same number."""
    yield list(paths)
    for number in range(2, MAX_NAME_TRIES):
        yield [p.with_name(f"{p.stem}-{number}{p.suffix}") for p in paths]


def _is_hard_link_of(name: Path, path: Path | _Entry) -> bool:
    """Whether `name` is another name of the very file `path` (symlinks are not followed): what a link whose
    unlink never came leaves behind."""
    entry = path if isinstance(path, _Entry) else _Entry.at(path)
    try:
        a, b = os.lstat(name), os.stat(entry.name, dir_fd=entry.dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _move_one(source: _Entry, target: _Entry) -> None:
    """Move without overwriting. Across filesystems: copy to a temp name, fsync, link, then remove the source
    (the source goes only once the copy is safe). Only a plain file is copied, or a symlink as a link."""
    try:
        _link_or_rename(source, target)
        return
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
    temp = _Entry.at(hidden_temp_path(target.path))
    _copy_entry(source, temp.path)
    _link_or_rename(temp, target)
    os.unlink(source.name, dir_fd=source.dir_fd)


def _copy_entry(source: _Entry, temp: Path) -> None:
    if stat.S_ISLNK(os.stat(source.name, dir_fd=source.dir_fd, follow_symlinks=False).st_mode):
        os.symlink(os.readlink(source.name, dir_fd=source.dir_fd), temp)  # the link itself, never its target
        return
    fd = os.open(source.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=source.dir_fd)
    with os.fdopen(fd, "rb") as src:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode):  # a FIFO would block the copy forever
            raise OSError(errno.EINVAL, "not a plain file, so it is not copied to another filesystem", str(source.path))
        os.set_blocking(fd, True)
        with create_temp(temp) as dst:  # never through a link planted on the temporary name
            shutil.copyfileobj(src, dst, 1 << 20)
            os.fchmod(dst.fileno(), stat.S_IMODE(found.st_mode))  # what shutil.copy2 kept
            os.utime(dst.fileno(), ns=(found.st_atime_ns, found.st_mtime_ns))
            dst.flush()
            os.fsync(dst.fileno())


def _link_or_rename(source: Path | _Entry, target: Path | _Entry) -> None:
    """Give `source` the name `target`, raising FileExistsError rather than replacing it. A hard link is the
    atomic no-replace rename; on filesystems without hard links, check then rename."""
    source = source if isinstance(source, _Entry) else _Entry.at(source)
    target = target if isinstance(target, _Entry) else _Entry.at(target)
    try:
        os.link(source.name, target.name, src_dir_fd=source.dir_fd, dst_dir_fd=target.dir_fd, follow_symlinks=False)
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if _lexists(target):
            raise FileExistsError(errno.EEXIST, "file exists", str(target.path)) from None
        os.rename(source.name, target.name, src_dir_fd=source.dir_fd, dst_dir_fd=target.dir_fd)
        return
    os.unlink(source.name, dir_fd=source.dir_fd)


def _lexists(entry: _Entry) -> bool:
    try:
        os.stat(entry.name, dir_fd=entry.dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True
