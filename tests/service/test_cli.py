"""The `svfrd` command line around the service: submit, status, cancel, retry, and the messages and exit codes
a shell user gets (0 ok, 1 failure, 2 usage or configuration error)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from svfrd.cli import main
from svfrd.config import load_config
from svfrd.domain import Task
from svfrd.errors import BadInputError
from svfrd.jobs.database import open_database, upgrade_database
from svfrd.jobs.store import (
    claim_next_job,
    enqueue_job,
    fail_job,
    get_job,
    insert_failed_job,
    record_progress,
)
from svfrd.service.sidecar import parse_sidecar
from tests.helpers.paths import REPO_ROOT
from tests.helpers.service import ServiceFolder, write_mask


@pytest.fixture
def folder(tmp_path) -> ServiceFolder:
    return ServiceFolder(tmp_path / "svfrd")


def svfrd(folder: ServiceFolder, *args: str) -> int:
    return main(["--config", str(folder.config_path), *args])


def some_file(path: Path, content: bytes = b"video bytes") -> Path:
    path.write_bytes(content)
    return path


def test_submit_copies_the_video_and_writes_a_sidecar_intake_accepts(folder, tmp_path, capsys):
    video = some_file(tmp_path / "clip.mp4")
    mask = write_mask(tmp_path / "my mask.png")
    assert svfrd(folder, "submit", str(video), "--tasks", "bfr,inpaint", "--mask", str(mask), "--seed", "3") == 0

    assert folder.files("inbox") == ["clip.mask.png", "clip.mp4", "clip.toml"]  # no temporary file left
    assert (folder.inbox / "clip.mp4").read_bytes() == video.read_bytes()
    spec = parse_sidecar(folder.inbox / "clip.toml", folder.inbox)
    assert spec.tasks == {Task.BFR, Task.INPAINT} and spec.seed == 3
    assert spec.mask_path == folder.inbox / "clip.mask.png"
    assert "submitted" in capsys.readouterr().out


def test_submit_without_options_leaves_the_inbox_defaults_to_apply(folder, tmp_path):
    assert svfrd(folder, "submit", str(some_file(tmp_path / "clip.mp4"))) == 0
    assert folder.files("inbox") == ["clip.mp4"]


def test_submit_never_replaces_a_file_already_in_the_inbox(folder, tmp_path):
    some_file(folder.inbox / "clip.mp4", b"someone else's video")
    assert svfrd(folder, "submit", str(some_file(tmp_path / "clip.mp4")), "--seed", "1") == 0
    assert folder.files("inbox") == ["clip-2.mp4", "clip-2.toml", "clip.mp4"]
    assert (folder.inbox / "clip.mp4").read_bytes() == b"someone else's video"


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--tasks", "inpaint"], "task 2 (inpaint) needs a mask: add --mask MASK.png"),
        (["--option", "steps=0"], "--option steps=0: must be a whole number >= 1"),
        (["--option", "strength=3"], "--option strength=3: unknown option; allowed options are crf"),
        (["--option", "steps"], "--option steps: write it as NAME=VALUE"),
        (["--tasks", "sharpen"], 'unknown task "sharpen"'),
        (["--mask", "MASK"], "a mask is only used for inpainting"),
        (["--inbox", "/elsewhere"], "/elsewhere is not a configured inbox"),
    ],
)
def test_submit_refuses_what_intake_would_reject_with_a_usage_error(folder, tmp_path, capsys, arguments, message):
    mask = some_file(tmp_path / "mask.png")
    arguments = [str(mask) if a == "MASK" else a for a in arguments]
    assert svfrd(folder, "submit", str(some_file(tmp_path / "clip.mp4")), *arguments) == 2
    assert message in capsys.readouterr().err
    assert folder.files("inbox") == []


def test_submit_writes_options_into_the_sidecar_a_plug_in_engines_own_included(tmp_path):
    folder = ServiceFolder(tmp_path / "svfrd", engine="tests.helpers.engines:OptionEngine")
    video = some_file(tmp_path / "clip.mp4")
    assert svfrd(folder, "submit", str(video), "--option", "strength=3", "--option", "mode=improved") == 0
    config = load_config(folder.config_path)
    spec = parse_sidecar(folder.inbox / "clip.toml", folder.inbox, allowed_options=config.engine.option_names)
    assert spec.options == {"strength": 3, "mode": "improved"}


def test_submit_of_a_missing_file_says_so(folder, capsys):
    assert svfrd(folder, "submit", "/no/such/video.mp4") == 2
    assert "/no/such/video.mp4 is not a file" in capsys.readouterr().err


def test_a_broken_config_is_a_usage_error_naming_the_key(folder, capsys):
    folder.config_path.write_text(folder.config_path.read_text().replace("scan_interval = 1.0",
                                                                          "scan_interval = -1"))
    assert svfrd(folder, "status") == 2
    assert "[service] scan_interval = -1" in capsys.readouterr().err


def test_status_before_the_service_ever_ran_says_there_are_no_jobs_yet(folder, tmp_path):
    """Not an error: a new user's first `svfrd status` (a real process, from another folder) exits 0."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, "-m", "svfrd", "--config", str(folder.config_path), "status"],
                          cwd=elsewhere, env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "300"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    database = folder.root / "state" / "svfrd.db"
    assert "no jobs yet" in done.stdout and str(database) in done.stdout and "svfrd run" in done.stdout
    assert str(folder.inbox) in done.stdout
    assert done.stderr == ""
    assert not database.exists()  # reading never creates the database


