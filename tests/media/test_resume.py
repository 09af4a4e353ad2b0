"""A resumed restoration (svfrd.media.pipeline with a checkpoint folder, svfrd.media.segments): a run stopped
part-way leaves its face pass and finished output segments, and the next run reuses them, restoring only from
the first frame no segment holds; its output equals an uninterrupted run's, frame for frame. With several faces
the finished tracks' restored crops are reused too."""

from __future__ import annotations

import os
import shutil
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

    # The stop lands at the first "encode" report at or after frame 17; reports are sparser on a loaded machine,
    # so 3, 4 or 5 whole segments of 5 frames may be done by then.
    reused = result.resume["segments_reused"]
    assert 3 <= reused < FRAMES // 5
    restart = 5 * reused - 4  # the engine's context (2 x 2 frames) before the first missing segment
    assert result.resume == {"face_pass_reused": True, "from_frame": 5 * reused, "segments_reused": reused,
                             "frames_reused": 5 * reused, "engine_restarted_at_frame": restart}
    assert engine.crops_read == FRAMES - restart
    assert_same_frames(job.output, expected)
    assert probe(job.output).audio and probe(job.output).duration == probe(clip).duration
    assert (result.frames, result.media, result.warnings) == (whole.frames, whole.media, whole.warnings)
    assert job.preview_video.is_file() and probe(job.preview_video).frames == FRAMES


def test_a_torn_segments_checkpoint_is_passed_over_for_the_one_before(tmp_path, clip, uninterrupted):
    _, expected = uninterrupted
    job = resumable(tmp_path, clip, "torn")
    with pytest.raises(Stopped):
        restore_video(job, ClassicalEngine(), stop_at_encoded_frame(17))
    # What the untorn checkpoints give (how many segments were done at the stop varies with the machine's load).
    untorn = replace(job, output=tmp_path / "untorn.mp4", checkpoints=tmp_path / "checkpoints-untorn",
                     preview_video=tmp_path / "untorn.preview.mp4", contact_sheet=tmp_path / "untorn.contact.png")
    shutil.copytree(job.checkpoints, untorn.checkpoints)
    done = restore_video(untorn, ClassicalEngine(), ignore_progress).resume["segments_reused"]
    newest = sorted(job.checkpoints.glob("segments-*.ckpt"))[-1]
    os.truncate(newest, newest.stat().st_size // 2)

    result = restore_video(job, ClassicalEngine(), ignore_progress)

    assert done >= 3
    assert (result.resume["from_frame"], result.resume["segments_reused"]) == (5 * (done - 1), done - 1)
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


# Several faces (docs/architecture.md §7 and §10): each finished track's restored crops and the composite
# output's segments are reused.


@pytest.fixture(scope="module")
def two_faces(tmp_path_factory) -> Path:
    return write_two_face_clip(tmp_path_factory.mktemp("two") / "two.mp4", frames=FRAMES)


@pytest.fixture(scope="module")
def two_faces_uninterrupted(two_faces, tmp_path_factory):
    folder = tmp_path_factory.mktemp("two-uninterrupted")
    result = restore_video(resumable(folder, two_faces, "whole"), ClassicalEngine(), ignore_progress)
    restored = [track for track in result.media.face_tracking["tracks"] if track["restored_by"]]
    assert len(restored) == 2 and result.resume is None
    return result, [frame.image for frame in iter_frames(folder / "whole.mp4")]


def stop_at(stage_name: str, frame: int):
    def progress(stage, done, total):
        if stage == stage_name and done >= frame:
            raise Stopped()
    return progress


def test_several_faces_stopped_while_encoding_reuse_every_track_and_segment(tmp_path, two_faces,
                                                                          two_faces_uninterrupted):
    whole, expected = two_faces_uninterrupted
    job = resumable(tmp_path, two_faces, "resumed")
    with pytest.raises(Stopped):
        restore_video(job, ClassicalEngine(), stop_at_encoded_frame(17))
    assert not job.output.exists()

    engine = CountingEngine()
    result = restore_video(job, engine, ignore_progress)

    reused = result.resume["segments_reused"]  # 3 or more: see the single-face test
    assert 3 <= reused < FRAMES // 5
    assert result.resume == {"face_pass_reused": True, "from_frame": 5 * reused, "segments_reused": reused,
                             "frames_reused": 5 * reused, "tracks_reused": 2, "tracks_restarted": []}
    assert engine.crops_read == 0
    assert_same_frames(job.output, expected)
    assert (result.frames, result.media, result.warnings) == (whole.frames, whole.media, whole.warnings)
    assert job.preview_video.is_file() and probe(job.preview_video).frames == FRAMES


def test_several_faces_stopped_in_the_second_track_reuse_the_first(tmp_path, two_faces, two_faces_uninterrupted):
    _, expected = two_faces_uninterrupted
    job = resumable(tmp_path, two_faces, "second")
    with pytest.raises(Stopped):
        restore_video(job, ClassicalEngine(), stop_at("face 2 of 2: restore", 20))

    engine = CountingEngine()
    result = restore_video(job, engine, ignore_progress)

    assert result.resume == {"face_pass_reused": True, "from_frame": 0, "segments_reused": 0,
                             "frames_reused": 0, "tracks_reused": 1, "tracks_restarted": []}
    assert engine.crops_read == FRAMES  # the second face only, from its first frame
    assert_same_frames(job.output, expected)


def test_several_faces_with_a_torn_tracks_checkpoint_restart_the_engine_where_the_output_needs_it(
        tmp_path, two_faces, two_faces_uninterrupted):
    _, expected = two_faces_uninterrupted
    job = resumable(tmp_path, two_faces, "torn")
    with pytest.raises(Stopped):
        restore_video(job, ClassicalEngine(), stop_at_encoded_frame(17))
    newest = sorted(job.checkpoints.glob("tracks-*.ckpt"))[-1]
    os.truncate(newest, newest.stat().st_size // 2)  # the one before names the first track only

    engine = CountingEngine()
    result = restore_video(job, engine, ignore_progress)

    start = result.resume["from_frame"]  # 15 or later: see the single-face test
    assert result.resume["tracks_reused"] == 1 and 15 <= start < FRAMES and start % 5 == 0
    # The second face is needed from the first missing segment on; the engine restarts its context (4 frames)
    # before.
    assert result.resume["tracks_restarted"] == [{"track": 2, "at_frame": start - 4}]
    assert engine.crops_read == FRAMES - (start - 4)
    assert_same_frames(job.output, expected)


def test_several_faces_whose_spool_changed_restore_that_track_again(tmp_path, two_faces, two_faces_uninterrupted):
    _, expected = two_faces_uninterrupted
    job = resumable(tmp_path, two_faces, "changed")
    with pytest.raises(Stopped):
        restore_video(job, ClassicalEngine(), stop_at("face 2 of 2: restore", 1))
    spool = job.checkpoints / "track-1.png-spool"
    spool.write_bytes(spool.read_bytes()[:-10])  # a damaged disk

    engine = CountingEngine()
    result = restore_video(job, engine, ignore_progress)

    assert result.resume["tracks_reused"] == 0 and engine.crops_read == 2 * FRAMES
    assert_same_frames(job.output, expected)
