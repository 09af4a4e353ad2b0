"""The worker opens a job's video once, beneath its inbox, and hashes and restores that open file
(svfrd.service.source_video): swapping the video's folder for a link to somewhere else, before or during the
job, never makes the service read a file outside the inbox."""

from __future__ import annotations

import os

import numpy as np
import pytest

from svfrd.files.hashing import file_sha256
from svfrd.jobs.store import claim_next_job, enqueue_job, get_job, list_jobs
from svfrd.service.messages import Outcome
from svfrd.service.worker import JobRunner
from tests.helpers.engines import InvertingEngine
from tests.helpers.media_clips import write_clip
from tests.helpers.service import CLIP_FRAMES, CLIP_SIZE, ServiceFolder, read_frames, write_face_clip

GREEN = (0, 255, 0)


@pytest.fixture
def service(tmp_path):
    folder = ServiceFolder(tmp_path / "svfrd")
    with folder.open_store() as (config, db):
        yield config, db


def claimed_job(config, db, video):
    inbox = config.inboxes[0].path
    enqueue_job(db, inbox=str(inbox), source_name=video.relative_to(inbox).as_posix(), source_path=str(video),
                tasks="0", content_hash=file_sha256(video))
    return claim_next_job(db, worker_pid=os.getpid())


def someone_elses_clip(folder):
    """A clip outside the inbox, as long and as large as the job's, all green: easy to tell in a result."""
    folder.mkdir()
    frames = [np.full((CLIP_SIZE, CLIP_SIZE, 3), GREEN, np.uint8) for _ in range(CLIP_FRAMES)]
    return write_clip(folder / "clip.mp4", frames, fps=25)


def swap_folder_for_link(folder, target):
    os.rename(folder, folder.with_name(folder.name + ".moved"))
    folder.symlink_to(target)


class SwappingEngine(InvertingEngine):
    """Swaps the video's folder for a link once the job is under way: after the hash, probe and face pass,
    before the crops are decoded for it."""

    def __init__(self, cfg, swap):
        super().__init__(cfg)
        self.swap = swap

    def before_restore(self) -> None:
        self.swap()


def test_a_folder_swapped_for_a_link_mid_job_changes_nothing_the_video_held_open_is_restored(service, tmp_path):
    """Decided: the video opened (beneath the inbox) when the job started is what is restored; the file the
    link leads to is never read, and the link's target is not moved to done/."""
    config, db = service
    trip = config.inboxes[0].path / "trip"
    trip.mkdir(parents=True)
    job = claimed_job(config, db, write_face_clip(trip / "clip.mp4", tag=1))
    elsewhere = someone_elses_clip(tmp_path / "private")
    engine = SwappingEngine(config.engine, lambda: swap_folder_for_link(trip, elsewhere.parent))

    finished = JobRunner(config, db, engine).run(job.id)

    assert finished.outcome == Outcome.DONE, get_job(db, job.id).error_message
    restored = read_frames(config.output.outbox / "trip" / "clip.restored.mp4")
    centre = np.stack([frame[60:100, 60:100] for frame in restored]).reshape(-1, 3).mean(axis=0)
    magenta = 255 - np.array(GREEN)  # what the inverting engine makes of the green clip
    assert np.abs(centre - magenta).mean() > 60, f"the face restored is the outside clip's ({centre})"
    assert elsewhere.is_file(), "nothing is moved out of the linked folder"
    assert not (tmp_path / "svfrd" / "state" / "reading" / f"job{job.id}").exists(), "the link is removed"


def test_a_folder_swapped_for_a_link_before_the_job_starts_fails_the_job_saying_so(service, tmp_path):
    config, db = service
    trip = config.inboxes[0].path / "trip"
    trip.mkdir(parents=True)
    job = claimed_job(config, db, write_face_clip(trip / "clip.mp4", tag=1))
    elsewhere = someone_elses_clip(tmp_path / "private")
    swap_folder_for_link(trip, elsewhere.parent)

    finished = JobRunner(config, db, InvertingEngine(config.engine)).run(job.id)

    assert finished.outcome == Outcome.FAILED
    assert "trip is a symbolic link, and svfrd follows no link inside an inbox" in get_job(db, job.id).error_message
    assert elsewhere.is_file() and not (config.output.outbox / "trip").exists()


def test_a_video_replaced_by_a_link_to_another_clip_is_refused_not_taken_as_new_content(service, tmp_path):
    """Before, the worker followed a video that had become a link, found other content and queued a new job
    for it: the link's target would have been restored into the outbox."""
    config, db = service
    video = write_face_clip(config.inboxes[0].path / "clip.mp4", tag=1)
    job = claimed_job(config, db, video)
    elsewhere = someone_elses_clip(tmp_path / "private")
    video.unlink()
    video.symlink_to(elsewhere)

    finished = JobRunner(config, db, InvertingEngine(config.engine)).run(job.id)

    assert finished.outcome == Outcome.FAILED
    assert "clip.mp4 is a symbolic link" in get_job(db, job.id).error_message
    assert [j.id for j in list_jobs(db)] == [job.id], "no job for the link's target"
