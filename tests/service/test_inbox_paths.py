"""Whoever can write to an inbox cannot make the service open or move a file outside it (issue 16, paths):
no symlink in any part of a path, plain files only, masks used from the service's own copy."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

import svfrd.service.intake as intake_module
from svfrd.errors import BadInputError
from svfrd.jobs.store import claim_next_job, finish_job, get_job
from svfrd.service import input_copies, results
from svfrd.service.input_copies import copies_folder
from svfrd.service.worker import pipeline_job
from tests.service.test_intake_scanning import (
    all_jobs,
    drop,
    enqueued,
    inbox_of,
    make_intake,
    save_mask,
    scan_until,
    video_bytes,
)


@pytest.fixture
def intake(tmp_path):
    intake = make_intake(tmp_path)
    yield intake
    intake.stop()
    intake.db.dispose()


def failed_jobs(results_):
    return [job for r in results_ for job in r.failed]


def failed_clip(results_):
    """The failed job of clip.mp4 (a linked folder is a failed job of its own)."""
    return [job for job in failed_jobs(results_) if job.source_name == "clip.mp4"]


def test_a_rejected_sidecar_never_moves_a_file_through_a_symlinked_folder(intake):
    """The confirmed case: `inbox/st -> ../state` and `mask = "st/svfrd.db"` moved the job database."""
    inbox = inbox_of(intake)
    database = intake.config.service.state_dir / "svfrd.db"
    (inbox / "st").symlink_to(os.path.relpath(intake.config.service.state_dir, inbox))
    drop(inbox, "clip.toml", 'tasks = [2]\nmask = "st/svfrd.db"\n')
    drop(inbox, "clip.mp4", video_bytes(1))
    [job] = failed_clip(scan_until(intake, failed_clip))
    assert database.is_file() and job.mask_path is None
    assert "inbox/st is a symbolic link" in job.error_message and "Copy the folder itself in" in job.error_message
    assert {"clip.error.txt", "clip.mp4", "clip.toml"} <= set(os.listdir(intake.config.output.failed))
    assert "svfrd.db" not in os.listdir(intake.config.output.failed)


def test_a_valid_sidecar_whose_mask_passes_a_symlinked_folder_is_refused(intake):
    """Even a link that stays inside the inbox: it could be pointed elsewhere before the job ends."""
    inbox = inbox_of(intake)
    (inbox / "real").mkdir()
    save_mask(inbox / "real" / "clip.mask.png")
    (inbox / "st").symlink_to("real")
    drop(inbox, "clip.toml", 'tasks = ["bfr", "inpaint"]\nmask = "st/clip.mask.png"\n')
    drop(inbox, "clip.mp4", video_bytes(2))
    [job] = failed_clip(scan_until(intake, failed_clip))
    assert "inbox/st is a symbolic link" in job.error_message
    assert (inbox / "real" / "clip.mask.png").is_file(), "the mask is not taken along through the link"


def test_a_mask_swapped_after_intake_changes_nothing_and_nothing_outside_moves(intake, tmp_path):
    inbox = inbox_of(intake)
    (inbox / "trip").mkdir()
    mask = save_mask(inbox / "trip" / "clip.mask.png")
    original = mask.read_bytes()
    drop(inbox / "trip", "clip.toml", 'tasks = ["bfr", "inpaint"]\nmask = "clip.mask.png"\n')
    drop(inbox / "trip", "clip.mp4", video_bytes(3))
    [job] = enqueued(scan_until(intake, enqueued))
    # After intake the folder is swapped for a link to a folder of someone else's, holding a file of that name.
    os.rename(inbox / "trip", tmp_path / "trip.moved")
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "clip.mask.png").write_bytes(b"someone else's file")
    (inbox / "trip").symlink_to(tmp_path / "private")
    job = claim_next_job(intake.db, worker_pid=1)
    pipeline = pipeline_job(intake.config, job, results.temp_files(intake.config, job), Path(job.source_path))
    assert pipeline.mask_path.is_relative_to(copies_folder(intake.config.service.state_dir))
    assert pipeline.mask_path.read_bytes() == original, "the job uses the copy read at intake"
    results.move_inputs(intake.config, intake.db, job, intake.config.output.done)
    assert (tmp_path / "private" / "clip.mask.png").read_bytes() == b"someone else's file"
    assert not (intake.config.output.done / "trip").exists() or not any((intake.config.output.done / "trip").iterdir())


def test_a_private_copy_is_removed_once_no_waiting_job_needs_it(intake):
    inbox = inbox_of(intake)
    save_mask(inbox / "clip.mask.png")
    drop(inbox, "clip.toml", 'tasks = ["bfr", "inpaint"]\nmask = "clip.mask.png"\n')
    drop(inbox, "clip.mp4", video_bytes(4))
    [job] = enqueued(scan_until(intake, enqueued))
    copy = Path(job.mask_copy)
    assert copy.is_file() and copy.stat().st_mode & 0o777 == 0o640
    intake.scan_once()
    assert copy.is_file(), "kept while the job waits"
    job = claim_next_job(intake.db, worker_pid=1)
    results.move_inputs(intake.config, intake.db, job, intake.config.output.done)
    finish_job(intake.db, job.id, engine="test", output_path="/out/x.restored.mp4", report_path=None)
    intake.scan_once()
    assert not copy.exists() and get_job(intake.db, job.id).state == "done"


def test_a_fifo_beside_a_rejected_sidecar_does_not_hang_the_scan(intake):
    """Looking for other sidecars naming the same mask used to read every `*.toml`, a FIFO too, forever."""
    inbox = inbox_of(intake)
    os.mkfifo(inbox / "other.toml")
    save_mask(inbox / "clip.mask.png")
    drop(inbox, "clip.toml", 'tasks = [2]\nmask = "clip.mask.png"\ncolour = "red"\n')
    drop(inbox, "clip.mp4", video_bytes(5))
    found = []
    scan = threading.Thread(target=lambda: found.extend(failed_jobs(scan_until(intake, failed_jobs))), daemon=True)
    scan.start()
    scan.join(timeout=30)  # not a synchronisation: a bound on a hang
    if scan.is_alive():
        with open(inbox / "other.toml", "wb"):  # release the blocked reader
            pass
        raise AssertionError("the scan blocked on a FIFO named like a sidecar")
    [job] = found
    assert job.mask_path == str(intake.config.output.failed / "clip.mask.png")


def test_a_fifo_named_as_sidecar_fails_its_video_instead_of_being_ignored(intake):
    inbox = inbox_of(intake)
    os.mkfifo(inbox / "clip.toml")
    drop(inbox, "clip.mp4", video_bytes(6))
    [job] = failed_jobs(scan_until(intake, failed_jobs))
    assert "clip.toml is a FIFO (named pipe), not a plain file" in job.error_message
    assert all_jobs(intake) == [job] or len(all_jobs(intake)) == 1


def test_each_sidecar_is_read_once_per_scan_however_many_are_rejected(intake, monkeypatch):
    inbox = inbox_of(intake)
    for n in range(20):
        drop(inbox, f"clip{n}.toml", f'tasks = [2]\nmask = "m{n}.png"\ncolour = "red"\n')
        drop(inbox, f"clip{n}.mp4", video_bytes(100 + n))
    reads = []
    real = intake_module.beneath.read_plain_file
    monkeypatch.setattr(intake_module.beneath, "read_plain_file", lambda *a: reads.append(a[1]) or real(*a))
    jobs = failed_jobs(scan_until(intake, lambda r: len(failed_jobs(r)) == 20))
    assert len(jobs) == 20 and len(reads) == len(set(reads)) == 20


def test_a_job_queued_again_while_unused_copies_are_removed_waits_and_never_starts_without_its_copy(
        intake, monkeypatch):
    """`svfrd retry` (or a claim) from another process between the scan's check and its removal used to queue a
    job whose copy was then deleted under it."""
    inbox = inbox_of(intake)
    save_mask(inbox / "clip.mask.png")
    drop(inbox, "clip.toml", 'tasks = ["bfr", "inpaint"]\nmask = "clip.mask.png"\n')
    drop(inbox, "clip.mp4", video_bytes(6))
    [job] = enqueued(scan_until(intake, enqueued))
    with intake.db.begin() as connection:  # failed for now: its copy is unused
        connection.exec_driver_sql("UPDATE jobs SET state = 'failed' WHERE id = ?", (job.id,))
    requeued = []
    unlink = Path.unlink

    def retry_from_another_process_then_unlink(path, *args, **kwargs):
        if not requeued:
            other = sqlite3.connect(intake.config.service.state_dir / "svfrd.db", timeout=0.2)
            try:
                other.execute("UPDATE jobs SET state = 'queued' WHERE id = ?", (job.id,))
                other.commit()
                requeued.append("at once")
            except sqlite3.OperationalError:  # database is locked: the removal holds the queue
                requeued.append("waited")
            finally:
                other.close()
        return unlink(path, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", retry_from_another_process_then_unlink)
    assert input_copies.remove_unused(intake.db, intake.config.service.state_dir) == [Path(job.mask_copy)]
    assert requeued == ["waited"], "the job was queued again between the check and the removal of its copy"


def test_a_job_queued_without_a_copy_gets_one_at_start_and_a_changed_mask_is_refused(intake):
    """A job queued before copies existed (migration 0004), or a retried one whose copy was removed."""
    inbox = inbox_of(intake)
    state_dir = intake.config.service.state_dir
    mask = save_mask(inbox / "clip.mask.png")
    drop(inbox, "clip.toml", 'tasks = ["bfr", "inpaint"]\nmask = "clip.mask.png"\n')
    drop(inbox, "clip.mp4", video_bytes(7))
    [job] = enqueued(scan_until(intake, enqueued))
    copy = Path(job.mask_copy)
    with intake.db.begin() as connection:
        connection.exec_driver_sql("UPDATE jobs SET mask_copy = NULL WHERE id = ?", (job.id,))
    copy.unlink()
    job = input_copies.ensure_copies(intake.db, claim_next_job(intake.db, worker_pid=1), state_dir)
    assert job.mask_copy == str(copy) and copy.read_bytes() == mask.read_bytes()
    assert get_job(intake.db, job.id).mask_copy == str(copy)
    copy.unlink()
    mask.write_bytes(b"another picture")
    with pytest.raises(BadInputError, match="clip.mask.png is no longer the file the job was queued with"):
        input_copies.ensure_copies(intake.db, job, state_dir)