@pytest.mark.parametrize("command", [["status"], ["show", "1"], ["cancel", "1"], ["retry", "1"]])
def test_a_database_without_a_schema_is_a_message_without_a_traceback(folder, capsys, command):
    """A first start that stopped before its migration leaves an empty file behind."""
    (folder.root / "state").mkdir()
    (folder.root / "state" / "svfrd.db").write_bytes(b"")
    assert svfrd(folder, *command) == 1
    err = capsys.readouterr().err
    assert "cannot read the job database: no such table: jobs" in err and "svfrd run" in err


@pytest.fixture
def database(folder):
    upgrade_database(folder.database_url)
    db = open_database(folder.database_url)
    yield db
    db.dispose()


def add_job(db, folder: ServiceFolder, name: str):
    return enqueue_job(db, inbox=str(folder.inbox), source_name=name, source_path=str(folder.inbox / name),
                       tasks="0,1", content_hash=hashlib.sha256(name.encode()).hexdigest())


def test_status_shows_state_tasks_progress_and_stage(folder, database, capsys):
    add_job(database, folder, "first.mp4")
    add_job(database, folder, "second.mp4")
    running = claim_next_job(database, worker_pid=1, host="studio:/state")  # the oldest: first.mp4
    record_progress(database, running.id, "restore", 30, 120, 12.0)

    assert svfrd(folder, "status") == 0
    out = capsys.readouterr().out
    rows = {name: line for line in out.splitlines() for name in ("first.mp4", "second.mp4") if name in line}
    assert all(word in rows["first.mp4"] for word in ("running", "25%", "restore", "bfr+colorize"))
    assert "queued" in rows["second.mp4"]
    assert f"job {running.id} runs on studio:/state, device ?, worker 1" in out


def test_show_prints_every_field_with_service_interruptions_beside_the_attempts(folder, database, capsys):
    job = add_job(database, folder, "clip.mp4")
    with database.begin() as connection:
        connection.execute(text("UPDATE jobs SET attempts = 1, service_interruptions = 2 WHERE id = :id"),
                           {"id": job.id})
    assert svfrd(folder, "show", str(job.id)) == 0
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    at = lines.index("attempts: 1")
    assert lines[at:at + 3] == ["attempts: 1", "max_attempts: 3", "service_interruptions: 2"]
    assert "tasks: 0,1 (bfr+colorize)" in lines and "source_name: clip.mp4" in lines


