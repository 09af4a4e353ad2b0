"""Whether the names svfrd derives from an input's name fit the filesystem.

From `clip.mp4` the service makes `clip.restored.mp4` (and a report, previews), numbered variants such as
`clip-9999.restored.mp4`, temporary names such as `.job12.clip.restored.mp4.part`, `clip-2.mp4` in done/ or
failed/, and `clip.error.txt`. A file system refuses a name longer than NAME_MAX bytes (255 on Linux), so an
input whose name fits but whose derived names do not would fail deep in a job, or in the cleanup after it (a
232-byte stem once took the service down; docs/architecture.md §5). Intake therefore checks the longest derived
name before it takes a file (`derived_name_problem`), and refuses the file under a shortened name
(`shortened_name`).

The names are computed with the same functions that make them (`svfrd.files.placement`, `svfrd.files.atomic`),
with the largest number, job id and process id they can carry. What lives in the service layer above (the result
suffixes and `job<id>.` temporary names of `svfrd.service.results`, the sidecar name of `svfrd.service.sidecar`)
is mirrored here, and tests/files/test_names.py holds the copies to the originals.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from svfrd.files.atomic import TEMP_SUFFIX, hidden_temp_path
from svfrd.files.placement import MAX_NAME_TRIES, error_report_name

#: Bytes in one file name on Linux file systems (ext4, XFS, Btrfs, tmpfs); `os.pathconf` may say less.
NAME_MAX = 255
#: Suffixes of a job's results (mirrors `svfrd.service.results._suffixes`, checked by a test).
RESULT_SUFFIXES = (".restored.mp4", ".report.json", ".preview.mp4", ".contact.png")
#: The longest job id a temporary result name is expected to carry (a billion jobs).
JOB_ID_DIGITS = 10
#: Characters of the claim token in a temporary result name (`svfrd.service.results.temp_files`).
CLAIM_TAG_CHARS = 12
#: The longest process id Linux hands out (`/proc/sys/kernel/pid_max` is at most 4194304).
PID_DIGITS = 7
#: A refused input's name in failed/ keeps this many bytes of its stem.
SHORT_STEM_BYTES = 96
ELLIPSIS = "…"


def byte_length(name: str) -> int:
    """The length of `name` on disk (undecodable bytes kept by `os.fsdecode` count as one byte each)."""
    return len(os.fsencode(name))


def numbered(name: str, number: int = MAX_NAME_TRIES - 1) -> str:
    """`clip.mp4` -> `clip-9999.mp4`: the longest name `placement.numbered_names` and `free_stem` make."""
    path = PurePosixPath(name)
    return f"{path.stem}-{number}{path.suffix}"


def temp_names(name: str) -> list[str]:
    """The temporary names a file `name` is written under before it gets its name (`.NAME.part`, and the
    unique `.NAME.<pid>.part` with the longest process id)."""
    plain = hidden_temp_path(Path(name)).name
    unique = hidden_temp_path(Path(name), unique=True).name
    this_pid = f".{os.getpid()}{TEMP_SUFFIX}"
    if unique.endswith(this_pid):
        unique = unique[: -len(this_pid)] + f".{'9' * PID_DIGITS}{TEMP_SUFFIX}"
    return [plain, unique]


def with_temps(names: list[str]) -> list[str]:
    return [derived for name in names for derived in [name, *temp_names(name)]]


def input_names(name: str) -> list[str]:
    """The names an input file (video, sidecar, mask, reference) may get in done/ or failed/."""
    return with_temps([name, numbered(name)])


def result_names(stem: str) -> list[str]:
    """The names of a job's results in the outbox, final and temporary."""
    job_id = "9" * JOB_ID_DIGITS
    finals = [numbered(numbered(stem + suffix)) for suffix in RESULT_SUFFIXES]  # free_stem, then publish
    claim_tag = "f" * CLAIM_TAG_CHARS
    temps = [derived for suffix in RESULT_SUFFIXES
             for derived in temp_names(f"job{job_id}-{claim_tag}.{stem}{suffix}")]
    return finals + temps


def note_names(video_name: str) -> list[str]:
    """`NAME.error.txt` beside a failed input that was numbered, itself numbered if taken, and its temp."""
    note = error_report_name(numbered(video_name))
    return [numbered(note), *temp_names(note)]


def derived_names(video_name: str) -> list[str]:
    """Every name the service may make from a video named `video_name` (its last path component)."""
    stem = PurePosixPath(video_name).stem
    return (input_names(video_name) + input_names(stem + ".toml") + result_names(stem)
            + note_names(video_name))


def name_limit(folders: list[Path]) -> int:
    """The smallest name length the folders' file systems allow (NAME_MAX where they do not say)."""
    limits = [NAME_MAX]
    for folder in folders:
        try:
            limits.append(os.pathconf(folder, "PC_NAME_MAX"))
        except (OSError, ValueError):
            continue  # not created yet, or the file system does not tell
    return min(limits)


def derived_name_problem(video_name: str, limit: int = NAME_MAX, *, extra: bool = False) -> str | None:
    """Why a file named `video_name` cannot be handled (None when it can). `extra`: a mask or reference,
    which only travels to done/ or failed/."""
    names = input_names(video_name) if extra else derived_names(video_name)
    longest = max(names, key=byte_length)
    if byte_length(longest) <= limit:
        return None
    room = limit - (byte_length(longest) - byte_length(PurePosixPath(video_name).stem))
    return (f"its name is too long: {byte_length(video_name)} bytes, and the names svfrd derives from it "
            f"(temporary and numbered results, copies in done/ and failed/, notes) would be up to "
            f"{byte_length(longest)} bytes long, while a file name may have at most {limit} bytes. Rename it "
            f"so that the part before {PurePosixPath(video_name).suffix or 'the end'} has at most "
            f"{max(room, 1)} bytes")


def shortened_name(name: str, stem_bytes: int = SHORT_STEM_BYTES) -> str:
    """`name` with its stem cut to `stem_bytes` bytes (at a character boundary) and an ellipsis, suffix kept:
    short enough for every name derived from it."""
    path = PurePosixPath(name)
    stem = path.stem
    while stem and byte_length(stem) + byte_length(ELLIPSIS) > stem_bytes:
        stem = stem[:-1]
    return f"{stem}{ELLIPSIS}{path.suffix}"
