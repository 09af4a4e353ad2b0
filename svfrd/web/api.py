"""The JSON API (stable; documented in the README, "Web page"); the pages use it too.

Jobs are looked up by their id only. The files served are the ones the job row records (`output_path`,
`report_path` and the previews named with them), and each is served only when it lies in the outbox (the
source video: in done/) as a plain file: no part of a request becomes a path (docs/architecture.md §5). The
file is opened once, walking down from the outbox without following any link (svfrd.files.beneath), and the
response reads that very descriptor: a link planted in the outbox after the check cannot redirect it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, AsyncIterator

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse

from svfrd.errors import BadInputError
from svfrd.files import beneath
from svfrd.jobs.model import Job, as_utc, utcnow
from svfrd.jobs.store import (
    JobNotFound,
    QueueError,
    get_job,
    job_for_source,
    jobs_updated_since,
    latest_job_id,
    list_jobs,
    request_cancel,
    retry_job,
)
from svfrd.service.gate import Gate, queue_mark
from svfrd.service.pause import read_pause
from svfrd.service.results import planned_final_files
from svfrd.web.uploads import UploadError, check_upload, enter_inbox, receive_form

#: How often the event stream looks at the jobs table (one small query); an update arrives within this.
EVENT_POLL_SECONDS = 0.5
#: A comment line this often keeps proxies from closing an idle stream.
EVENT_KEEPALIVE_SECONDS = 15.0
#: Rows can commit a moment after the `updated_at` they carry: each poll looks this far back, and sends a
#: row again only when it changed.
EVENT_OVERLAP = timedelta(seconds=2)
#: File kinds a job page links to: (the ResultFiles field, the media type).
JOB_FILES = {"result": ("video", "video/mp4"), "preview": ("preview", "video/mp4"),
             "contact-sheet": ("contact_sheet", "image/png"), "report": ("report", "application/json")}


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _moment(value) -> str | None:
    value = as_utc(value)
    return value.isoformat() if value is not None else None


def job_json(job: Job) -> dict[str, Any]:
    """A job as the API shows it: names, never the server's paths."""
    finished = job.state == "done"
    return {
        "id": job.id, "state": job.state, "name": job.source_name, "tasks": job.task_labels, "seed": job.seed,
        "stage": job.stage, "frames_done": job.frames_done, "frames_total": job.frames_total,
        "percent": 100 if finished else job.percent_done, "eta_seconds": job.eta_seconds,
        "attempts": job.attempts, "cancel_requested": job.cancel_requested, "engine": job.engine,
        "priority": job.priority, "run_now": job.run_now, "queue_mark": queue_mark(job),
        "error": job.error_message, "created_at": _moment(job.created_at), "started_at": _moment(job.started_at),
        "finished_at": _moment(job.finished_at), "updated_at": _moment(job.updated_at),
        "result_name": Path(job.output_path).name if finished and job.output_path else None,
        "urls": {"page": f"/jobs/{job.id}", "result": f"/api/jobs/{job.id}/result" if finished else None},
    }


def service_json(config, db) -> dict[str, Any]:
    """The pause and the schedule (docs/architecture.md §9): `control` is what `svfrd status` says, e.g.
    "paused; outside schedule until 19:00", or "" while jobs may start."""
    state = Gate(config.schedule, lambda: read_pause(db)).check()
    return {"pause": state.pause.value or None, "in_schedule": state.in_schedule, "control": state.describe()}


