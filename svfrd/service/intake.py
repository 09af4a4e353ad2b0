"""Intake: turns complete videos in the inbox folders into jobs.

The scan is the truth: `scan()` lists every inbox with `os.scandir` and compares it with what it saw before and
with the database. File events (watchdog) are only a hint that makes the daemon scan sooner; inotify misses
events on network mounts and drops them on overflow, a rescan never does.

A video is taken once it is complete: hidden and partial names are ignored, and its size and mtime must stay the
same for `quiet_period`. A video without `NAME.toml` then waits `sidecar_grace` more for one (a sidecar may be
copied in after its video), and a sidecar must itself be unchanged for `quiet_period` before it is read.

Files stay in the inbox while their job is queued or running; the worker moves them to done/ or failed/. So a
file that is the source of a queued, running, failed or cancelled job is left alone here. A video whose content
and options match a queued, running or done job is a duplicate: it goes to done/ without a second job. A bad
sidecar makes a failed job at once, its files moved to failed/ beside `NAME.error.txt`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

import tomllib
from sqlalchemy import Engine

from svfrd.config import Config, InboxConfig
from svfrd.domain import DEFAULT_SEED
from svfrd.errors import BadInputError
from svfrd.files import placement
from svfrd.files.hashing import file_sha256
from svfrd.jobs.model import Job, JobState
from svfrd.jobs.store import (
    dedupe_key_for,
    enqueue_or_find,
    insert_failed_job,
    paths_owned_by_jobs,
    set_input_paths,
)
from svfrd.ops import notify
from svfrd.service.sidecar import JobSpec, default_spec, parse_sidecar, sidecar_path_for

log = logging.getLogger("svfrd.service.intake")

VIDEO_SUFFIXES = frozenset(
    {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".wmv", ".flv",
     ".3gp"}
)
PARTIAL_SUFFIXES = frozenset({".part", ".tmp", ".crdownload", ".partial", ".download"})

#: A file that is the source of a job in these states is the job's business, not intake's.
OWNED_BY_JOB_STATES = frozenset(
    {JobState.QUEUED.value, JobState.RUNNING.value, JobState.FAILED.value, JobState.CANCELLED.value}
)


def is_candidate_video(name: str) -> bool:
    """A visible name (no dot-file, no `~` editor/lock file) ending in a video container suffix; partial
    names (`clip.mp4.part`) end in their partial suffix, so they never match."""
    return not name.startswith((".", "~")) and Path(name).suffix.lower() in VIDEO_SUFFIXES


@dataclass
class _Observed:
    """What a scan saw of one file, and since when (monotonic seconds) it looks the same."""

    size: int
    mtime_ns: int
    unchanged_since: float


@dataclass
class ScanResult:
    """What one scan did (for tests and logs) and how soon another scan is worth it."""

    enqueued: list[Job] = field(default_factory=list)
    failed: list[Job] = field(default_factory=list)
    duplicates: list[tuple[Path, Job]] = field(default_factory=list)
    #: Seconds until a waiting file may be ready (quiet period or sidecar grace running), None if none waits.
    wait: float | None = None


class Intake:
    def __init__(
        self,
        config: Config,
        db: Engine,
        on_hint: Callable[[], None] | None = None,
        allowed_options: frozenset[str] | None = None,
    ):
        self.config, self.db = config, db
        # The configured engine's options by default, a plug-in engine's own included (svfrd.domain.OPTIONS).
        self.allowed_options = config.engine.option_names if allowed_options is None else allowed_options
        self._on_hint = on_hint
        self._hinted = threading.Event()
        self._observed: dict[Path, _Observed] = {}
        self._hashes: dict[tuple[Path, int, int], str] = {}
        self._observer = None

    # -- watching (a hint only) ------------------------------------------------------------------------------

    def start(self) -> None:
        """Create the inboxes and watch them for changes."""
        self.start_watching()

    def start_watching(self, wake: threading.Event | None = None) -> None:
        """Start a watchdog observer on every inbox. The first event after a scan sets `wake` and calls
        `on_hint`, once per batch of events (a big copy makes a flood of them); the next scan re-arms it."""
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        intake = self

        class Hint(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return  # reads (ours included: hashing) change nothing
                if intake._hinted.is_set():
                    return  # already told since the last scan (events come from this one observer thread)
                intake._hinted.set()
                if wake is not None:
                    wake.set()
                if intake._on_hint is not None:
                    intake._on_hint()

        self._observer = Observer()
        for inbox in self.config.inboxes:
            inbox.path.mkdir(parents=True, exist_ok=True)
            self._observer.schedule(Hint(), str(inbox.path), recursive=False)
        self._observer.daemon = True
        self._observer.start()

    def has_hints(self) -> bool:
        """Whether a file event arrived since the last scan."""
        return self._hinted.is_set()

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    # -- scanning (the truth) --------------------------------------------------------------------------------

    def scan(self) -> float | None:
        """Scan every inbox once; returns seconds until a waiting file may be ready (None: nothing waits)."""
        return self.scan_once().wait

    def scan_once(self) -> ScanResult:
        self._hinted.clear()
        result = ScanResult()
        now = time.monotonic()
        seen: set[Path] = set()
        for inbox in self.config.inboxes:
            ready = self._ready_videos(inbox, now, seen, result)
            owned = paths_owned_by_jobs(self.db, [str(v) for v in ready], OWNED_BY_JOB_STATES)
            for video in ready:
                if str(video) not in owned:
                    self._take_safely(inbox, video, result)
        self._forget_vanished(seen)
        return result

    def _ready_videos(self, inbox: InboxConfig, now: float, seen: set[Path], result: ScanResult) -> list[Path]:
        """Videos of this inbox that are complete and whose sidecar question is settled."""
        entries = _list_files(inbox.path)
        for path, (size, mtime_ns) in entries.items():
            seen.add(path)
            self._observe(path, size, mtime_ns, now)
        ready = []
        for path in sorted(entries):
            if not is_candidate_video(path.name):
                continue
            remaining = self._seconds_until_ready(path, entries, now)
            if remaining <= 0:
                ready.append(path)
            else:
                result.wait = remaining if result.wait is None else min(result.wait, remaining)
        return ready

    def _observe(self, path: Path, size: int, mtime_ns: int, now: float) -> None:
        known = self._observed.get(path)
        if known is None or (known.size, known.mtime_ns) != (size, mtime_ns):
            self._observed[path] = _Observed(size, mtime_ns, now)

    def _quiet_for(self, path: Path, now: float) -> float:
        return now - self._observed[path].unchanged_since

    def _seconds_until_ready(self, video: Path, entries: dict, now: float) -> float:
        quiet = self.config.service.quiet_period
        video_wait = quiet - self._quiet_for(video, now)
        if video_wait > 0:
            return video_wait
        sidecar = sidecar_path_for(video)
        if sidecar in entries:
            return max(0.0, quiet - self._quiet_for(sidecar, now))
        # No sidecar yet: the grace period counts from the moment the video became stable.
        stable_for = self._quiet_for(video, now) - quiet
        return max(0.0, self.config.service.sidecar_grace - stable_for)

    def _forget_vanished(self, seen: set[Path]) -> None:
        for path in set(self._observed) - seen:
            del self._observed[path]
        self._hashes = {key: value for key, value in self._hashes.items() if key[0] in seen}

    # -- taking one video ------------------------------------------------------------------------------------

    def _take_safely(self, inbox: InboxConfig, video: Path, result: ScanResult) -> None:
        """A file that vanishes or cannot be moved mid-way (the user deleted or renamed it, permissions) must not
        stop the daemon: log it; the next scan sees the truth."""
        try:
            self._take(inbox, video, result)
        except OSError as err:
            log.warning("could not take %s (%s); will look again at the next scan", video, err)

    def _take(self, inbox: InboxConfig, video: Path, result: ScanResult) -> None:
        sidecar = sidecar_path_for(video)
        has_sidecar = sidecar.is_file()
        content_hash = self._content_hash(video)
        try:
            spec = self._spec(inbox, sidecar if has_sidecar else None)
        except BadInputError as err:
            result.failed.append(self._reject(inbox, video, sidecar, content_hash, err))
            return
        # The queue derives the dedupe key from these fields (hashing the mask and reference).
        job, created = enqueue_or_find(
            self.db,
            inbox=str(inbox.path),
            source_name=video.name,
            source_path=str(video),
            sidecar_path=str(sidecar) if has_sidecar else None,
            mask_path=_text(spec.mask_path),
            reference_path=_text(spec.reference_path),
            tasks=spec.tasks,
            options=spec.options,
            seed=spec.seed,
            content_hash=content_hash,
            max_attempts=self.config.service.max_attempts,
        )
        if created:
            log.info("queued job %d: %s (%s)", job.id, video, "with sidecar" if has_sidecar else "inbox defaults")
            result.enqueued.append(job)
        else:
            self._set_aside_duplicate(video, sidecar if has_sidecar else None, job)
            result.duplicates.append((video, job))

    def _spec(self, inbox: InboxConfig, sidecar: Path | None) -> JobSpec:
        if sidecar is None:
            return default_spec(inbox.tasks, inbox.options)
        return parse_sidecar(
            sidecar, inbox.path, default_tasks=inbox.tasks, default_options=inbox.options,
            allowed_options=self.allowed_options,
        )

    def _content_hash(self, path: Path) -> str:
        """sha256 of the file, cached per (path, size, mtime) so rescans never hash a file twice."""
        stat = path.stat()
        key = (path, stat.st_size, stat.st_mtime_ns)
        if key not in self._hashes:
            self._hashes[key] = file_sha256(path, still_alive=notify.still_busy)
        return self._hashes[key]

    def _set_aside_duplicate(self, video: Path, sidecar: Path | None, job: Job) -> None:
        """Same content and options as `job`: no second run. The file goes to done/ (nothing is deleted)."""
        moved = placement.move_input_to(self.config.output.done, [video, sidecar])
        verb = "restored" if job.state == JobState.DONE.value else f"{job.state} as"
        log.info("%s is a duplicate: already %s job %d; moved to %s", video, verb, job.id, moved[0])

    def _reject(self, inbox: InboxConfig, video: Path, sidecar: Path, content_hash: str, err: BadInputError) -> Job:
        """A bad sidecar: a failed job with the reason, the files together in failed/ with NAME.error.txt."""
        mask = self._mask_named_by(sidecar, inbox.path)
        job = insert_failed_job(
            self.db, err,
            inbox=str(inbox.path), source_name=video.name, source_path=str(video), sidecar_path=str(sidecar),
            mask_path=_text(mask), tasks=inbox.tasks, content_hash=content_hash,
            dedupe_key=dedupe_key_for(content_hash, inbox.tasks, inbox.options, DEFAULT_SEED),  # never blocks
            max_attempts=self.config.service.max_attempts,
        )
        moved = placement.move_input_to(self.config.output.failed, [video, sidecar, mask])
        placement.write_error_report(
            self.config.output.failed, moved[0].name,
            f"{err}\n\nsvfrd job {job.id}. The video and its sidecar were moved into this folder unchanged.",
        )
        paths = {"source_path": moved[0], "sidecar_path": moved[1]}
        if mask is not None:
            paths["mask_path"] = moved[2]
        log.warning("job %d failed: %s", job.id, err)
        return set_input_paths(self.db, job.id, **paths)

    def _mask_named_by(self, sidecar: Path, inbox: Path) -> Path | None:
        """The mask a rejected sidecar names, if it is plainly a file of this inbox (so it can travel with the
        video to failed/) and neither a waiting job nor another sidecar in the inbox uses it."""
        mask = _mask_in_sidecar(sidecar, inbox)
        if mask is None or mask.is_symlink() or not mask.is_file():
            return None
        if mask.suffix.lower() in VIDEO_SUFFIXES | {".toml"}:
            return None
        waiting = {JobState.QUEUED.value, JobState.RUNNING.value}
        if paths_owned_by_jobs(self.db, [str(mask)], waiting, column="mask_path"):
            return None
        others = [p for p in inbox.glob("*.toml") if p != sidecar]
        return None if any(_mask_in_sidecar(other, inbox) == mask for other in others) else mask


def _mask_in_sidecar(sidecar: Path, inbox: Path) -> Path | None:
    """The `mask` a sidecar names, read leniently (the sidecar may be broken); None unless it is a plain
    relative path."""
    try:
        value = tomllib.loads(sidecar.read_text(encoding="utf-8")).get("mask")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    if not isinstance(value, str) or not value or PurePosixPath(value).is_absolute() or ".." in value:
        return None
    return inbox / value


def _list_files(folder: Path) -> dict[Path, tuple[int, int]]:
    """Top-level regular files (symlinks followed) with (size, mtime_ns); dot-files and partial names skipped."""
    files: dict[Path, tuple[int, int]] = {}
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return files
    for entry in entries:
        if entry.name.startswith(".") or Path(entry.name).suffix.lower() in PARTIAL_SUFFIXES:
            continue
        try:
            if not entry.is_file():
                continue
            stat = entry.stat()
        except OSError:
            continue  # vanished between listing and stat
        files[Path(entry.path)] = (stat.st_size, stat.st_mtime_ns)
    return files


def _text(path: Path | None) -> str | None:
    return str(path) if path is not None else None
