"""What happens to a job's files once it ends: results published to the outbox, inputs moved to done/ or failed/.

Crash safety rests on one order and one record:

1. The pipeline writes every result under a temporary name that is unique to the job (`temp_files`).
2. Free final names are chosen (`plan_final_files`) and recorded in the job row (`output_path`, `report_path`)
   BEFORE anything is renamed. From then on the temporary files are never deleted, only published.
3. Each temporary file is renamed to its final name (fsync + rename, see `svfrd.files.placement.publish`).
4. Only then are the inputs moved to done/, and the job recorded as done.

A run interrupted anywhere after step 2 is completed by `complete_publication`: a final file whose temporary
file is gone was published by this job (the names were free when chosen, and no other unfinished job may plan a
name already planned, `svfrd.jobs.store.record_planned_results`), so nothing is produced twice; a temporary
file that is still there is published now. Before step 2 nothing was published, so the job simply runs again.

Several workers run jobs at once, and a worker may outlive its claim (its lease expired, the job runs again
elsewhere: docs/architecture.md, "Workers, claims and leases"). So temporary names carry the attempt's claim
token, and a worker passes its token (`claim_token`) to every step: the plan, each rename and the final record
check it first, and a worker whose claim is lost publishes nothing (ClaimLost).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator

from sqlalchemy import Engine

from svfrd.config import Config
from svfrd.errors import TransientError
from svfrd.files import beneath, placement
from svfrd.files.atomic import create_temp
from svfrd.files.names import CLAIM_TAG_CHARS
from svfrd.jobs.model import Job, JobState
from svfrd.jobs.store import (
    NameTaken,
    check_claim,
    done_jobs_with_key,
    fail_job,
    finish_job,
    get_job,
    input_needed_by_other_jobs,
    planned_names_of_other_jobs,
    record_planned_results,
    set_input_paths,
)
from svfrd.ops.logs import job_logger
from svfrd.service.report import reuse_report

VIDEO_SUFFIX = ".restored.mp4"
REPORT_SUFFIX = ".report.json"
PREVIEW_SUFFIX = ".preview.mp4"
CONTACT_SHEET_SUFFIX = ".contact.png"


@dataclass(frozen=True)
class ResultFiles:
    """The files one job produces. Previews are None when `[output] preview = false`."""

    video: Path
    report: Path
    preview: Path | None = None
    contact_sheet: Path | None = None

    def items(self) -> Iterator[tuple[str, Path]]:
        for f in fields(self):
            path = getattr(self, f.name)
            if path is not None:
                yield f.name, path


def _suffixes(preview: bool) -> dict[str, str | None]:
    return {
        "video": VIDEO_SUFFIX,
        "report": REPORT_SUFFIX,
        "preview": PREVIEW_SUFFIX if preview else None,
        "contact_sheet": CONTACT_SHEET_SUFFIX if preview else None,
    }


def _files_for_stem(folder: Path, stem: str, preview: bool) -> ResultFiles:
    paths = {kind: folder / (stem + suffix) if suffix else None for kind, suffix in _suffixes(preview).items()}
    return ResultFiles(**paths)


def source_stem(job: Job) -> str:
    return Path(job.source_name).stem


def temp_files(config: Config, job: Job) -> ResultFiles:
    """Temporary result paths in the outbox, unique to the job and its attempt: a later job for a video of the
    same name never touches the files of an interrupted one, nor a new attempt those of a worker that lost its
    claim. Once results are planned, the names are those of the attempt that planned them."""
    final = _files_for_stem(config.output.outbox, source_stem(job), config.output.preview)
    return ResultFiles(
        **{kind: placement.temp_output_path(config.output.outbox, f"{_attempt_prefix(job)}.{path.name}")
           for kind, path in final.items()}
    )


def _attempt_prefix(job: Job) -> str:
    token = job.plan_token if job.output_path else job.claim_token
    return f"job{job.id}-{token[:CLAIM_TAG_CHARS]}" if token else f"job{job.id}"


def plan_final_files(config: Config, job: Job, taken: frozenset[str] = frozenset()) -> ResultFiles:
    """Free final names for all results, sharing one stem (`clip`, else `clip-2`, ...) so they sort together.
    A stem whose video name is in `taken` (planned by another job, not yet on disk) is skipped."""
    suffixes = [suffix for suffix in _suffixes(config.output.preview).values() if suffix]
    folder = placement.mirror_folder(config.output.outbox, job.source_name)  # inbox/trip/a.mp4 -> outbox/trip
    folder.mkdir(parents=True, exist_ok=True)
    stem = placement.free_stem(folder, source_stem(job), suffixes,
                               skip=lambda candidate: str(folder / (candidate + VIDEO_SUFFIX)) in taken)
    if stem is not None:
        return _files_for_stem(folder, stem, config.output.preview)
    raise TransientError(f"the outbox {config.output.outbox} holds 10,000 results named like {job.source_name}; "
                         "move some away and the job will be retried")


def planned_final_files(config: Config, job: Job) -> ResultFiles | None:
    """The final names recorded in the job row by `record_plan`, or None if results were never planned."""
    if not job.output_path:
        return None
    video = Path(job.output_path)
    stem = video.name[: -len(VIDEO_SUFFIX)] if video.name.endswith(VIDEO_SUFFIX) else video.stem
    return _files_for_stem(video.parent, stem, config.output.preview)


def record_plan(db: Engine, job_id: int, finals: ResultFiles, frames: int, claim_token: str | None = None) -> Job:
    """Step 2 of the module docstring: the final names go into the job row before any rename. Returns the
    updated job. Raises ClaimLost when `claim_token` no longer holds the job, NameTaken when another job
    planned these names first (`plan_and_record` then chooses again)."""
    return record_planned_results(db, job_id, output_path=finals.video, report_path=finals.report, frames=frames,
                                  claim_token=claim_token)


#: Tries at planning names before giving up for now (each loses only to a job planning the same name).
PLAN_TRIES = 20


def plan_and_record(config: Config, db: Engine, job: Job, frames: int, claim_token: str | None = None,
                    before_record: Callable[[ResultFiles], None] = lambda finals: None) -> Job:
    """Choose free final names and record them (step 2), choosing again while another job planned the same
    names first: with several workers, jobs for videos of the same name may plan at the same moment.
    `before_record(finals)` writes what names the finals (the report) before they are recorded."""
    for _ in range(PLAN_TRIES):
        finals = plan_final_files(config, job, frozenset(planned_names_of_other_jobs(db, job.id)))
        before_record(finals)
        try:
            return record_plan(db, job.id, finals, frames, claim_token)
        except NameTaken:
            continue
    raise TransientError(f"other jobs kept taking the result names for {job.source_name}; the job will be retried")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write a result under its temporary name (`placement.publish` fsyncs it before giving it its final name),
    created new: never through a symlink planted on that predictable name."""
    with create_temp(path) as f:
        f.write((json.dumps(data, indent=2, default=str) + "\n").encode("utf-8"))