class Api:
    def __init__(self, config, db):
        self.config, self.db = config, db

    # -- reading -----------------------------------------------------------------------------------------

    async def list(self, request: Request) -> Response:
        try:
            limit = max(1, min(500, int(request.query_params.get("limit", "50"))))
        except ValueError:
            return error(400, "limit must be a whole number, e.g. ?limit=50")
        jobs = await run_in_threadpool(list_jobs, self.db, limit)
        service = await run_in_threadpool(service_json, self.config, self.db)
        return JSONResponse({"jobs": [job_json(job) for job in jobs], "service": service})

    async def one(self, request: Request) -> Response:
        job = await run_in_threadpool(get_job, self.db, request.path_params["job_id"])
        if job is None:
            return _no_job(request.path_params["job_id"])
        return JSONResponse(job_json(job))

    # -- changing ----------------------------------------------------------------------------------------

    async def cancel(self, request: Request) -> Response:
        return await self._queue_request(request, request_cancel)

    async def retry(self, request: Request) -> Response:
        return await self._queue_request(request, retry_job)

    async def _queue_request(self, request: Request, action) -> Response:
        job_id = request.path_params["job_id"]
        try:
            job = await run_in_threadpool(action, self.db, job_id)
        except JobNotFound:
            return _no_job(job_id)
        except QueueError as err:
            return error(409, str(err))
        return JSONResponse(job_json(job))

    async def create(self, request: Request) -> Response:
        """`POST /api/jobs`: 201 with the job once intake made it; 202 when the service has not taken the file
        in time (it is in the inbox and becomes a job when the service runs)."""
        inbox = self.config.inboxes[0].path
        form = None
        try:
            form = await receive_form(request, inbox, self.config.web.max_upload_mb << 20)
            checked = await run_in_threadpool(check_upload, self.config, form)
            before = await run_in_threadpool(latest_job_id, self.db)
            placed = await run_in_threadpool(enter_inbox, inbox, checked)
        except UploadError as err:
            return error(err.status, str(err))
        finally:
            if form is not None:
                form.remove_files()  # those not moved into the inbox
        job = await self._wait_for_job(placed, before)
        if job is None:
            return JSONResponse({"state": "submitted", "name": placed.name, "message": (
                f"{placed.name} is in the inbox, but the service has not made a job of it yet; is `svfrd run` "
                "running? It appears in the queue once the service takes it")}, status_code=202)
        return JSONResponse(job_json(job), status_code=201, headers={"location": f"/api/jobs/{job.id}"})

    async def _wait_for_job(self, placed: Path, before: int) -> Job | None:
        """Intake takes a file once it stayed unchanged for `quiet_period` (and at the latest at the next scan)."""
        service = self.config.service
        deadline = time.monotonic() + service.quiet_period + service.scan_interval + 3.0
        while time.monotonic() < deadline:
            job = await run_in_threadpool(job_for_source, self.db, placed, before)
            if job is not None:
                return job
            await asyncio.sleep(0.2)
        return None

    # -- files -------------------------------------------------------------------------------------------

    async def file(self, request: Request) -> Response:
        job_id, kind = request.path_params["job_id"], request.path_params.get("kind", "result")
        if kind not in JOB_FILES and kind != "source":
            return error(404, f"no such file kind {kind!r}; there are {', '.join(JOB_FILES)} and source")
        job = await run_in_threadpool(get_job, self.db, job_id)
        if job is None:
            return _no_job(job_id)
        path, root, media = _file_of(self.config, job, kind)
        fd = await run_in_threadpool(open_served_file, path, root)
        if fd is None:
            return error(404, f"job {job_id} has no {kind} to serve (state {job.state}); a done job's result is in "
                              "the outbox unless it was moved or deleted there")
        return OpenedFileResponse(fd, filename=Path(path).name, media_type=media)

    # -- events ------------------------------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        return StreamingResponse(self._event_stream(request), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    async def _event_stream(self, request: Request) -> AsyncIterator[str]:
        """`event: job` with a job's JSON whenever its row changes (from any process: worker, intake, CLI), and
        `event: service` with the pause and the schedule (as GET /api/jobs has them) at once and whenever they
        change. Both are read in the same poll, so a client costs no more than the two small queries."""
        sent: dict[int, str] = {}
        service_sent: dict[str, Any] | None = None
        since = utcnow() - EVENT_OVERLAP
        last_keepalive = time.monotonic()
        yield "retry: 2000\n: connected\n\n"
        while not await request.is_disconnected():
            jobs, service = await run_in_threadpool(self._poll_events, since)
            if service != service_sent:
                service_sent = service
                yield _event("service", service)
            for job in jobs:
                stamp = _moment(job.updated_at)
                if sent.get(job.id) != stamp:
                    sent[job.id] = stamp
                    yield _event("job", job_json(job))
            if jobs:
                since = max(as_utc(since), as_utc(jobs[-1].updated_at) - EVENT_OVERLAP)
            if time.monotonic() - last_keepalive > EVENT_KEEPALIVE_SECONDS:
                last_keepalive = time.monotonic()
                yield ": keep-alive\n\n"
            await asyncio.sleep(EVENT_POLL_SECONDS)

    def _poll_events(self, since: datetime) -> tuple[list[Job], dict[str, Any]]:
        """What one poll of the event stream reads: the jobs changed since `since`, and the pause and schedule."""
        return jobs_updated_since(self.db, since), service_json(self.config, self.db)


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


def _no_job(job_id: int) -> Response:
    return error(404, f"there is no job {job_id}; GET /api/jobs lists the jobs")


def _file_of(config, job: Job, kind: str) -> tuple[str | None, Path, str]:
    """(the path the job row records for `kind`, the folder it must lie in, its media type)."""
    if kind == "source":
        return job.source_path, config.output.done, "video/mp4"
    field, media = JOB_FILES[kind]
    finals = planned_final_files(config, job) if job.state == "done" else None
    return (str(getattr(finals, field)) if finals is not None else None), config.output.outbox, media


def open_served_file(path: str | Path | None, root: Path) -> int | None:
    """A read descriptor of `path` (from a job row) if it lies in `root` (by name), is reached from `root`
    without any link and is a plain file; else None. The caller closes it."""
    if not path:
        return None
    try:
        with beneath.open_plain_file(root, path) as f:
            return os.dup(f.fileno())
    except (BadInputError, OSError):
        return None


def servable(path: str | Path | None, root: Path) -> bool:
    """Whether `open_served_file` would serve `path` now (for the links a page shows)."""
    fd = open_served_file(path, root)
    if fd is None:
        return False
    os.close(fd)
    return True


class OpenedFileResponse(FileResponse):
    """Starlette's FileResponse (ranges, HEAD, If-Range) over a file already opened and checked: it reads
    `/proc/self/fd/N`, which reopens that same file whatever has since been renamed or linked in its place.
    The descriptor is closed when the response is done."""

    def __init__(self, fd: int, filename: str, media_type: str):
        self.fd = fd
        super().__init__(f"/proc/self/fd/{fd}", media_type=media_type, filename=filename, stat_result=os.fstat(fd),
                         content_disposition_type="inline")

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            os.close(self.fd)
