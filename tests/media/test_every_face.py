"""Every face in the picture (`[faces] restore = "all"`): tracks per person, one engine run each, one
composite; on real clips of three different real people (tests/helpers/media_clips.py)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from svfrd.config import FacesConfig
from svfrd.domain import Task
from svfrd.errors import JobCancelled
from svfrd.media.crop import crop_face, tracked_crops
from svfrd.media.faces import DetectedFace
from svfrd.media.multiface import CropSpool, _FacesInView, composite_frame, plan_tracks
from svfrd.media.paste import paste_back
from svfrd.media.pipeline import restore_video
from svfrd.media.tracking import FaceTrack, link_face_tracks, scan_faces, select_subject
from svfrd.media.video_io import VideoWriter, iter_frames, probe
from tests.helpers.media_clips import crossing_frames, face_model_path, people_frames, write_clip
from tests.media.test_pipeline_restore import ignore_progress, make_job

MAX_GAP = 12


class RunRecorder:
    """Test double: restores each crop to its negative, and keeps, per engine run, each crop's centre colour
    saturation (astronaut: colour; the other two people: grey) and whether the crop had a face."""

    name = "test-recorder"
    option_names = frozenset()

    def __init__(self):
        self.runs: list[list[tuple[float, bool]]] = []

    def check(self, request):
        pass

    def restore(self, request, crops, progress):
        run: list[tuple[float, bool]] = []
        self.runs.append(run)
        for crop in crops:
            centre = cv2.cvtColor(crop.image[192:320, 192:320], cv2.COLOR_RGB2HSV)[:, :, 1]
            run.append((float(centre.mean()), crop.has_face))
            yield 255 - crop.image

    def warnings(self):
        return []


def every_face_job(folder: Path, clip: Path, **faces):
    job = make_job(folder, clip)
    return replace(job, faces=replace(FacesConfig(crop="tracked", model=face_model_path()), **faces),
                   output_cfg=replace(job.output_cfg, preview=False))


@pytest.fixture(scope="module")
def people_clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("people") / "people.mp4", people_frames(12))


@pytest.fixture(scope="module")
def people_pass(people_clip):
    info = probe(people_clip)
    return info, scan_faces(people_clip, info, face_model_path(), max_faces=8)


def test_two_people_get_a_track_each_and_only_their_crops_change(people_clip, people_pass):
    info, seen = people_pass
    plans = plan_tracks(link_face_tracks(seen, MAX_GAP), info.height, 0.05, 8)
    assert [p.skipped for p in plans] == [None, None]
    crops = [tracked_crops(p.track.as_subject(seen.frames, seen.shots()), MAX_GAP) for p in plans]
    centres = sorted(c.boxes[0].centre[0] for c in crops)
    assert centres[0] < 160 < 250 < centres[1]  # the astronaut left, the cameraman right
    for frame in iter_frames(people_clip):
        faces = [(255 - crop_face(frame.image, c.boxes[frame.index]), c.boxes[frame.index]) for c in crops]
        after = composite_frame(frame.image, faces, in_place=False)
        outside = np.ones(after.shape[:2], bool)
        for _, box in faces:
            x1, y1, x2, y2 = box.pixel_bounds_in_frame(info.width, info.height)
            outside[y1:y2, x1:x2] = False
            cx, cy = (int(v) for v in box.centre)
            assert np.abs(after[cy - 8 : cy + 8, cx - 8 : cx + 8].astype(int)
                          - frame.image[cy - 8 : cy + 8, cx - 8 : cx + 8]).mean() > 30
        assert outside.any() and np.array_equal(after[outside], frame.image[outside])


def test_the_larger_face_is_pasted_last_and_each_face_is_blended_once(people_clip):
    frame = next(iter_frames(people_clip)).image
    from svfrd.media.crop import CropBox

    small, large = CropBox(150, 20, 120), CropBox(100, 10, 160)  # overlapping squares
    grey, white = np.full((512, 512, 3), 40, np.uint8), np.full((512, 512, 3), 220, np.uint8)
    expected = paste_back(paste_back(frame, grey, small), white, large)
    for order in ([(grey, small), (white, large)], [(white, large), (grey, small)]):
        assert np.array_equal(composite_frame(frame, order, in_place=False), expected)


def test_a_third_person_entering_halfway_gets_a_track_that_starts_there(tmp_path):
    clip = write_clip(tmp_path / "third.mp4", people_frames(16, third_from=8))
    engine = RunRecorder()
    result = restore_video(every_face_job(tmp_path, clip), engine, ignore_progress)
    tracks = result.media.face_tracking["tracks"]
    assert [t["skipped"] for t in tracks] == [None, None, None]
    starts = sorted(t["frame_span"][0] for t in tracks)
    assert starts[:2] == [0, 0] and 8 <= starts[2] <= 9
    assert sorted(len(run) for run in engine.runs)[0] == 16 - starts[2]  # the engine saw that range only
    assert result.media.options["restore"] == "all" and result.frames == 16


def test_two_faces_crossing_keep_their_identity(tmp_path):
    frames, truth = crossing_frames(30)
    clip = write_clip(tmp_path / "crossing.mp4", frames)
    info = probe(clip)
    seen = scan_faces(clip, info, face_model_path(), max_faces=8)
    plans = [p for p in plan_tracks(link_face_tracks(seen, MAX_GAP), info.height, 0.05, 8) if p.skipped is None]
    assert len(plans) == 2
    for plan in plans:
        crops = tracked_crops(plan.track.as_subject(seen.frames, seen.shots()), MAX_GAP)
        nearest = set()
        for i in np.flatnonzero(crops.has_face):
            cx, cy = crops.boxes[i].centre
            nearest.add(min(truth[i], key=lambda who: np.hypot(cx - truth[i][who][0], cy - truth[i][who][1])))
        assert len(nearest) == 1 and crops.has_face.sum() >= 28  # one person, all through the clip
    # The crops each engine run sees show one person: the astronaut in colour, the LFW face in grey.
    engine = RunRecorder()
    restore_video(every_face_job(tmp_path, clip), engine, ignore_progress)
    assert len(engine.runs) == 2
    kinds = [{saturation > 40 for saturation, face in run if face} for run in engine.runs]
    assert sorted(map(tuple, kinds)) == [(False,), (True,)]


def test_restore_largest_is_the_largest_face_pasted_alone(tmp_path, people_clip, people_pass):
    info, _ = people_pass
    job = every_face_job(tmp_path, people_clip, restore="largest")
    engine = RunRecorder()
    result = restore_video(job, engine, ignore_progress)
    assert len(engine.runs) == 1 and "tracks" not in result.media.face_tracking
    assert "up to 2 faces in a frame; the largest over time was restored" in result.warnings
    # What svfrd did before every face was restored: the subject of select_subject, pasted alone.
    crops = tracked_crops(select_subject(scan_faces(people_clip, info, face_model_path()), MAX_GAP), MAX_GAP)
    expected = tmp_path / "expected.mp4"
    with VideoWriter(expected, info, crf=job.output_cfg.crf, audio_source=people_clip) as writer:
        for frame in iter_frames(people_clip):
            box = crops.boxes[frame.index]
            image = paste_back(frame.image, 255 - crop_face(frame.image, box), box) if crops.has_face[
                frame.index] else frame.image
            writer.write(image, frame.pts)
    # MediaPipe's boxes and libx264's output vary a little between runs of the same frames, so the frames are
    # held to "the same within a level on average": a face left out or another face pasted differs by tens.
    for ours, theirs in zip(iter_frames(job.output), iter_frames(expected), strict=True):
        difference = np.abs(ours.image.astype(np.int16) - theirs.image.astype(np.int16))
        assert difference.mean() < 1.0, f"frame {ours.index}: mean difference {difference.mean():.2f}"


def test_faces_below_min_size_are_reported_and_left_alone(tmp_path, people_clip):
    engine = RunRecorder()
    result = restore_video(every_face_job(tmp_path, people_clip, min_size=0.36), engine, ignore_progress)
    tracks = result.media.face_tracking["tracks"]
    assert sorted(str(t["skipped"]) for t in tracks) == ["None", "too small"]
    assert len(engine.runs) == 1
    assert {"track", "frame_span", "typical_size", "restored_by", "skipped"} == set(tracks[0])
    assert any("1 were left as they are (too small" in note for note in result.warnings)


class MaskRecorder(RunRecorder):
    """Test double: keeps, per engine run, the mask each face crop came with."""

    def __init__(self):
        super().__init__()
        self.masks: list[list[np.ndarray]] = []

    def restore(self, request, crops, progress):
        masks: list[np.ndarray] = []
        self.masks.append(masks)
        for crop in crops:
            if crop.has_face:
                masks.append(crop.mask)
            yield 255 - crop.image


def test_a_frame_mask_reaches_every_face_crop_it_covers(tmp_path, people_clip):
    mask = np.zeros((200, 440), np.uint8)
    mask[95:105, :] = 255  # a bar across the whole frame, through both faces
    Image.fromarray(mask).save(tmp_path / "mask.png")
    job = replace(every_face_job(tmp_path, people_clip), tasks=frozenset({Task.BFR, Task.INPAINT}),
                  mask_path=tmp_path / "mask.png")
    engine = MaskRecorder()
    restore_video(job, engine, ignore_progress)
    assert len(engine.masks) == 2 and all(len(run) == 12 for run in engine.masks)
    bar_rows = []
    for run in engine.masks:
        for crop_mask in run:
            assert crop_mask.shape == (512, 512) and crop_mask.any() and not crop_mask.all()
            assert crop_mask.all(axis=1).any()  # the bar spans each crop's full width
        bar_rows.append(float(np.flatnonzero(run[0].any(axis=1)).mean()))
    assert abs(bar_rows[0] - bar_rows[1]) > 20  # mapped through each face's own crop square


class ProgressEngine(RunRecorder):
    """Test double: reports "restore" progress per crop, as the classical engine does; fails its run number
    `fail_run` (1-based) once it has restored half of its crops."""

    def __init__(self, fail_run: int | None = None):
        super().__init__()
        self.fail_run = fail_run

    def restore(self, request, crops, progress):
        run = len(self.runs) + 1
        progress("restore", 0, len(crops))
        for done, face in enumerate(super().restore(request, crops, progress), 1):
            if run == self.fail_run and done > len(crops) // 2:
                raise RuntimeError("the engine failed on this face")
            yield face
            progress("restore", done, len(crops))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "people.mp4")


def test_progress_over_several_faces_goes_forward_and_names_the_face(tmp_path, people_clip):
    reports = []
    restore_video(every_face_job(tmp_path, people_clip), ProgressEngine(),
                  lambda stage, done, total: reports.append((stage, done, total)))
    restore = [(stage, done, total) for stage, done, total in reports if stage.endswith(": restore")]
    assert [stage for stage, _, _ in restore] == ["face 1 of 2: restore"] * 13 + ["face 2 of 2: restore"] * 13
    assert [done for _, done, _ in restore] == sorted(done for _, done, _ in restore)  # never back to 0
    assert restore[-1][1:] == (24, 24) and restore[13][1] == 12  # the 2nd face goes on from the 1st's frames


@pytest.mark.parametrize("how", ["engine fails", "cancel"])
def test_a_run_stopped_on_the_second_face_leaves_no_output_and_no_spool(tmp_path, people_clip, how):
    job = every_face_job(tmp_path, people_clip)
    spools_seen = []

    def progress(stage, done, total):
        if stage.startswith("face 2 of 2") and done >= total * 3 // 4:
            spools_seen.extend(sorted(os.listdir(p)) for p in tmp_path.iterdir() if ".spool-" in p.name)
            if how == "cancel":
                raise JobCancelled("cancelled by the user (svfrd cancel)")

    engine = ProgressEngine(fail_run=2 if how == "engine fails" else None)
    with pytest.raises(RuntimeError if how == "engine fails" else JobCancelled):
        restore_video(job, engine, progress)
    assert len(engine.runs) == 2
    assert spools_seen[0] == ["track-1.png-spool", "track-2.png-spool"]  # on disk while the second face ran
    assert leftovers(tmp_path) == []


def test_each_tracks_crop_squares_cover_its_own_frames_only(tmp_path):
    clip = write_clip(tmp_path / "third.mp4", people_frames(16, third_from=8))
    info = probe(clip)
    seen = scan_faces(clip, info, face_model_path(), max_faces=8)
    plans = plan_tracks(link_face_tracks(seen, MAX_GAP), info.height, 0.05, 8)
    for plan in plans:
        plan.crops = tracked_crops(plan.track.as_window(), MAX_GAP)
        start, end = plan.frame_range
        assert len(plan.crops) == end - start and plan.has_face(start) and plan.has_face(end - 1)
        whole = tracked_crops(plan.track.as_subject(seen.frames, seen.shots()), MAX_GAP)
        assert [plan.box(i) for i in range(start, end)] == whole.boxes[start:end]  # the same squares
    assert sorted(p.frame_range[0] for p in plans)[-1] >= 8


def test_a_tracks_spool_is_closed_and_removed_once_the_output_has_passed_it(tmp_path):
    def track(x: float, frames: int) -> FaceTrack:
        points = np.zeros((5, 2), np.float32)
        return FaceTrack((0, 10), {i: DetectedFace(box=(x, 10.0, x + 40, 60.0), points5=points) for i in range(frames)})

    plans = plan_tracks([track(10, 4), track(100, 8)], 200, 0.0, 8)
    spools = {}
    for plan in plans:
        plan.crops = tracked_crops(plan.track.as_window(), MAX_GAP)
        spools[plan.number] = CropSpool(tmp_path / f"track-{plan.number}.png-spool")
        for _ in range(len(plan.crops)):
            spools[plan.number].write(np.full((512, 512, 3), plan.number, np.uint8))
        spools[plan.number].finish()
    in_view = _FacesInView(plans, spools)
    seen = [[int(face[0, 0, 0]) for face, _ in in_view.on(i)] for i in range(10)]
    assert seen == [[1, 2]] * 4 + [[1]] * 4 + [[]] * 2  # the larger track (more face area in all) first
    assert not spools[1].path.exists() and not spools[2].path.exists()
