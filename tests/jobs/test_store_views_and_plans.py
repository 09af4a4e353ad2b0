"""The store's publication-plan and view queries on a real SQLite file, and the rule that `svfrd.jobs` is the only
package that touches the jobs table."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import svfrd
from svfrd.domain import Task
from svfrd.errors import BadInputError
from svfrd.jobs.database import open_read_only
from svfrd.jobs.store import (
    JobNotFound,
    claim_next_job,
    enqueue_job,
    fail_job,
    finish_job,
    forget_planned_results,
    get_job,
    input_needed_by_other_jobs,
    jobs_with_planned_results,
    overview,
    record_planned_results,
)

PACKAGE = Path(svfrd.__file__).parent
#: SQL builders and sessions: whoever imports these writes queries of their own.
SQL_NAMES = {"Session", "select", "update", "insert", "delete", "text", "func", "col"}
SQL_CALLS = {"execute", "exec_driver_sql", "scalars"}


def new_job(db, name: str, **fields):
    return enqueue_job(db, inbox="/in", source_name=name, source_path=f"/in/{name}", tasks={Task.BFR},
                       content_hash=name, **fields)


def sql_uses(path: Path) -> list[str]:
    """`module.name` for every SQL builder or session a module imports (sqlmodel counts whole), and every call
    that runs SQL on a connection."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr in SQL_CALLS:
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] == "sqlmodel"]
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            if root == "sqlmodel":
                found.append(node.module)
            elif root == "sqlalchemy":
                found += [f"{node.module}.{alias.name}" for alias in node.names if alias.name in SQL_NAMES]
    return found


def test_only_the_jobs_package_builds_queries_on_the_jobs_table():
    outside = {
        str(path.relative_to(PACKAGE)): names
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] != "jobs" and (names := sql_uses(path))
    }
    assert outside == {}, "move these queries into svfrd/jobs/store.py and call them from there"


def test_planned_results_are_recorded_found_after_a_crash_and_forgotten(db):
    job = new_job(db, "a.mp4")
    claim_next_job(db, worker_pid=1)
    planned = record_planned_results(db, job.id, output_path=Path("/out/a.restored.mp4"),
                                     report_path=Path("/out/a.report.json"), frames=12)
    assert (planned.output_path, planned.report_path) == ("/out/a.restored.mp4", "/out/a.report.json")
    assert (planned.stage, planned.frames_done, planned.frames_total) == ("publish", 12, 12)
    assert [j.id for j in jobs_with_planned_results(db)] == [job.id]

    forget_planned_results(db, job.id)
    assert get_job(db, job.id).output_path is None and get_job(db, job.id).report_path is None
    assert jobs_with_planned_results(db) == []


def test_a_finished_job_no_longer_counts_as_an_interrupted_publication(db):
    job = new_job(db, "a.mp4")
    claim_next_job(db, worker_pid=1)
    record_planned_results(db, job.id, output_path="/out/a.restored.mp4", report_path="/out/a.report.json",
                           frames=3)
    finish_job(db, job.id, engine="classical", output_path="/out/a.restored.mp4", report_path=None)
    assert jobs_with_planned_results(db) == []


def test_planning_results_for_a_job_that_does_not_exist_says_so(db):
    with pytest.raises(JobNotFound, match="no job 99"):
        record_planned_results(db, 99, output_path="/out/x.mp4", report_path="/out/x.json", frames=1)


def test_a_mask_stays_while_another_unfinished_job_names_it(db, tmp_path):
    mask = tmp_path / "shared.png"
    mask.write_bytes(b"mask")
    first = new_job(db, "a.mp4", mask_path=str(mask))
    second = new_job(db, "b.mp4", mask_path=str(mask))
    assert input_needed_by_other_jobs(db, first.id, "mask_path", mask)
    assert not input_needed_by_other_jobs(db, first.id, "mask_path", tmp_path / "other.png")
    claim_next_job(db, worker_pid=1)  # `first`
    claim_next_job(db, worker_pid=1)  # `second`
    fail_job(db, second.id, BadInputError("broken"), retry_backoff=0)
    assert not input_needed_by_other_jobs(db, first.id, "mask_path", mask)


def test_overview_counts_every_state_and_lists_in_the_order_the_view_shows(db, db_url):
    jobs = [new_job(db, f"clip{n}.mp4") for n in range(6)]
    claim_next_job(db, worker_pid=1)  # clip0 runs
    for job in jobs[1:3]:  # clip1 fails, then clip2: the newest finished comes first
        claim_next_job(db, worker_pid=1)
        fail_job(db, job.id, BadInputError("no face"), retry_backoff=0)
    reader = open_read_only(db_url)
    try:
        seen = overview(reader, queued_limit=2, recent_limit=5)
    finally:
        reader.dispose()
    assert seen.counts == {"running": 1, "failed": 2, "queued": 3}
    assert [j.source_name for j in seen.running] == ["clip0.mp4"]
    assert [j.source_name for j in seen.queued] == ["clip3.mp4", "clip4.mp4"]
    assert [j.source_name for j in seen.recent] == ["clip2.mp4", "clip1.mp4"]
