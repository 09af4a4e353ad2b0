"""Intake: turns complete videos in the inbox folders into jobs.

The scan is the truth: `Intake.scan` lists every inbox with `os.scandir` and compares it with what it saw before
and with the database. File events (watchdog) are only a hint that makes the daemon scan sooner; inotify misses
events on network mounts and drops them on overflow, a rescan never does.

Where each concern lives:

- listing, folders dropped into an inbox (`_list_inbox`, `_list_entry`): with `recursive = true`, the default,
  `inbox/trip/a.mp4` is recorded with the source name `trip/a.mp4` (`relative_name`), and its results, done/
  and failed/ copies keep that folder (`svfrd.files.placement.mirror_folder`). Its sidecar and mask sit beside
  it in `trip/`. The output and state folders are never entered.
- complete or not (`_ready_inputs`, `svfrd.service.stability`): hidden and partial names are ignored, and a
  video's size and mtime must stay the same for `quiet_period`; a video without `NAME.toml` waits
  `sidecar_grace` more.
- symbolic links (`_list_link`, `_refuse_link`): not followed. A linked folder, or a linked video unless the
  inbox says `follow_symlinks = true`, is a failed job that asks for a copy, and the link itself (never its
  target) goes to failed/. A link must not make the service read a file the person who dropped it could not
  give it.
- taking a video (`_take`, `_spec`): its sidecar is checked (`svfrd.service.sidecar`) and a job is queued. A
  bad sidecar makes a failed job at once (`_reject`, `_record_failure`), its files moved to failed/ beside
  `NAME.error.txt`.
- paths (`svfrd.files.beneath`, docs/architecture.md "Paths from an inbox"): the sidecar (at most 16 KiB),
  mask, reference and the video's hash are opened beneath the inbox with no symlink in any part of the path,
  plain files only (a FIFO is refused, never waited on); moves to failed/ go by name from folders opened that
  way. Masks and references are kept as private copies (`svfrd.service.input_copies`, `_keep_copies`) that
  the worker uses; copies no waiting job needs are removed at each scan. The mask a refused sidecar names
  goes along to failed/ only when it is a plain file reached without links (`_mask_named_by`); the other
  sidecars of its folder are read once per scan to see whether they share it (`_masks_named_in`).
- duplicates (`_take`): a video whose content and options match an earlier job still gets its own job; when
  its turn comes the worker publishes the earlier job's results under its name instead of restoring again
  (`svfrd.service.worker`), so dedupe saves GPU time but never a result. The worker also re-hashes a video
  when its job starts: one overwritten while its job waited becomes a new job.

Files stay in the inbox while their job is queued or running; the worker moves them to done/ or failed/. So a
file that is the source of a queued, running, failed or cancelled job is left alone here (`OWNED_BY_JOB_STATES`).
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from sqlalchemy import Engine

from svfrd.config import Config, InboxConfig
from svfrd.domain import DEFAULT_SEED
from svfrd.errors import BadInputError
from svfrd.files import beneath, names, placement
from svfrd.files.hashing import file_sha256
from svfrd.jobs.model import Job, JobState
from svfrd.jobs.store import (
    dedupe_key_for,
    enqueue_input_unless_owned,
    forget_unfiled_failure,
    insert_failed_job,
    paths_owned_by_jobs,
    set_input_paths,
)
from svfrd.ops import notify
from svfrd.service import input_copies
from svfrd.service.sidecar import (
    MAX_SIDECAR_BYTES,
    JobSpec,
    UnreadableSidecar,
    default_spec,
    parse_sidecar,
    sidecar_path_for,
    sidecar_toml,
)
from svfrd.service.stability import MonotonicSeconds, Signature, StabilityTracker

log = logging.getLogger("svfrd.service.intake")

VIDEO_SUFFIXES = frozenset(
    {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".wmv", ".flv",
     ".3gp"}
)
#: Seconds between watchdog keep-alives while one scan takes file after file.
ALIVE_SPACING = 1.0
PARTIAL_SUFFIXES = frozenset({".part", ".tmp", ".crdownload", ".partial", ".download"})

#: A file that is the source of a job in these states is the job's business, not intake's.
OWNED_BY_JOB_STATES = frozenset(
    {JobState.QUEUED.value, JobState.RUNNING.value, JobState.FAILED.value, JobState.CANCELLED.value}
)


def is_candidate_video(name: str) -> bool:
    """A visible name (no dot-file, no `~` editor/lock file) ending in a video container suffix; partial
    names (`clip.mp4.part`) end in their partial suffix, so they never match."""
    return not name.startswith((".", "~")) and Path(name).suffix.lower() in VIDEO_SUFFIXES


def is_ignored_name(name: str) -> bool:
    """Hidden files and folders, and downloads still in progress, are not looked at."""
    return name.startswith(".") or Path(name).suffix.lower() in PARTIAL_SUFFIXES


def relative_name(inbox: Path, path: Path) -> str:
    """The name a job records for its source: its path under the inbox, `trip/a.mp4` (POSIX separators)."""
    return path.relative_to(inbox).as_posix()


@dataclass
class InboxListing:
    """What one scan found in an inbox: files with their (size, mtime), and links that are not followed."""

    files: dict[Path, Signature] = field(default_factory=dict)
    links: dict[Path, Signature] = field(default_factory=dict)


@dataclass
class ScanResult:
    """What one scan did (for tests and logs) and how soon another scan is worth it."""

    enqueued: list[Job] = field(default_factory=list)
    failed: list[Job] = field(default_factory=list)
    #: (new job, earlier job with the same content and options): the new job will reuse the earlier results.
    duplicates: list[tuple[Job, Job]] = field(default_factory=list)
    #: Seconds until a waiting file may be ready (quiet period or sidecar grace running), None if none waits.
    wait: float | None = None


class Intake:
    def __init__(
        self,
        config: Config,
        db: Engine,
        on_hint: Callable[[], None] | None = None,
        clock: MonotonicSeconds = time.monotonic,
    ):
        """`on_hint` is called (from the watchdog thread) when a file event suggests scanning sooner."""
        self.config, self.db = config, db
        self._on_hint = on_hint
        self._hinted = threading.Event()
        self.clock = clock
        self.stability = StabilityTracker(config.service.quiet_period, config.service.sidecar_grace, clock)
        self._hashes: dict[tuple[Path, int, int], str] = {}
        # Per scan: folder -> {sidecar: the mask it names}, read only when a sidecar there is rejected.
        self._masks_by_folder: dict[Path, dict[Path, Path | None]] = {}
        self._observer = None
        self._alive_sent = -math.inf
        self._logged: set[tuple[Path, str]] = set()
        # Folders a recursive scan must not enter: results or failed inputs would come back as new jobs.
        self._not_inputs = frozenset(
            [config.output.outbox, config.output.done, config.output.failed, config.service.state_dir]
            + [inbox.path for inbox in config.inboxes]
        )

    # -- watching (a hint only) ------------------------------------------------------------------------------

    def start(self) -> None:
        """Create the inboxes and watch them with a watchdog observer. The first event after a scan calls
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
                if intake._on_hint is not None:
                    intake._on_hint()

        self._observer = Observer()
        for inbox in self.config.inboxes:
            inbox.path.mkdir(parents=True, exist_ok=True)
            self._observer.schedule(Hint(), str(inbox.path), recursive=inbox.recursive)
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
        """List every inbox, then take (or refuse) each input that is ready and not already a job's."""
        self._hinted.clear()
        self._masks_by_folder = {}
        input_copies.remove_unused(self.db, self.config.service.state_dir)
        result = ScanResult()
        listings = [(inbox, self._list_inbox(inbox)) for inbox in self.config.inboxes]
        everything = {path: sig for _, listing in listings for path, sig in {**listing.files, **listing.links}.items()}
        self.stability.observe(everything)
        self._hashes = {key: value for key, value in self._hashes.items() if key[0] in everything}
        self._logged = {key for key in self._logged if key[0] in everything}
        for inbox, listing in listings:
            ready = self._ready_inputs(listing, result)
            owned = paths_owned_by_jobs(self.db, [str(p) for p in ready], OWNED_BY_JOB_STATES)
            for path in ready:
                if str(path) in owned:
                    continue
                if self._name_problem(path) is not None:
                    self._safely(self._refuse_long_name, inbox, path, result)
                elif path in listing.links:
                    self._safely(self._refuse_link, inbox, path, result)
                else:
                    self._safely(self._take, inbox, path, result)
                self._show_alive()
        return result

    def _show_alive(self) -> None:
        """A scan that takes many files (each parsed, hashed, recorded) must not look hung to systemd's
        watchdog: keep-alives between files, at most once a second. (Only the keep-alive: asking for more
        start-up time here would read as asking for more stopping time once the daemon stops.)"""
        now = self.clock()
        if now - self._alive_sent >= ALIVE_SPACING:
            notify.watchdog()
            self._alive_sent = now

    def _list_inbox(self, inbox: InboxConfig) -> InboxListing:
        """Every input file of the inbox (with its subfolders when `recursive`), without following links."""
        listing = InboxListing()
        folders = [inbox.path]
        while folders:
            folder = folders.pop()
            try:
                entries = list(os.scandir(folder))
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed since it was listed
            for entry in entries:
                if not is_ignored_name(entry.name):
                    try:
                        self._list_entry(inbox, entry, listing, folders)
                    except OSError:
                        continue  # vanished between listing and stat
        return listing

    def _list_entry(self, inbox: InboxConfig, entry: os.DirEntry, listing: InboxListing, folders: list[Path]) -> None:
        path = Path(entry.path)
        if entry.is_symlink():
            self._list_link(inbox, path, listing)
        elif entry.is_dir(follow_symlinks=False):
            if inbox.recursive and path not in self._not_inputs:
                folders.append(path)
        elif entry.is_file(follow_symlinks=False):
            stat = entry.stat(follow_symlinks=False)
            listing.files[path] = (stat.st_size, stat.st_mtime_ns)

    @staticmethod
    def _list_link(inbox: InboxConfig, path: Path, listing: InboxListing) -> None:
        """A linked video (or, in a recursive inbox, a linked folder) is refused; other links (a mask that
        a sidecar names, say) are left for the sidecar check. Only stat is used: a link's target is never
        opened here."""
        if path.is_dir():
            if inbox.recursive:
                listing.links[path] = _link_signature(path)
        elif is_candidate_video(path.name):
            if inbox.follow_symlinks and path.is_file():
                stat = path.stat()
                listing.files[path] = (stat.st_size, stat.st_mtime_ns)
            else:
                listing.links[path] = _link_signature(path)

    def _ready_inputs(self, listing: InboxListing, result: ScanResult) -> list[Path]:
        """Videos and refused links that are complete and whose sidecar question is settled, sorted."""
        ready = []
        candidates = [p for p in listing.files if is_candidate_video(p.name)] + list(listing.links)
        for path in sorted(candidates):
            sidecar = sidecar_path_for(path)
            remaining = self.stability.seconds_until_ready(path, sidecar if sidecar in listing.files else None)
            if remaining <= 0:
                ready.append(path)
            else:
                result.wait = remaining if result.wait is None else min(result.wait, remaining)
        return ready

    # -- taking one video ------------------------------------------------------------------------------------

    def _safely(self, action: Callable[[InboxConfig, Path, ScanResult], None], inbox: InboxConfig, path: Path,
                result: ScanResult) -> None:
        """No file may stop the scan. A file that vanishes or cannot be moved mid-way (the user deleted or
        renamed it, permissions: an OSError) is not its fault: log it; the next scan sees the truth. Any other
        error is the file's (a parser or image library giving up on it): the file is refused with a note, like
        any bad input, and the scan goes on with the next one."""
        try:
            action(inbox, path, result)
        except OSError as err:
            self._log_once(logging.WARNING, "could not take %s (%s); will look again at the next scan", path, err)
        except BadInputError as err:  # the file's own fault, already said for people (e.g. a linked folder)
            self._refuse_after_error(inbox, path, result, err)
        except Exception as err:  # noqa: BLE001 - whatever a hostile file makes a library raise
            self._log_once(logging.ERROR, "could not take %s; it is refused (%s)", path, err, exc_info=True)
            self._refuse_after_error(inbox, path, result, err)

    def _log_once(self, level: int, message: str, path: Path, err: BaseException | str,
                  exc_info: bool = False) -> None:
        """The same trouble with the same file is logged at its first scan, not at every scan after. A
        traceback goes as `exc_info`, whose lines the log formatter keeps (inside the message they would be
        escaped into one line, `svfrd.ops.logs`)."""
        key = (path, str(err))
        if key not in self._logged:
            self._logged.add(key)
            log.log(level, message, path, err, exc_info=exc_info)

    def _refuse_after_error(self, inbox: InboxConfig, path: Path, result: ScanResult, err: Exception) -> None:
        """A failed job for a file intake could not take, its files in failed/ with a note saying why.
        Should that fail too, the file is left where it is, logged once."""
        refusal = err if isinstance(err, BadInputError) else BadInputError(
            f"svfrd could not take {relative_name(inbox.path, path)}: {type(err).__name__}: {err}. The file may be "
            "damaged; if it is not, this is a bug in svfrd, and the service log has the details to report it")
        try:
            result.failed.append(self._record_failure(
                inbox, path, _plain_sidecar_of(path), None, self._hash_or_marker(inbox, path), refusal,
                "The video and its sidecar (if any) were moved into this folder unchanged."))
        except Exception as second:  # noqa: BLE001 - the scan goes on whatever happens
            self._log_once(logging.ERROR, "could not move %s to failed/ either (%s); it is left where it is",
                           path, second)

    def _hash_or_marker(self, inbox: InboxConfig, path: Path) -> str:
        """The content hash when the file can be read, else a marker that never matches a real hash."""
        try:
            return self._content_hash(inbox, path)
        except (OSError, BadInputError):
            return hashlib.sha256(f"unreadable:{path}".encode()).hexdigest()

    # -- names too long to handle ----------------------------------------------------------------------------

    def _name_problem(self, video: Path) -> str | None:
        """Why the names derived from this video's name would not fit the output folders (svfrd.files.names)."""
        output = self.config.output
        limit = names.name_limit([output.outbox, output.done, output.failed])
        return names.derived_name_problem(video.name, limit)

    def _refuse_long_name(self, inbox: InboxConfig, video: Path, result: ScanResult) -> None:
        """A failed job for a video whose derived names would be too long; it moves to failed/ (with its
        sidecar) under a shortened name, beside a note under that name too."""
        err = BadInputError(f"{relative_name(inbox.path, video)}: {self._name_problem(video)}, and drop it into an "
                            "inbox again")
        short = names.shortened_name(video.name)
        result.failed.append(self._record_failure(
            inbox, video, _plain_sidecar_of(video), None, self._hash_or_marker(inbox, video), err,
            "The video was moved into this folder as {name}, its sidecar (if any) beside it.", as_name=short))

    def _take(self, inbox: InboxConfig, video: Path, result: ScanResult) -> None:
        sidecar = sidecar_path_for(video)
        has_sidecar = os.path.lexists(sidecar)  # a link or FIFO under that name is refused, not ignored
        content_hash = self._content_hash(inbox, video)
        try:
            spec = self._spec(inbox, video, sidecar if has_sidecar else None)
            _check_extra_names(spec)
        except BadInputError as err:
            result.failed.append(self._reject(inbox, video, sidecar, content_hash, err))
            return
        copies = self._keep_copies(spec)
        # The store derives the dedupe key from these fields (hashing the private copies of mask and reference).
        queued = enqueue_input_unless_owned(
            self.db,
            OWNED_BY_JOB_STATES,
            lambda: beneath.lexists_beneath(inbox.path, video),
            inbox=str(inbox.path),
            source_name=relative_name(inbox.path, video),
            source_path=str(video),
            sidecar_path=str(sidecar) if has_sidecar else None,
            mask_path=_text(spec.mask_path),
            reference_path=_text(spec.reference_path),
            **copies,
            tasks=spec.tasks,
            options=spec.options,
            seed=spec.seed,
            priority=spec.priority,
            content_hash=content_hash,
            max_attempts=self.config.service.max_attempts,
        )
        if queued is None:
            log.debug("%s is already a job's: another daemon sharing this inbox queued it first", video)
            return
        job, earlier = queued
        if earlier is None:
            log.info("queued job %d: %s (%s)", job.id, video, "with sidecar" if has_sidecar else "inbox defaults")
            result.enqueued.append(job)
        else:
            log.info("queued job %d: %s has the same content and options as job %d (%s), whose results it will "
                     "reuse instead of restoring again", job.id, video, earlier.id, earlier.state)
            result.duplicates.append((job, earlier))

    def _spec(self, inbox: InboxConfig, video: Path, sidecar: Path | None) -> JobSpec:
        """The job the sidecar asks for. The sidecar, mask and reference are opened beneath the inbox: no link
        in any part of their paths, plain files only (`svfrd.files.beneath`)."""
        if sidecar is None:
            return default_spec(inbox.tasks, inbox.options, inbox.priority)
        if sidecar.is_symlink():
            raise BadInputError(f"sidecar {sidecar.name} is a symbolic link; svfrd does not follow links in an "
                                f"inbox. Copy the file itself in beside {video.name}.")
        with beneath.open_plain_file(inbox.path, sidecar) as content:
            # Masks and references are named relative to the video's own folder and may not leave it.
            return parse_sidecar(
                content, video.parent, name=sidecar.name, inbox=inbox.path, default_tasks=inbox.tasks,
                default_options=inbox.options, allowed_options=self.config.engine.option_names,
                default_priority=inbox.priority, max_mask_pixels=self.config.limits.max_mask_pixels,
            )

    def _keep_copies(self, spec: JobSpec) -> dict[str, str | None]:
        """The private copies of the images the spec checked: the worker reads these, never the inbox files."""
        state_dir = self.config.service.state_dir
        return {
            "mask_copy": _text(input_copies.keep_copy(state_dir, spec.mask_data, "mask")
                               if spec.mask_data is not None else None),
            "reference_copy": _text(input_copies.keep_copy(state_dir, spec.reference_data, "reference")
                                    if spec.reference_data is not None else None),
        }

    def _content_hash(self, inbox: InboxConfig, path: Path) -> str:
        """sha256 of the file, cached per (path, size, mtime) so rescans never hash a file twice. Opened
        beneath the inbox (a video swapped for a FIFO must not block the scan); the video itself may be a link
        only in an inbox that chose to follow them (`follow_symlinks`): a file swapped for a link after it was
        listed is refused, not followed."""
        stat = path.stat()
        key = (path, stat.st_size, stat.st_mtime_ns)
        if key not in self._hashes:
            with beneath.open_plain_file(inbox.path, path, follow_last_link=inbox.follow_symlinks) as f:
                self._hashes[key] = file_sha256(f, still_alive=notify.still_busy)
        return self._hashes[key]

    def _reject(self, inbox: InboxConfig, video: Path, sidecar: Path, content_hash: str, err: BadInputError) -> Job:
        """A bad sidecar: a failed job with the reason, the files together in failed/ with NAME.error.txt."""
        mask = None if sidecar.is_symlink() else self._mask_named_by(inbox, sidecar)
        self._masks_by_folder.get(sidecar.parent, {}).pop(sidecar, None)  # it leaves the folder now
        return self._record_failure(inbox, video, sidecar, mask, content_hash, err,
                                    "The video and its sidecar were moved into this folder unchanged.")

    def _refuse_link(self, inbox: InboxConfig, link: Path, result: ScanResult) -> None:
        """A symbolic link in the inbox: a failed job that says to copy the file in; the link itself moves."""
        target = os.readlink(link)
        what = "folder" if link.is_dir() else "file"
        err = BadInputError(
            f"{relative_name(inbox.path, link)} is a symbolic link to {target}, and svfrd does not follow links "
            f"in an inbox (a link could make the service read a file that was not given to it). Copy the {what} "
            "itself into the inbox (e.g. `cp -L`)."
        )
        sidecar = _plain_sidecar_of(link) if is_candidate_video(link.name) else None
        link_hash = hashlib.sha256(f"symlink:{target}".encode()).hexdigest()  # the target is never read
        result.failed.append(self._record_failure(inbox, link, sidecar, None, link_hash, err,
                                                  "The link itself (not its target) was moved into this folder."))

    def _record_failure(self, inbox: InboxConfig, video: Path, sidecar: Path | None, mask: Path | None,
                        content_hash: str, err: BadInputError, moved_note: str, as_name: str | None = None) -> Job:
        """A failed job for `video`, its files moved together to failed/ beside NAME.error.txt. `as_name`: the
        video's name there (its sidecar follows it), for a name too long to keep; `{name}` in `moved_note`
        becomes the name the video got."""
        source_name = relative_name(inbox.path, video)
        job = insert_failed_job(
            self.db, err,
            inbox=str(inbox.path), source_name=source_name, source_path=str(video), sidecar_path=_text(sidecar),
            mask_path=_text(mask), tasks=inbox.tasks, content_hash=content_hash,
            dedupe_key=dedupe_key_for(content_hash, inbox.tasks, inbox.options, DEFAULT_SEED),  # never blocks
            max_attempts=self.config.service.max_attempts,
        )
        failed_folder = placement.mirror_folder(self.config.output.failed, source_name)
        inputs = {"source_path": video, "sidecar_path": sidecar, "mask_path": mask}
        present = {column: path for column, path in inputs.items() if path is not None}
        wanted = None
        if as_name is not None:
            renamed = {"source_path": as_name, "sidecar_path": sidecar_path_for(Path(as_name)).name}
            wanted = [renamed.get(column, path.name) for column, path in present.items()]
        with self._forgotten_unless_moved(job):
            moved = dict(zip(present, placement.move_input_to(failed_folder, list(present.values()),
                                                              beneath=inbox.path, names=wanted)))
        job = set_input_paths(self.db, job.id, **moved)
        placement.write_error_report(failed_folder, moved["source_path"].name,
                                     f"{err}\n\nsvfrd job {job.id}. "
                                     + moved_note.replace("{name}", moved["source_path"].name))
        log.warning("job %d failed: %s", job.id, err)
        return job

    @contextmanager
    def _forgotten_unless_moved(self, job: Job) -> Iterator[None]:
        """A failed row whose files could not be moved to failed/ is removed again, so the file is one failure
        (or one retry at the next scan), never two rows or a row that leaves the file in the inbox for good."""
        try:
            yield
        except BaseException:
            forget_unfiled_failure(self.db, job.id)
            raise

    def _mask_named_by(self, inbox: InboxConfig, sidecar: Path) -> Path | None:
        """The mask a rejected sidecar names, if it is a plain file reached beneath the inbox without any link
        (so it can travel with the video to failed/) and neither a waiting job nor another sidecar there uses
        it. A link anywhere on its way (`inbox/st -> ../state`, `mask = "st/svfrd.db"`) leaves it alone."""
        masks = self._masks_named_in(inbox, sidecar.parent)
        mask = masks.get(sidecar)
        if mask is None or mask.suffix.lower() in VIDEO_SUFFIXES | {".toml"}:
            return None
        if not beneath.is_plain_file_beneath(inbox.path, mask):
            return None
        waiting = {JobState.QUEUED.value, JobState.RUNNING.value}
        if paths_owned_by_jobs(self.db, [str(mask)], waiting, column="mask_path"):
            return None
        return None if any(m == mask for other, m in masks.items() if other != sidecar) else mask

    def _masks_named_in(self, inbox: InboxConfig, folder: Path) -> dict[Path, Path | None]:
        """The mask each sidecar of `folder` names, each sidecar read once per scan (a folder of 2000 sidecars
        must not be parsed again for every rejected one), and only plain files, capped like any sidecar."""
        if folder not in self._masks_by_folder:
            try:
                with os.scandir(folder) as entries:
                    sidecars = [Path(e.path) for e in entries
                                if e.name.endswith(".toml") and e.is_file(follow_symlinks=False)]
            except OSError:
                sidecars = []
            self._masks_by_folder[folder] = {s: _mask_in_sidecar(inbox, s) for s in sidecars}
        return self._masks_by_folder[folder]