def remove_temp_files(config: Config, job: Job) -> None:
    """Drop a job's unpublished results (after a failure, cancel or interrupt before results were planned).
    Cleanup must never be what fails: a file that cannot be removed (or a name that cannot even be made) is
    logged and left; start-up clears stale temporary files from the outbox."""
    try:
        temps = [path for _, path in temp_files(config, job).items()]
    except Exception as err:  # noqa: BLE001
        job_logger(job.id).warning("could not name the temporary results to remove them: %s", err)
        return
    for path in temps:
        try:
            path.unlink(missing_ok=True)
            placement.remove_spool_folders(path)  # restored face crops of a killed run (svfrd.media.multiface)
        except Exception as err:  # noqa: BLE001
            job_logger(job.id).warning("could not remove the temporary result %s: %s", path.name, err)


def remove_temps_of_lost_attempt(config: Config, job: Job, claim_token: str) -> None:
    """The temporary results of the attempt that held `claim_token` and lost it (its lease expired, or it was
    found lost): removed, unless that attempt had planned them (`job.plan_token`: the job's next attempt
    publishes them, see the module docstring). `job` is the row as it is now."""
    if job.output_path and job.plan_token == claim_token:
        return
    remove_temp_files(config, job.model_copy(update={"claim_token": claim_token, "output_path": None}))


