"""The server-rendered pages: queue, job, submit, settings. Jinja2 escapes every value (autoescape), and names
from the inboxes go through `printable` first, so neither markup nor control characters in a name act.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from svfrd.config import Config
from svfrd.domain import Task
from svfrd.errors import BadInputError
from svfrd.files.beneath import read_at_most
from svfrd.jobs.store import get_job, overview
from svfrd.ops.printable import printable, printable_lines
from svfrd.service.results import planned_final_files
from svfrd.web.api import JOB_FILES, job_json, open_served_file, servable, service_json

TEMPLATES = Path(__file__).parent / "templates"
#: Lines of a job's log the job page shows (the newest).
LOG_LINES = 200
#: A report is a few KiB; a bigger file in its place is not shown.
MAX_REPORT_BYTES = 16 << 20


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True))
    env.filters["printable"] = printable
    env.filters["printable_lines"] = printable_lines
    return env


def job_log_lines(job_id: int) -> tuple[list[str], str]:
    """The job's lines from the journal (svfrd logs to stderr, which systemd's journal keeps; there is no log
    file per job), and a note on where they come from or why there are none."""
    hint = f"`journalctl -u svfrd | grep 'job {job_id}:'` shows them where the service runs under systemd"
    if shutil.which("journalctl") is None:
        return [], f"svfrd logs to its standard error (no journal on this machine); {hint}"
    try:
        found = subprocess.run(
            ["journalctl", "--no-pager", "-o", "short-iso", "-n", str(LOG_LINES), "--grep", f"job {job_id}:"],
            capture_output=True, text=True, timeout=5, errors="replace",
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return [], f"the journal could not be read ({err}); {hint}"
    lines = [line for line in found.stdout.splitlines() if f"job {job_id}:" in line]
    if not lines:
        return [], f"no lines for this job in the journal this page may read; {hint}"
    return lines, "from the system journal"


def settings_rows(config: Config) -> list[tuple[str, str]]:
    """The effective configuration as (key, value) rows; the web token and a database password are never
    shown."""
    rows: list[tuple[str, str]] = [("config file", str(config.path))]

    def add(prefix: str, value: Any) -> None:
        if is_dataclass(value):
            for f in fields(value):
                if f.name == "token":
                    rows.append((f"{prefix}.{f.name}", "(set)" if getattr(value, f.name) else "(none)"))
                elif f.name == "database_url":
                    rows.append((f"{prefix}.{f.name}", _without_password(getattr(value, f.name))))
                else:
                    add(f"{prefix}.{f.name}", getattr(value, f.name))
        elif isinstance(value, (frozenset, set)):
            rows.append((prefix, ", ".join(sorted(str(getattr(v, "label", v)) for v in value))))
        else:
            rows.append((prefix, str(value)))

    for name in ("service", "output", "faces", "engine", "limits", "web"):
        add(name, getattr(config, name))
    for number, inbox in enumerate(config.inboxes, start=1):
        add(f"inbox #{number}", inbox)
    return rows


class Pages:
    def __init__(self, config: Config, db, token_required: bool):
        self.config, self.db, self.token_required = config, db, token_required
        self.env = environment()

    def render(self, name: str, **values: Any) -> HTMLResponse:
        return HTMLResponse(self.env.get_template(name).render(**values))

    async def queue(self, request: Request) -> Response:
        view = await run_in_threadpool(overview, self.db, queued_limit=50, recent_limit=30)
        service = await run_in_threadpool(service_json, self.config, self.db)
        return self.render("queue.html", page="queue", counts=view.counts, control=service["control"],
                           running=[job_json(j) for j in view.running], queued=[job_json(j) for j in view.queued],
                           recent=[job_json(j) for j in view.recent])

    async def job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        job = await run_in_threadpool(get_job, self.db, job_id)
        if job is None:
            return self.render("missing.html", page="queue", job_id=job_id)
        files = await run_in_threadpool(self._servable_files, job)
        report = await run_in_threadpool(self._report, job) if files["report"] else {}
        log_lines, log_note = await run_in_threadpool(job_log_lines, job.id)
        return self.render("job.html", page="job", job=job_json(job), files=files,
                           report=_pretty(report) if report else "", log_lines=log_lines, log_note=log_note)

    def _servable_files(self, job) -> dict[str, bool]:
        """Which of the job's files the API would serve now, by kind (the page links only those)."""
        finals = planned_final_files(self.config, job) if job.state == "done" else None
        files = {kind: finals is not None and servable(getattr(finals, field), self.config.output.outbox)
                 for kind, (field, _media) in JOB_FILES.items()}
        files["source"] = servable(job.source_path, self.config.output.done)
        return files

    def _report(self, job) -> dict:
        """The job's report as the API serves it (opened without following links, in the outbox), or {}."""
        fd = open_served_file(str(planned_final_files(self.config, job).report), self.config.output.outbox)
        if fd is None:
            return {}
        with os.fdopen(fd, "rb") as f:
            try:
                report = json.loads(read_at_most(f, MAX_REPORT_BYTES, "the report"))
            except (BadInputError, ValueError):
                return {}
        return report if isinstance(report, dict) else {}

    async def submit(self, request: Request) -> Response:
        return self.render("submit.html", page="submit", tasks=[(t.label, t.value) for t in Task],
                           default_tasks=sorted(t.label for t in self.config.inboxes[0].tasks),
                           max_upload_mb=self.config.web.max_upload_mb)

    async def settings(self, request: Request) -> Response:
        return self.render("settings.html", page="settings", rows=settings_rows(self.config))


def _without_password(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(not a database URL)"


def _pretty(report: dict) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False, default=str)

