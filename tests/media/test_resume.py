"""A resumed restoration (svfrd.media.pipeline with a checkpoint folder, svfrd.media.segments): a run stopped
part-way leaves its face pass and finished output segments, and the next run reuses them, restoring only from
the first frame no segment holds; its output equals an uninterrupted run's, frame for frame."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from svfrd.engines.classical import ClassicalEngine
from svfrd.media.pipeline import restore_video
from svfrd.media.video_io import iter_frames, probe
from tests.helpers.media_clips import write_moving_face_clip, write_two_face_clip
from tests.media.test_pipeline_restore import make_job

FRAMES = 30
SEGMENT_SECONDS = 0.2  # 5 frames at 25 fps


class Stopped(Exception):
    """Stands for the kill: the run ends at a progress report, as the worker's stop does."""


def stop_at_encoded_frame(frame: int):
    def progress(stage, done, total):
        if stage == "encode" and done >= frame:
            raise Stopped()
    return progress


def ignore_progress(stage, done, total):
    pass


class CountingEngine(ClassicalEngine):
    """The classical engine, counting the crops it was given."""

    def __init__(self):
        super().__init__()
        self.crops_read = 0

    def restore(self, request, crops, progress):
        return super().restore(request, _Counted(crops, self), progress)


class _Counted:
    def __init__(self, crops, engine):
        self.crops, self.engine = crops, engine
        self.enlargement = crops.enlargement

    def __len__(self):
        return len(self.crops)

    def __iter__(self):
        for crop in self.crops:
            self.engine.crops_read += 1
            yield crop


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_moving_face_clip(tmp_path_factory.mktemp("resume") / "clip.mp4", frames=FRAMES, audio=True)


def resumable(folder: Path, clip: Path, name: str, identity: dict | None = None):
    job = make_job(folder, clip, output=folder / f"{name}.mp4", checkpoints=folder / f"checkpoints-{name}",
                   identity=identity or {"job": 1}, preview_video=folder / f"{name}.preview.mp4",
                   contact_sheet=folder / f"{name}.contact.png")
    return replace(job, output_cfg=replace(job.output_cfg, segment_seconds=SEGMENT_SECONDS))


@pytest.fixture(scope="module")
def uninterrupted(clip, tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    result = restore_video(resumable(folder, clip, "whole"), ClassicalEngine(), ignore_progress)
    return result, [frame.image for frame in iter_frames(folder / "whole.mp4")]


def assert_same_frames(path: Path, expected: list[np.ndarray]) -> None:
    frames = [frame.image for frame in iter_frames(path)]
    assert len(frames) == len(expected)
    for index, (ours, theirs) in enumerate(zip(frames, expected)):
        assert np.array_equal(ours, theirs), f"frame {index} differs"


def test_a_stopped_run_is_resumed_from_its_segments_and_equals_an_uninterrupted_run(tmp_path, clip, uninterrupted):
    whole, expected = uninterrupted
    job = resumable(tmp_path, clip, "resumed")
    with pytest.raises(Stopped):
        restore_video(job, ClassicalEngine(), stop_at_encoded_frame(17))
    assert not job.output.exists()

    engine = CountingEngine()
    result = restore_video(job, engine, ignore_progress)

    assert result.resume == {"face_pass_reused": True, "from_frame": 15, "segments_reused": 3,
                             "frames_reused": 15, "engine_restarted_at_frame": 11}
    assert engine.crops_read == FRAMES - 11  # the engine's context (2 x 2 frames) before frame 15, then on
    assert_same_frames(job.output, expected)
    assert probe(job.output).audio and probe(job.output).duration == probe(clip).duration
    assert (result.frames, result.media, result.warnings) == (whole.frames, whole.media, whole.warnings)
    assert job.preview_video.is_file() and probe(job.preview_video).frames == FRAMES


def test_a_torn_segments_checkpoint_is_passed_over_for_the_one_before(tmp_path, clip, uninterrupted):
    _, expected = uninterrupted
    job = resumable(tmp_path, clip, "torn")
    with pytest.raises(Stopped):
        restore_video(job, ClassicalEngine(), stop_at_encoded_frame(17))
    newest = sorted(job.checkpoints.glob("segments-*.ckpt"))[-1]
    os.truncate(newest, newest.stat().st_size // 2)

    result = restore_video(job, ClassicalEngine(), ignore_progress)

    assert (result.resume["from_frame"], result.resume["segments_reused"]) == (10, 2)
    assert_same_frames(job.output, expected)


def test_a_run_whose_segments_are_all_done_only_joins_them(tmp_path, clip, uninterrupted):
    _, expected = uninterrupted
    job = resumable(tmp_path, clip, "joined")
    restore_video(job, ClassicalEngine(), ignore_progress)
    for path in (job.output, job.preview_video, job.contact_sheet):
        path.unlink()  # as if killed while joining the segments into the output

    engine = CountingEngine()
    result = restore_video(job, engine, ignore_progress)

    assert engine.crops_read == 0 and result.resume["from_frame"] == FRAMES
    assert_same_frames(job.output, expected)


def test_checkpoints_made_under_other_settings_are_not_reused(tmp_path, clip):
    job = resumable(tmp_path, clip, "other")
    with pytest.raises(Stopped):
        restore_video(job, ClassicalEngine(), stop_at_encoded_frame(17))

    result = restore_video(replace(job, identity={"job": 1, "seed": 8}), ClassicalEngine(), ignore_progress)

    assert result.resume is None


def test_with_several_faces_a_run_starts_again_from_frame_0_and_its_report_says_no_resume(tmp_path):
    # Several faces (docs/architecture.md §7) do not resume (§10): the report must not claim any reuse.
    job = resumable(tmp_path, write_two_face_clip(tmp_path / "two.mp4", frames=10), "restored")
    first = restore_video(job, ClassicalEngine(), ignore_progress)
    for path in (job.output, job.preview_video, job.contact_sheet):
        path.unlink()  # as if killed before publication

    engine = CountingEngine()
    again = restore_video(job, engine, ignore_progress)

    restored = [track for track in again.media.face_tracking["tracks"] if track["restored_by"]]
    assert len(restored) == 2 and first.resume is again.resume is None
    assert engine.crops_read == 20  # both faces' 10 frames restored again, from frame 0
