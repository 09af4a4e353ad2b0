"""`svfrd submit --priority`, `svfrd priority ID N` and `svfrd run-now ID`."""

from __future__ import annotations

import pytest

from svfrd.domain import Task
from svfrd.jobs.database import open_database, upgrade_database
from svfrd.jobs.store import claim_next_job, enqueue_job, get_job, request_run_now
from svfrd.service.sidecar import parse_sidecar
from tests.service.test_cli import folder, some_file, svfrd  # noqa: F401  (folder is a fixture)


def test_submit_priority_goes_into_the_sidecar(folder, tmp_path):  # noqa: F811
    assert svfrd(folder, "submit", str(some_file(tmp_path / "clip.mp4")), "--priority", "-7") == 0
    assert parse_sidecar(folder.inbox / "clip.toml", folder.inbox).priority == -7


@pytest.mark.parametrize("value", ["500", "high"])
def test_a_bad_priority_is_a_usage_error(folder, tmp_path, capsys, value):  # noqa: F811
    with pytest.raises(SystemExit) as info:
        svfrd(folder, "submit", str(some_file(tmp_path / "clip.mp4")), "--priority", value)
    assert info.value.code == 2 and "from -100 to 100" in capsys.readouterr().err


def test_priority_and_run_now_change_a_queued_job(folder, capsys):  # noqa: F811
    upgrade_database(folder.database_url)
    db = open_database(folder.database_url)
    try:
        job = enqueue_job(db, inbox="/in", source_name="a.mp4", source_path="/in/a.mp4", tasks={Task.BFR},
                          content_hash="c")
        assert svfrd(folder, "priority", str(job.id), "9") == 0
        assert svfrd(folder, "run-now", str(job.id)) == 0
        changed = get_job(db, job.id)
        assert (changed.priority, changed.run_now) == (9, True)
        capsys.readouterr()
        assert svfrd(folder, "status") == 0
        assert "queued, prio now" in capsys.readouterr().out
        assert svfrd(folder, "priority", str(job.id + 1), "1") == 1
        assert f"no job {job.id + 1}" in capsys.readouterr().err
    finally:
        db.dispose()


def enqueue(db, name: str):
    return enqueue_job(db, inbox="/in", source_name=name, source_path=f"/in/{name}", tasks={Task.BFR},
                       content_hash=name)


def test_pause_says_a_running_run_now_job_keeps_running_and_an_ordinary_one_stops(folder, capsys):  # noqa: F811
    upgrade_database(folder.database_url)
    db = open_database(folder.database_url)
    try:
        hurried = enqueue(db, "hurried.mp4")
        request_run_now(db, hurried.id)
        claim_next_job(db, worker_pid=1, run_now_only=True)
        assert svfrd(folder, "pause") == 0
        out = capsys.readouterr().out
        assert f"job {hurried.id} (hurried.mp4) keeps running: it was started with `svfrd run-now`" in out
        assert f"`svfrd cancel {hurried.id}` stops it" in out and "stops within seconds" not in out

        ordinary = enqueue(db, "ordinary.mp4")
        claim_next_job(db, worker_pid=2)
        assert svfrd(folder, "pause") == 0
        out = capsys.readouterr().out
        assert f"job {hurried.id} (hurried.mp4) keeps running" in out
        assert f"job {ordinary.id} (ordinary.mp4) stops within seconds and goes back to the queue" in out
    finally:
        db.dispose()