def test_show_says_a_job_that_did_not_fit_the_gpu_failed_for_a_resource_not_for_bad_input(folder, database, capsys):
    from svfrd.engines.svfr.memory import OutOfGpuMemory  # here: only this test needs torch

    job = add_job(database, folder, "clip.mp4")
    claim_next_job(database, worker_pid=1)
    fail_job(database, job.id, OutOfGpuMemory("the GPU ran out of memory in the UNet with no other program "
                                               "holding GPU memory. The video itself is fine."), retry_backoff=1)
    assert svfrd(folder, "show", str(job.id)) == 0
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    assert "error_kind: resource" in lines and "state: failed" in lines


def test_status_and_show_print_names_as_text_never_as_markup_or_escape_codes(folder, database, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # room for the whole name in the table
    add_job(database, folder, "[link=https://example.invalid]a[/link].mp4")
    job = add_job(database, folder, "b\x1b]0;owned\x07\n<0>c.mp4")
    assert svfrd(folder, "status") == 0
    assert svfrd(folder, "show", str(job.id)) == 0
    assert svfrd(folder, "cancel", str(job.id)) == 0
    out = capsys.readouterr().out
    assert "[link=https://example.invalid]a[/link].mp4" in out
    assert "source_name: b\\x1b]0;owned\\x07\\n<0>c.mp4" in out
    assert "\x1b" not in out and "\x07" not in out


def test_an_error_that_quotes_a_name_prints_no_escape_code(folder, database, capsys):
    """Retrying a job rejected at intake says why it was rejected: a message with the hostile name in it."""
    name = "b\x1b]0;owned\x07.mp4"
    job = insert_failed_job(database, BadInputError(f"{name}: its sidecar cannot be read"), inbox=str(folder.inbox),
                            source_name=name, source_path=str(folder.inbox / name), tasks="0",
                            content_hash=hashlib.sha256(name.encode()).hexdigest())
    assert svfrd(folder, "retry", str(job.id)) == 1
    err = capsys.readouterr().err
    assert "was rejected at intake" in err and "b\\x1b]0;owned\\x07.mp4" in err
    assert "\x1b" not in err and "\x07" not in err


@pytest.mark.parametrize("limit", ["0", "-1", "ten"])
def test_status_limit_must_be_a_whole_number_of_at_least_one(folder, database, capsys, limit):
    """`--limit 0` listed nothing and said "no jobs yet" while jobs waited; `-1` listed every job."""
    add_job(database, folder, "clip.mp4")
    with pytest.raises(SystemExit) as exit_info:
        svfrd(folder, "status", "--limit", limit)
    assert exit_info.value.code == 2
    assert "is not a whole number >= 1; e.g. --limit 50" in capsys.readouterr().err


def test_show_of_an_unknown_job_says_how_to_list_them(folder, database, capsys):
    assert svfrd(folder, "show", "99") == 1
    assert "there is no job 99; `svfrd status` lists the jobs" in capsys.readouterr().err


def test_cancel_of_a_queued_job_cancels_it_and_retry_queues_it_again(folder, database, capsys):
    job = add_job(database, folder, "clip.mp4")
    assert svfrd(folder, "cancel", str(job.id)) == 0
    assert f"job {job.id} (clip.mp4) is cancelled" in capsys.readouterr().out
    assert get_job(database, job.id).state == "cancelled"

    assert svfrd(folder, "retry", str(job.id)) == 0
    assert "is queued again" in capsys.readouterr().out
    assert get_job(database, job.id).state == "queued"


def test_cancel_of_a_running_job_asks_the_worker_to_stop(folder, database, capsys):
    add_job(database, folder, "clip.mp4")
    job = claim_next_job(database, worker_pid=1)
    assert svfrd(folder, "cancel", str(job.id)) == 0
    assert "is running: it stops within seconds" in capsys.readouterr().out
    assert get_job(database, job.id).cancel_requested


def test_a_command_is_required(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err
