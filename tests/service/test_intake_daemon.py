"""End to end, one real `svfrd run` daemon: a video dropped twice under two names, a dropped folder, a symlink
and a video replaced while its job waited each end the way a user expects (issue 9, fixes 4, 5, 7 and 8)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from tests.helpers.engines import SLOW_SECONDS_ENV
from tests.helpers.service import Daemon, ServiceFolder, write_face_clip

SETTLED = {"done", "failed", "cancelled"}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """Everything dropped at once; the slow engine keeps the victim's job queued while its video is replaced."""
    root = tmp_path_factory.mktemp("intake")
    folder = ServiceFolder(root / "svfrd", engine="tests.helpers.engines:SlowEngine")
    clips = root / "clips"
    clips.mkdir()
    twin = write_face_clip(clips / "twin.mp4", tag=2)
    staged_trip = root / "trip"
    staged_trip.mkdir()
    write_face_clip(staged_trip / "a.mp4", tag=6)
    with Daemon(folder, env={SLOW_SECONDS_ENV: "0.25"}) as daemon:
        folder.drop(write_face_clip(clips / "a_blocker.mp4", tag=1))
        folder.drop(twin, "twin_a.mp4")
        folder.drop(twin, "twin_b.mp4")
        os.rename(staged_trip, folder.inbox / "trip")  # a whole folder appears
        (folder.inbox / "link.mp4").symlink_to(write_face_clip(clips / "secret.mp4", tag=5))
        folder.drop(write_face_clip(clips / "victim_old.mp4", tag=3), "victim.mp4")
        victim = daemon.wait_until("the job for victim.mp4", lambda: next(
            (job for job in folder.jobs() if job.source_name == "victim.mp4"), None), timeout=30)
        assert victim.state == "queued", "the victim must still wait behind the others when it is replaced"
        folder.drop(write_face_clip(clips / "victim_new.mp4", tag=4), "victim.mp4")
        jobs = daemon.wait_for_jobs(7, SETTLED, timeout=45)
        yield folder, jobs, clips


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def the_job(jobs, name: str):
    [job] = [job for job in jobs if job.source_name == name]
    return job


def test_a_video_dropped_again_under_another_name_gets_its_own_result_naming_the_job_it_reuses(service):
    folder, jobs, _ = service
    first, second = the_job(jobs, "twin_a.mp4"), the_job(jobs, "twin_b.mp4")
    assert first.state == second.state == "done"
    assert os.path.samefile(folder.outbox / "twin_b.restored.mp4", folder.outbox / "twin_a.restored.mp4")
    report = json.loads((folder.outbox / "twin_b.report.json").read_text())
    assert report["reuses_job"] == first.id and report["source"] == "twin_b.mp4"
    assert json.loads((folder.outbox / "twin_a.report.json").read_text())["reuses_job"] is None
    assert {"twin_a.mp4", "twin_b.mp4"} <= set(folder.files("done"))


def test_a_dropped_folder_is_restored_into_the_same_folder_under_the_outbox_and_done(service):
    folder, jobs, _ = service
    job = the_job(jobs, "trip/a.mp4")
    assert job.state == "done"
    assert job.output_path == str(folder.outbox / "trip" / "a.restored.mp4")
    assert (folder.outbox / "trip" / "a.report.json").is_file()
    assert folder.files("done/trip") == ["a.mp4"]


def test_a_symlinked_video_fails_asking_for_a_copy_and_the_link_itself_goes_to_failed(service):
    folder, jobs, clips = service
    job = the_job(jobs, "link.mp4")
    assert job.state == "failed" and "symbolic link" in job.error_message
    assert "Copy the file itself into the inbox" in job.error_message
    failed = folder.folder("failed")
    assert os.readlink(failed / "link.mp4") == str(clips / "secret.mp4")
    assert "Copy the file itself" in (failed / "link.error.txt").read_text()
    assert (clips / "secret.mp4").is_file() and not (folder.outbox / "link.restored.mp4").exists()


def test_a_video_replaced_while_its_job_waited_is_restored_as_a_new_job(service):
    folder, jobs, clips = service
    old, new = sorted((job for job in jobs if job.source_name == "victim.mp4"), key=lambda job: job.id)
    assert old.state == "cancelled" and old.error_message.startswith("superseded: victim.mp4 was replaced")
    assert f"job {new.id} restores the new content" in old.error_message
    assert new.state == "done" and new.content_hash == sha256(clips / "victim_new.mp4")
    assert sha256(folder.folder("done") / "victim.mp4") == sha256(clips / "victim_new.mp4")
    assert (folder.outbox / "victim.restored.mp4").is_file()
    assert not (folder.outbox / "victim-2.restored.mp4").exists()


def test_no_file_was_left_behind_in_the_inbox(service):
    folder, _, _ = service
    assert [path for path in folder.inbox.rglob("*") if not path.is_dir()] == []