def results_are_recoverable(config: Config, job: Job) -> bool:
    """Whether a planned job's video is either published or still waiting as a temporary file."""
    finals = planned_final_files(config, job)
    if finals is None:
        return False
    return temp_files(config, job).video.exists() or finals.video.exists()


def publish_planned(config: Config, job: Job) -> ResultFiles:
    """Step 3: give every temporary file that is still there its planned final name."""
    finals = planned_final_files(config, job)
    assert finals is not None, "publish_planned needs a job whose results were planned"
    temps = dict(temp_files(config, job).items())
    published = {}
    for kind, final in finals.items():
        temp = temps.get(kind)
        if temp is not None and temp.exists():
            final = placement.publish(temp, final)
        published[kind] = final
    return ResultFiles(**published)


def complete_publication(config: Config, db: Engine, job: Job, engine_name: str | None = None,
                         claim_token: str | None = None) -> Job | None:
    """Steps 3 and 4 for a job whose results were planned: publish, move inputs, record done.
    Returns the finished job, or None when its results are gone (then the job must run again). With
    `claim_token`, the claim is checked before any rename and again in the transaction that records done
    (ClaimLost: nothing more is done)."""
    if not results_are_recoverable(config, job):
        return None
    logger = job_logger(job.id)
    check_claim(db, job.id, claim_token)
    finals = publish_planned(config, job)
    move_inputs(config, db, job, config.output.done)
    report = finals.report if finals.report.exists() else None
    finished = finish_job(db, job.id, engine=engine_name or job.engine or "unknown",
                          output_path=finals.video, report_path=report, claim_token=claim_token)
    logger.info("done: %s", finals.video.name)
    return finished


def input_files(job: Job) -> dict[str, Path]:
    """The job's input files that still lie where the row says, by column name. In the inbox, a file counts
    only if it is reached without passing a symlink (`svfrd.files.beneath`); a mask or reference also only
    while it is a plain file: one swapped for a link or a FIFO after intake is left where it is."""
    columns = ("source_path", "sidecar_path", "mask_path", "reference_path")
    paths = {name: Path(getattr(job, name)) for name in columns if getattr(job, name)}
    return {name: path for name, path in paths.items() if _still_there(job, name, path)}


def _still_there(job: Job, column: str, path: Path) -> bool:
    if not beneath.is_beneath(job.inbox, path):
        return os.path.lexists(path)  # already in done/ or failed/ (a retried job)
    if column in ("mask_path", "reference_path"):
        if beneath.is_plain_file_beneath(job.inbox, path):
            return True
        if os.path.lexists(path):
            job_logger(job.id).warning("%s is no longer a plain file reached without links inside the inbox; it is "
                                       "left where it is (the job used svfrd's own copy)", path)
        return False
    return beneath.lexists_beneath(job.inbox, path)  # a refused symlink too (moved itself, never its target)


def move_inputs(config: Config, db: Engine, job: Job, folder: Path) -> dict[str, Path]:
    """Move the video, sidecar, mask and reference to `folder` (done/ or failed/) together, and record their
    new places in the row. Never overwrites; files already in `folder` (a retried job that failed again) stay
    where they are (see `svfrd.files.placement.move_input_to`). The folder the video had under its inbox is
    kept (`placement.mirror_folder`). Files in the inbox are moved from folders opened without following any
    link. Returns the paths, by column."""
    folder = placement.mirror_folder(folder, job.source_name)
    to_move = {
        column: path for column, path in input_files(job).items()
        if not (column in ("mask_path", "reference_path") and input_needed_by_other_jobs(db, job.id, column, path))
    }
    if not to_move:
        return {}
    moved = dict(zip(to_move, placement.move_input_to(folder, list(to_move.values()), beneath=job.inbox)))
    set_input_paths(db, job.id, **moved)
    return moved


