"""NAME.report.json: one flat record of what was done to which file, by which engine, how long it took, and
what to watch. Built here and nowhere else; the README's "The job report" table documents every field.

The schema is flat and says each fact once: no field repeats at another level, tasks appear once (as labels),
the options once (as applied). `schema` is an integer that grows when a field changes meaning or goes away;
adding a field does not change it, so readers should ignore fields they do not know.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from svfrd.jobs.model import Job, as_utc, utcnow

if TYPE_CHECKING:  # the media stack is imported only by the worker, never by `svfrd status`
    from svfrd.media.pipeline import PipelineResult
    from svfrd.service.results import ResultFiles

#: The version of the report's layout.
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Attempts:
    """How often the job was started before this run ended it: runs that failed because of the job itself
    (counted against `[service] max_attempts`), and runs cut short by the service's own death (a crash, a
    power loss), counted apart under their own, more generous limit."""

    job_failures: int = 0
    service_interruptions: int = 0


@dataclass(frozen=True)
class JobReport:
    """The fields of NAME.report.json, in the order written. See the README's table for what each means."""

    job_id: int
    source: str
    inbox: str
    tasks: list[str]
    seed: int
    engine: str
    options: dict[str, Any]
    attempt: int
    attempts: Attempts
    reuses_job: int | None
    frames: int
    frames_with_face: int
    fps: str
    duration_s: float
    rotation: int
    audio_streams: int
    frame_size: dict[str, Any]
    mask: str | None
    reference_face: str | None
    face_tracking: dict[str, Any]
    crop_jitter: dict[str, Any]
    outputs: dict[str, str]
    warnings: list[str]
    timings: dict[str, Any]
    #: How the engine ran this job, for engines that say (`details()`): SVFR names its memory tier there.
    engine_details: dict[str, Any] = field(default_factory=dict)
    #: Whether this run went on from an earlier, interrupted run's checkpoints (docs/architecture.md,
    #: "Resume"): None if it started from the beginning, else from which frame, and what it reused.
    resume: dict[str, Any] | None = None
    schema: int = field(default=SCHEMA_VERSION)

    def to_json(self) -> dict[str, Any]:
        """The JSON object, `schema` first."""
        data = asdict(self)
        return {"schema": data.pop("schema"), **data}


def build_report(
    job: Job,
    engine_name: str,
    result: PipelineResult,
    finals: ResultFiles,
    stages: Mapping[str, float],
    seconds: float,
    engine_details: Mapping[str, Any] | None = None,
) -> JobReport:
    """The report of a job that just ran: `stages` are the seconds per progress stage (the worker's
    JobProgress.timings()), `seconds` the wall-clock time of the whole run."""
    media = result.media
    return JobReport(
        job_id=job.id,
        source=job.source_name,
        inbox=job.inbox,
        tasks=job.task_labels,
        seed=job.seed,
        engine=engine_name,
        options={**json.loads(job.options_json or "{}"), **media.options},
        attempt=job.attempts + 1,
        attempts=Attempts(job_failures=job.attempts, service_interruptions=job.service_interruptions),
        reuses_job=None,
        frames=result.frames,
        frames_with_face=media.frames_with_face,
        fps=media.fps,
        duration_s=media.duration_s,
        rotation=media.rotation,
        audio_streams=media.audio_streams,
        frame_size=dict(media.frame_size),
        mask=media.mask,
        reference_face=_file_name(job.reference_path),
        face_tracking=media.face_tracking,
        crop_jitter=media.crop_jitter,
        outputs={kind: path.name for kind, path in finals.items() if kind != "report"},
        warnings=list(result.warnings),
        timings={
            "queued_at": _moment(job.created_at),
            "started_at": _moment(job.started_at),
            "finished_at": _moment(utcnow()),
            "seconds": round(seconds, 3),
            "frames_per_second": round(result.frames / seconds, 2) if seconds > 0 else None,
            "stages": dict(stages),
        },
        engine_details=dict(engine_details or {}),
        resume=dict(result.resume) if getattr(result, "resume", None) else None,
    )


def _file_name(path: str | None) -> str | None:
    return Path(path).name if path else None


def _moment(moment: datetime | None) -> str | None:
    """An ISO 8601 UTC time, e.g. 2026-12-04T13:33:32.123456+00:00."""
    moment = as_utc(moment)
    return moment.isoformat() if moment else None


def reuse_report(
    earlier: Job, earlier_report: Mapping[str, Any], job: Job, outputs: Mapping[str, str]
) -> dict[str, Any]:
    """The report of an input with the same content and options as an `earlier` job, whose result it reuses:
    the earlier report (what was done, by which engine, how long it took) under this job's identity and output
    names, with `reuses_job` naming the job that did the work. An earlier report that was deleted or cannot be
    read (`earlier_report` empty) leaves only these fields and a warning saying so."""
    report = {
        "schema": SCHEMA_VERSION,
        **earlier_report,
        "job_id": job.id,
        "source": job.source_name,
        "inbox": job.inbox,
        "reuses_job": earlier_report.get("reuses_job") or earlier.id,
        "outputs": dict(outputs),
    }
    if not earlier_report:
        report["warnings"] = [f"the report of job {earlier.id} ({earlier.report_path}) was gone or unreadable, "
                              "so this report says only whose results were reused"]
    return report
