"""Intake on real folders and a real SQLite database: complete files become jobs exactly once.

Time is a clock the test advances (`FakeClock`): scans run back to back, and a quiet period passes when the
test says so, never by sleeping."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from svfrd.config import load_config
from svfrd.domain import Task
from svfrd.files.hashing import file_sha256
from svfrd.files.placement import move_input_to
from svfrd.jobs.database import open_database, upgrade_database
from svfrd.jobs.model import JobState
from svfrd.jobs.store import (
    claim_next_job,
    finish_job,
    get_job,
    list_jobs,
    set_input_paths,
)
from svfrd.service.intake import Intake, ScanResult
from svfrd.service.source_video import hold_video
from svfrd.service.worker import supersede_if_replaced
from tests.helpers.clock import FakeClock

#: Fake seconds between two scans of `scan_until` and `scan_for` (the daemon rescans about as often on hints).
SCAN_STEP = 0.05


def make_intake(tmp_path: Path, quiet: float = 0.2, grace: float = 0.0, inbox_extra: str = "",
                extra: str = "", on_hint=None) -> Intake:
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        f"[service]\nquiet_period = {quiet}\nsidecar_grace = {grace}\nmax_attempts = 2\n"
        f'[[inbox]]\npath = "inbox"\ntasks = ["bfr"]\n{inbox_extra}\n{extra}\n'
    )
    config = load_config(config_file)
    upgrade_database(config.service.database_url)
    config.inboxes[0].path.mkdir()
    return Intake(config, open_database(config.service.database_url), on_hint=on_hint, clock=FakeClock())


@pytest.fixture
def intake(tmp_path):
    intake = make_intake(tmp_path)
    yield intake
    intake.stop()
    intake.db.dispose()


def inbox_of(intake: Intake) -> Path:
    return intake.config.inboxes[0].path


def drop(folder: Path, name: str, data: bytes | str) -> Path:
    path = folder / name
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def video_bytes(seed: int, size: int = 4096) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def save_mask(path: Path) -> Path:
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(path)
    return path


def scan_until(intake: Intake, done, limit: float = 30.0) -> list[ScanResult]:
    """Scan like the daemon does until `done(results)` holds, the clock moving SCAN_STEP between scans."""
    results: list[ScanResult] = []
    started = intake.clock()
    while intake.clock() - started <= limit:
        results.append(intake.scan_once())
        if done(results):
            return results
        intake.clock.advance(SCAN_STEP)
    raise AssertionError(f"condition not met within {limit} clock seconds")


def scan_for(intake: Intake, seconds: float) -> list[ScanResult]:
    """Scan every SCAN_STEP clock seconds for `seconds`."""
    results = []
    for _ in range(round(seconds / SCAN_STEP)):
        results.append(intake.scan_once())
        intake.clock.advance(SCAN_STEP)
    return results


def enqueued(results: list[ScanResult]) -> list:
    return [job for r in results for job in r.enqueued]


def all_jobs(intake: Intake) -> list:
    return list_jobs(intake.db, limit=1000)


def simulate_worker_done(intake: Intake, job) -> None:
    """What the worker does after a success: move the inputs to done/, record it, mark the job done."""
    claim_next_job(intake.db, worker_pid=1)
    inputs = [Path(job.source_path), Path(job.sidecar_path) if job.sidecar_path else None]
    moved = move_input_to(intake.config.output.done, inputs)
    set_input_paths(intake.db, job.id, source_path=moved[0], sidecar_path=moved[1] if len(moved) > 1 else None)
    finish_job(intake.db, job.id, engine="test", output_path="/out/x.restored.mp4", report_path=None)


# ---------------------------------------------------------------------------------------------------------------


def test_a_complete_video_becomes_one_queued_job_with_the_inbox_defaults(intake):
    video = drop(inbox_of(intake), "clip.mp4", video_bytes(1))
    results = scan_until(intake, lambda r: enqueued(r))
    [job] = enqueued(results)
    assert job.state == JobState.QUEUED.value and job.source_path == str(video) and job.source_name == "clip.mp4"
    assert job.tasks == "0" and job.sidecar_path is None and job.max_attempts == 2
    assert job.content_hash == file_sha256(video)
    assert video.exists(), "the input stays in the inbox while its job waits"
    scan_for(intake, 0.4)
    assert len(all_jobs(intake)) == 1


def test_a_slowly_copied_file_is_not_taken_before_it_is_complete(tmp_path):
    intake = make_intake(tmp_path, quiet=1.2)
    video = inbox_of(intake) / "slow.mov"
    with open(video, "wb") as f:
        for n in range(12):
            f.write(video_bytes(n, 2048))
            f.flush()
            last_write = intake.clock()
            assert enqueued(scan_for(intake, 0.25)) == [], "a file that keeps growing is never complete"
    [job] = enqueued(scan_until(intake, lambda r: enqueued(r)))
    assert intake.clock() - last_write >= 1.2 - 1e-9, "taken only after a full quiet period"
    assert job.content_hash == file_sha256(video) and video.stat().st_size == 12 * 2048
    intake.db.dispose()


def test_fifty_videos_dropped_at_once_make_fifty_jobs_and_rescans_add_none(intake):
    for n in range(50):
        drop(inbox_of(intake), f"clip{n:02d}.mp4", video_bytes(100 + n))
    scan_until(intake, lambda r: len(enqueued(r)) >= 50)
    scan_for(intake, 0.5)
    jobs = all_jobs(intake)
    assert len(jobs) == 50
    assert sorted(j.source_name for j in jobs) == [f"clip{n:02d}.mp4" for n in range(50)]
    assert len({j.dedupe_key for j in jobs}) == 50


def test_hidden_partial_and_non_video_names_are_ignored(intake):
    inbox = inbox_of(intake)
    names = [".clip.mp4", "clip.mp4.part", "clip.mp4.tmp", "clip.mp4.crdownload", "notes.txt", "face.png",
             "orphan.toml", "~lock.mp4"]
    for n, name in enumerate(names):
        drop(inbox, name, video_bytes(n))
    (inbox / "folder.mp4").mkdir()
    results = scan_for(intake, 0.5)
    assert enqueued(results) == [] and all_jobs(intake) == []
    assert sorted(p.name for p in inbox.iterdir()) == sorted(names + ["folder.mp4"])


def test_common_containers_are_accepted_whatever_the_case(intake):
    names = ["a.MP4", "b.mov", "c.mkv", "d.avi", "e.webm", "f.m4v", "g.mpg", "h.mpeg", "i.ts", "j.mts", "k.wmv",
             "l.flv", "m.3gp"]
    for n, name in enumerate(names):
        drop(inbox_of(intake), name, video_bytes(200 + n))
    scan_until(intake, lambda r: len(enqueued(r)) == len(names))


def test_a_sidecar_is_used_and_must_be_complete_too(intake):
    inbox = inbox_of(intake)
    save_mask(inbox / "clip.mask.png")
    drop(inbox, "clip.toml", 'tasks = ["bfr", "inpaint"]\nmask = "clip.mask.png"\nseed = 9\n[options]\nsteps = 7\n')
    drop(inbox, "clip.mp4", video_bytes(3))
    [job] = enqueued(scan_until(intake, lambda r: enqueued(r)))
    assert job.tasks == "0,2" and job.seed == 9 and job.options_json == '{"steps":7}'
    assert job.sidecar_path == str(inbox / "clip.toml") and job.mask_path == str(inbox / "clip.mask.png")


def test_a_sidecar_still_being_written_is_waited_for(tmp_path):
    intake = make_intake(tmp_path, quiet=0.8)
    inbox = inbox_of(intake)
    drop(inbox, "clip.mp4", video_bytes(13))
    sidecar = drop(inbox, "clip.toml", "tasks = [0]\n")
    for _ in range(15):
        assert enqueued([intake.scan_once()]) == []
        with open(sidecar, "a") as f:
            f.write("# still editing\n")
        intake.clock.advance(0.1)
    drop(inbox, "clip.toml", "tasks = [1]\n")
    [job] = enqueued(scan_until(intake, lambda r: enqueued(r)))
    assert job.tasks == "1", "the finished sidecar is the one used"
    intake.db.dispose()


def test_a_video_that_vanishes_while_it_is_taken_is_left_to_the_next_scan(intake, monkeypatch):
    drop(inbox_of(intake), "clip.mp4", video_bytes(14))
    scan_for(intake, 0.1)
    monkeypatch.setattr(intake, "_content_hash", lambda inbox, path: (_ for _ in ()).throw(FileNotFoundError(path)))
    assert enqueued(scan_for(intake, 0.3)) == []
    monkeypatch.undo()
    assert enqueued(scan_until(intake, lambda r: enqueued(r)))


def test_a_sidecar_arriving_after_the_video_within_the_grace_period_is_used(tmp_path):
    intake = make_intake(tmp_path, quiet=0.2, grace=1.5)
    inbox = inbox_of(intake)
    drop(inbox, "late.mp4", video_bytes(4))
    assert enqueued(scan_for(intake, 0.6)) == [], "waits for a sidecar"
    drop(inbox, "late.toml", "tasks = [1]\n")
    [job] = enqueued(scan_until(intake, lambda r: enqueued(r)))
    assert job.tasks == "1" and job.sidecar_path == str(inbox / "late.toml")
    intake.db.dispose()


def test_without_a_sidecar_the_inbox_defaults_apply_once_the_grace_period_is_over(tmp_path):
    intake = make_intake(tmp_path, quiet=0.2, grace=0.8, inbox_extra="options = { steps = 5 }")
    drop(inbox_of(intake), "plain.mp4", video_bytes(5))
    started = intake.clock()
    results = scan_until(intake, lambda r: enqueued(r))
    assert intake.clock() - started >= 0.2 + 0.8
    assert 0 < min(r.wait for r in results if r.wait is not None) <= 1.0, "scan says how long to wait"
    [job] = enqueued(results)
    assert job.tasks == "0" and job.options_json == '{"steps":5}' and job.sidecar_path is None
    intake.db.dispose()


def test_the_same_content_and_options_again_is_a_job_that_will_reuse_the_first(intake):
    inbox = inbox_of(intake)
    drop(inbox, "first.mp4", video_bytes(6))
    [job] = enqueued(scan_until(intake, lambda r: enqueued(r)))
    drop(inbox, "copy.mp4", video_bytes(6))
    results = scan_until(intake, lambda r: any(r_.duplicates for r_ in r))
    [(duplicate, original)] = [d for r in results for d in r.duplicates]
    assert original.id == job.id and duplicate.id != job.id and enqueued(results) == []
    assert duplicate.source_name == "copy.mp4" and duplicate.state == JobState.QUEUED.value
    assert duplicate.dedupe_key == job.dedupe_key, "the worker finds the earlier results by this key"
    assert (inbox / "copy.mp4").read_bytes() == video_bytes(6), "the copy waits in the inbox for its turn"
    scan_for(intake, 0.3)
    assert len(all_jobs(intake)) == 2


def test_a_changed_sidecar_makes_a_new_job_and_an_unchanged_one_reuses_the_earlier_one(intake):
    inbox = inbox_of(intake)
    drop(inbox, "clip.mp4", video_bytes(7))
    drop(inbox, "clip.toml", "tasks = [0]\n")
    [first] = enqueued(scan_until(intake, lambda r: enqueued(r)))
    simulate_worker_done(intake, first)

    drop(inbox, "clip.mp4", video_bytes(7))
    drop(inbox, "clip.toml", "tasks = [0]\nseed = 1\n")
    [second] = enqueued(scan_until(intake, lambda r: enqueued(r)))
    assert second.id != first.id and second.seed == 1
    simulate_worker_done(intake, second)

    drop(inbox, "clip.mp4", video_bytes(7))
    drop(inbox, "clip.toml", "tasks = [0]\nseed = 1\n")
    results = scan_until(intake, lambda r: any(r_.duplicates for r_ in r))
    assert enqueued(results) == []
    [(_, original)] = [d for r in results for d in r.duplicates]
    assert original.id == second.id


def test_a_failed_job_does_not_block_dropping_the_file_again(intake):
    inbox = inbox_of(intake)
    drop(inbox, "clip.mp4", video_bytes(8))
    drop(inbox, "clip.toml", "taks = [0]\n")
    [failed] = [j for r in scan_until(intake, lambda r: any(r_.failed for r_ in r)) for j in r.failed]
    drop(inbox, "clip.mp4", video_bytes(8))
    drop(inbox, "clip.toml", "tasks = [0]\n")
    [job] = enqueued(scan_until(intake, lambda r: enqueued(r)))
    assert job.id != failed.id and job.content_hash == failed.content_hash


BAD_SIDECARS = [
    ("tasks = [0\n", "not valid TOML"),
    ('taks = ["bfr"]\n', "unknown key 'taks'"),
    ('tasks = ["sharpen"]\n', 'unknown task "sharpen"'),
    ("tasks = [2]\n", "task 2 (inpaint) needs a mask"),
    ('tasks = [2]\nmask = "/etc/passwd"\n', "must be relative to the folder of the video, not an absolute path"),
    ('tasks = [2]\nmask = "../outside.png"\n', "must not contain '..'"),
    ('tasks = [2]\nmask = "link.png"\n', "link.png is a symbolic link, and svfrd follows no link"),
    ('tasks = [2]\nmask = "gone.png"\n', "gone.png does not exist"),
    ('tasks = [2]\nmask = "notes.png"\n', "notes.png is not an image file"),
    ('reference = "notes.png"\n', "notes.png is not an image file"),
    ("[options]\nwarp = 9\n", "[options] warp = 9: unknown option"),
]


@pytest.mark.parametrize("sidecar, expected", BAD_SIDECARS, ids=[e for _, e in BAD_SIDECARS])
def test_a_bad_sidecar_fails_the_video_with_a_precise_message_and_keeps_the_files(tmp_path, sidecar, expected):
    intake = make_intake(tmp_path)
    inbox = inbox_of(intake)
    save_mask(tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", inbox / "link.png")
    drop(inbox, "notes.png", "not a picture")
    drop(inbox, "clip.mp4", video_bytes(9))
    drop(inbox, "clip.toml", sidecar)
    results = scan_until(intake, lambda r: any(r_.failed for r_ in r))
    [job] = [j for r in results for j in r.failed]
    failed = intake.config.output.failed
    assert job.state == "failed" and job.error_kind == "bad_input"
    assert job.error_message.startswith("sidecar clip.toml: ") and expected in job.error_message
    assert job.source_path == str(failed / "clip.mp4") and job.sidecar_path == str(failed / "clip.toml")
    assert (failed / "clip.mp4").read_bytes() == video_bytes(9)
    assert (failed / "clip.toml").read_text() == sidecar
    assert expected in (failed / "clip.error.txt").read_text()
    assert not (inbox / "clip.mp4").exists() and not (inbox / "clip.toml").exists()
    assert enqueued(scan_for(intake, 0.3)) == [] and len(all_jobs(intake)) == 1
    intake.db.dispose()


def test_a_bad_sidecar_takes_its_mask_along_to_failed(intake):
    inbox = inbox_of(intake)
    save_mask(inbox / "clip.mask.png")
    drop(inbox, "clip.mp4", video_bytes(10))
    drop(inbox, "clip.toml", 'tasks = [2]\nmask = "clip.mask.png"\ncolour = "red"\n')
    [job] = [j for r in scan_until(intake, lambda r: any(r_.failed for r_ in r)) for j in r.failed]
    assert "unknown key 'colour'" in job.error_message
    assert job.mask_path == str(intake.config.output.failed / "clip.mask.png")
    assert list(inbox.iterdir()) == []


def test_intake_holds_a_mask_to_the_configured_limit_the_worker_applies(tmp_path):
    intake = make_intake(tmp_path, extra="[limits]\nmax_mask_pixels = 1000\n")
    try:
        inbox = inbox_of(intake)
        save_mask(inbox / "clip.mask.png")  # 32x32: 1,024 pixels
        drop(inbox, "clip.toml", 'tasks = [2]\nmask = "clip.mask.png"\n')
        drop(inbox, "clip.mp4", video_bytes(5))
        [job] = [j for r in scan_until(intake, lambda r: any(r_.failed for r_ in r)) for j in r.failed]
    finally:
        intake.stop()
        intake.db.dispose()
    assert job.error_kind == "bad_input" and job.attempts == 0
    assert "the mask clip.mask.png is 32x32 (1,024 pixels), over the limit of 1,000 pixels" in job.error_message
    assert "[limits] max_mask_pixels" in job.error_message


def test_a_mask_that_another_sidecar_names_stays_in_the_inbox(tmp_path):
    intake = make_intake(tmp_path, quiet=0.2, grace=5.0)
    inbox = inbox_of(intake)
    save_mask(inbox / "shared.png")
    drop(inbox, "bad.mp4", video_bytes(15))
    drop(inbox, "bad.toml", 'tasks = [2]\nmask = "shared.png"\nspeed = 2\n')
    drop(inbox, "good.toml", 'tasks = [2]\nmask = "shared.png"\n')  # its video is still being copied
    [job] = [j for r in scan_until(intake, lambda r: any(r_.failed for r_ in r)) for j in r.failed]
    assert job.mask_path is None and (inbox / "shared.png").is_file()
    drop(inbox, "good.mp4", video_bytes(16))
    [good] = enqueued(scan_until(intake, lambda r: enqueued(r)))
    assert good.mask_path == str(inbox / "shared.png")
    intake.db.dispose()


def test_files_of_queued_jobs_stay_put_across_restarts(tmp_path):
    first = make_intake(tmp_path)
    drop(inbox_of(first), "clip.mp4", video_bytes(11))
    [job] = enqueued(scan_until(first, lambda r: enqueued(r)))
    first.db.dispose()
    restarted = Intake(first.config, open_database(first.config.service.database_url), clock=FakeClock())
    results = scan_for(restarted, 0.5)
    assert enqueued(results) == [] and not any(r.duplicates for r in results)
    assert [j.id for j in all_jobs(restarted)] == [job.id]
    assert (inbox_of(restarted) / "clip.mp4").exists()
    restarted.db.dispose()


def test_file_events_wake_the_daemon_and_the_scan_clears_the_hint(tmp_path):
    wake = threading.Event()
    intake = make_intake(tmp_path, on_hint=wake.set)
    intake.start()
    assert not intake.has_hints()
    drop(inbox_of(intake), "clip.mp4", b"x")
    assert wake.wait(5), "a new file is a hint"
    intake.stop()  # joins the observer thread: no later event of the write can re-arm the hint after the scan
    assert intake.has_hints()
    intake.scan_once()
    assert not intake.has_hints()
    intake.db.dispose()


def test_inboxes_are_created_when_watching_starts(tmp_path):
    intake = make_intake(tmp_path)
    inbox = inbox_of(intake)
    inbox.rmdir()
    intake.start()
    assert inbox.is_dir()
    intake.stop()
    intake.db.dispose()


def test_tasks_enum_round_trip(intake):
    """Jobs store task ids as text; the Job model reads them back."""
    drop(inbox_of(intake), "clip.mp4", video_bytes(12))
    drop(inbox_of(intake), "clip.toml", 'tasks = ["colorize", "bfr"]\n')
    [job] = enqueued(scan_until(intake, lambda r: enqueued(r)))
    assert [Task(t) for t in job.task_ids] == [Task.BFR, Task.COLORIZE]


# ---------------------------------------------------------------------------------------------------------------
# Folders, symlinks, and a video replaced while its job waited.


def test_a_dropped_folder_is_scanned_and_its_videos_keep_their_relative_path(intake):
    inbox = inbox_of(intake)
    (inbox / "trip" / "day2").mkdir(parents=True)
    save_mask(inbox / "trip" / "clip.mask.png")
    drop(inbox / "trip", "clip.toml", 'tasks = ["bfr", "inpaint"]\nmask = "clip.mask.png"\n')
    drop(inbox / "trip", "clip.mp4", video_bytes(30))
    drop(inbox / "trip" / "day2", "b.mp4", video_bytes(31))
    (inbox / "trip" / ".cache").mkdir()
    drop(inbox / "trip" / ".cache", "hidden.mp4", video_bytes(32))
    drop(inbox / "trip", "partial.mp4.part", video_bytes(33))
    jobs = enqueued(scan_until(intake, lambda r: len(enqueued(r)) >= 2))
    scan_for(intake, 0.3)
    assert sorted(j.source_name for j in all_jobs(intake)) == ["trip/clip.mp4", "trip/day2/b.mp4"]
    clip = next(j for j in jobs if j.source_name == "trip/clip.mp4")
    assert clip.source_path == str(inbox / "trip" / "clip.mp4") and clip.tasks == "0,2"
    assert clip.mask_path == str(inbox / "trip" / "clip.mask.png"), "the mask is named beside its video"


def test_a_bad_sidecar_in_a_folder_fails_into_the_same_folder_under_failed(intake):
    inbox = inbox_of(intake)
    (inbox / "trip").mkdir()
    save_mask(inbox / "outside.png")
    drop(inbox / "trip", "clip.toml", 'tasks = [2]\nmask = "../outside.png"\n')
    drop(inbox / "trip", "clip.mp4", video_bytes(34))
    [job] = [j for r in scan_until(intake, lambda r: any(r_.failed for r_ in r)) for j in r.failed]
    failed = intake.config.output.failed / "trip"
    assert "must not contain '..'" in job.error_message, "a mask may not leave the folder of the video"
    assert job.source_name == "trip/clip.mp4" and job.source_path == str(failed / "clip.mp4")
    assert sorted(p.name for p in failed.iterdir()) == ["clip.error.txt", "clip.mp4", "clip.toml"]


def test_a_non_recursive_inbox_ignores_folders_and_output_folders_inside_an_inbox_are_never_scanned(tmp_path):
    intake = make_intake(tmp_path, inbox_extra="recursive = false")
    inbox = inbox_of(intake)
    (inbox / "trip").mkdir()
    drop(inbox / "trip", "a.mp4", video_bytes(35))
    assert enqueued(scan_for(intake, 0.5)) == []
    intake.db.dispose()

    (tmp_path / "nested").mkdir()
    nested = make_intake(tmp_path / "nested", extra='[output]\noutbox = "inbox/results"\n')
    results_folder = nested.config.output.outbox
    results_folder.mkdir()
    drop(results_folder, "a.restored.mp4", video_bytes(36))
    assert enqueued(scan_for(nested, 0.5)) == [], "results must not come back as new jobs"
    nested.db.dispose()


def test_a_symlinked_video_is_refused_and_the_link_itself_goes_to_failed(tmp_path):
    intake = make_intake(tmp_path)
    inbox = inbox_of(intake)
    secret = drop(tmp_path, "secret.mp4", video_bytes(37))
    (inbox / "link.mp4").symlink_to(secret)
    (tmp_path / "photos").mkdir()
    (inbox / "photos").symlink_to(tmp_path / "photos")
    failed_jobs = [j for r in scan_until(intake, lambda r: sum(len(r_.failed) for r_ in r) >= 2) for j in r.failed]
    by_name = {j.source_name: j for j in failed_jobs}
    failed = intake.config.output.failed
    link_job = by_name["link.mp4"]
    assert link_job.state == "failed" and link_job.error_kind == "bad_input"
    assert "symbolic link" in link_job.error_message and "Copy the file itself" in link_job.error_message
    assert os.readlink(failed / "link.mp4") == str(secret), "the link moved, not its target"
    assert secret.read_bytes() == video_bytes(37)
    assert "Copy the file itself" in (failed / "link.error.txt").read_text()
    assert "Copy the folder itself" in by_name["photos"].error_message
    assert (failed / "photos").is_symlink() and (tmp_path / "photos").is_dir()
    assert list(inbox.iterdir()) == []
    intake.db.dispose()


def test_an_inbox_may_choose_to_follow_links_to_videos(tmp_path):
    intake = make_intake(tmp_path, inbox_extra="follow_symlinks = true")
    target = drop(tmp_path, "elsewhere.mp4", video_bytes(38))
    (inbox_of(intake) / "link.mp4").symlink_to(target)
    [job] = enqueued(scan_until(intake, lambda r: enqueued(r)))
    assert job.content_hash == file_sha256(target)
    intake.db.dispose()


def test_a_video_replaced_while_its_job_waited_is_a_new_job_when_the_job_starts(intake):
    inbox = inbox_of(intake)
    drop(inbox, "clip.mp4", video_bytes(39))
    [queued] = enqueued(scan_until(intake, lambda r: enqueued(r)))
    drop(inbox, "clip.mp4", video_bytes(40))  # overwritten with other content
    running = claim_next_job(intake.db, worker_pid=1)
    assert running.id == queued.id
    with hold_video(intake.config, running) as video:
        assert supersede_if_replaced(intake.db, running, video) is not None, "nothing to restore for the old content"
    old = get_job(intake.db, queued.id)
    assert old.state == JobState.CANCELLED.value
    [new] = [j for j in all_jobs(intake) if j.id != old.id]
    assert old.error_message == (f"superseded: clip.mp4 was replaced with different content after it was queued; "
                                 f"job {new.id} restores the new content")
    assert new.state == JobState.QUEUED.value and new.content_hash == file_sha256(inbox / "clip.mp4")
    assert new.dedupe_key != old.dedupe_key and new.source_path == old.source_path
    assert enqueued(scan_for(intake, 0.3)) == [], "the new job owns the file: no third job"
    claimed = claim_next_job(intake.db, worker_pid=1)
    with hold_video(intake.config, claimed) as video:
        assert claimed.id == new.id and supersede_if_replaced(intake.db, claimed, video) is None


def test_a_symlinked_sidecar_fails_its_video_instead_of_being_read(tmp_path):
    intake = make_intake(tmp_path)
    inbox = inbox_of(intake)
    elsewhere = drop(tmp_path, "elsewhere.toml", "tasks = [1]\n")
    (inbox / "clip.toml").symlink_to(elsewhere)
    drop(inbox, "clip.mp4", video_bytes(41))
    [job] = [j for r in scan_until(intake, lambda r: any(r_.failed for r_ in r)) for j in r.failed]
    assert "sidecar clip.toml is a symbolic link" in job.error_message
    assert (intake.config.output.failed / "clip.toml").is_symlink() and elsewhere.is_file()
    intake.db.dispose()


def test_a_video_swapped_for_a_link_after_it_was_listed_is_refused_not_followed(tmp_path, monkeypatch):
    """Only an inbox with `follow_symlinks = true` follows a linked video; before, intake followed any video
    that was a link by the time it was hashed, and queued the link's target."""
    intake = make_intake(tmp_path, quiet=0)
    clip = drop(inbox_of(intake), "clip.mp4", video_bytes(41))
    elsewhere = drop(tmp_path, "elsewhere.mp4", video_bytes(42))
    list_inbox = intake._list_inbox

    def listed_then_swapped(inbox):
        listing = list_inbox(inbox)
        if clip in listing.files:
            clip.unlink()
            clip.symlink_to(elsewhere)
        return listing

    monkeypatch.setattr(intake, "_list_inbox", listed_then_swapped)
    result = scan_until(intake, lambda r: r[-1].failed or r[-1].enqueued)[-1]
    assert result.enqueued == [] and [job.source_name for job in result.failed] == ["clip.mp4"]
    assert "clip.mp4 is a symbolic link" in result.failed[0].error_message
    assert elsewhere.is_file() and file_sha256(elsewhere) != result.failed[0].content_hash
    intake.db.dispose()