def _mask_in_sidecar(inbox: InboxConfig, sidecar: Path) -> Path | None:
    """The `mask` a sidecar names, read leniently (the sidecar may be broken) but safely (beneath the inbox,
    capped); None unless it is a plain relative path."""
    try:
        content = beneath.read_plain_file(inbox.path, sidecar, MAX_SIDECAR_BYTES)
        value = sidecar_toml(content).get("mask")  # within the sidecar limits: it may be hostile
    except (OSError, BadInputError, UnreadableSidecar):
        return None
    if not isinstance(value, str) or not value:
        return None
    if PurePosixPath(value).is_absolute() or ".." in PurePosixPath(value).parts:
        return None
    return sidecar.parent / value


def _check_extra_names(spec: JobSpec) -> None:
    """A mask or reference travels to done/ or failed/ with the video; its numbered names must fit too."""
    for what, path in (("mask", spec.mask_path), ("reference", spec.reference_path)):
        problem = None if path is None else names.derived_name_problem(path.name, extra=True)
        if problem is not None:
            raise BadInputError(f"the {what} {path.name}: {problem}, and name it so in the sidecar")


def _plain_sidecar_of(video: Path) -> Path | None:
    """`NAME.toml` beside `video` when it is a plain file there (not a link), else None."""
    sidecar = sidecar_path_for(video)
    return sidecar if sidecar.is_file() and not sidecar.is_symlink() else None


def _link_signature(link: Path) -> Signature:
    stat = link.lstat()
    return (stat.st_size, stat.st_mtime_ns)


def _text(path: Path | None) -> str | None:
    return str(path) if path is not None else None