def error_report_text(job: Job, message: str) -> str:
    """The body of NAME.error.txt (`placement.write_error_report` adds the first line)."""
    return (
        f"{message}\n\n"
        f"svfrd job {job.id}. The input files were moved into this folder unchanged. Fix the problem and drop "
        f"the video into an inbox again, or run `svfrd retry {job.id}` to run the job once more on the files "
        "here."
    )


def settle_failure(config: Config, db: Engine, job_id: int, error: BaseException,
                   claim_token: str | None = None) -> Job:
    """Record a failure; a job failed for good gets its inputs moved to failed/ beside NAME.error.txt.
    Transient failures leave the inputs in the inbox for the retry. With `claim_token`: only while that
    claim holds (else ClaimLost)."""
    job = fail_job(db, job_id, error, retry_backoff=config.service.retry_backoff, claim_token=claim_token)
    if job.state == JobState.FAILED.value:
        job = file_failed_inputs(config, db, job, job.error_message or str(error))
    return job


def file_failed_inputs(config: Config, db: Engine, job: Job, message: str) -> Job:
    """A job failed for good, whatever the cause: its inputs go to failed/ beside NAME.error.txt saying why.
    Returns the row with the inputs' new places."""
    moved = move_inputs(config, db, job, config.output.failed)
    name = moved["source_path"].name if "source_path" in moved else Path(job.source_name).name
    folder = placement.mirror_folder(config.output.failed, job.source_name)
    placement.write_error_report(folder, name, error_report_text(job, message))
    return get_job(db, job.id) or job


# ---------------------------------------------------------------------------------------------------------------
# Reusing an earlier job's results (a duplicate: the same content with the same options).


def publish_reused_results(config: Config, db: Engine, job: Job, claim_token: str | None = None) -> bool:
    """Dedupe saves GPU time, never a user's output: when a done job with the same content and options still
    has its restored video, this job's results are that job's files (hard links, or copies) and a report that
    names the job it reuses, published by the same crash-safe steps as a restoration (module docstring).
    False when there is nothing to reuse: then the job restores its video itself."""
    earlier = _reusable_job(config, db, job)
    if earlier is None:
        return False
    earlier_files = planned_final_files(config, earlier)
    temps = temp_files(config, job)
    linked = []
    for kind, temp in temps.items():
        source = getattr(earlier_files, kind)
        if kind != "report" and source is not None and source.is_file():
            placement.link_or_copy(source, temp)
            linked.append(kind)

    def write_report(finals: ResultFiles) -> None:
        outputs = {kind: getattr(finals, kind).name for kind in linked}
        temps.report.unlink(missing_ok=True)  # written again when another job took the names first
        write_json(temps.report, reuse_report(earlier, read_report(earlier), job, outputs))

    planned = plan_and_record(config, db, job, earlier.frames_total or 0, claim_token, write_report)
    job_logger(job.id).info("%s has the same content and options as job %d: its results are reused, not restored "
                            "again", job.source_name, earlier.id)
    return complete_publication(config, db, planned, earlier.engine, claim_token) is not None


def _reusable_job(config: Config, db: Engine, job: Job) -> Job | None:
    """The newest done job with this job's dedupe key whose restored video is still there."""
    for earlier in done_jobs_with_key(db, job.dedupe_key, exclude_id=job.id):
        if earlier.output_path and Path(earlier.output_path).is_file():
            return earlier
    return None


def read_report(job: Job) -> dict[str, Any]:
    """A done job's NAME.report.json, or {} when it was deleted or cannot be read."""
    try:
        report = json.loads(Path(job.report_path).read_text(encoding="utf-8")) if job.report_path else {}
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}
