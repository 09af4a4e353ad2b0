"""restore_video end to end on real encoded clips: what comes out, what is refused, and what is reported."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from svfrd.config import FacesConfig, OutputConfig
from svfrd.domain import Task
from svfrd.engines.classical import ClassicalEngine
from svfrd.engines.interface import FaceCrop, RestoreRequest
from svfrd.errors import BadInputError
from svfrd.media.crop import tracked_crops
from svfrd.media.pipeline import PipelineJob, restore_video
from svfrd.media.tracking import scan_faces, select_subject
from svfrd.media.video_io import VideoWriter, iter_frames, probe
from tests.helpers.media_clips import (
    NTSC_FPS,
    face_model_path,
    moving_face_frames,
    no_face_frames,
    write_clip,
    write_moving_face_clip,
    write_no_face_clip,
    write_truncated_copy,
)


class NegativeEngine:
    """Test double: 'restores' every crop to its photographic negative, and remembers what it was given."""

    name = "test-negative"
    option_names = frozenset({"steps"})

    def __init__(self):
        self.requests: list[RestoreRequest] = []
        self.crops_seen: list[FaceCrop] = []

    def check(self, request):
        self.requests.append(request)

    def restore(self, request, crops, progress):
        for i, crop in enumerate(crops):
            if i < 3:
                self.crops_seen.append(crop)
            progress("restore", i + 1, len(crops))
            yield 255 - crop.image

    def warnings(self):
        return []


def make_job(folder: Path, source: Path, **changes) -> PipelineJob:
    job = PipelineJob(
        source=source,
        output=folder / "out.mp4",
        tasks=frozenset({Task.BFR}),
        seed=7,
        mask_path=None,
        reference_path=None,
        options={},
        faces=FacesConfig(crop="tracked", model=face_model_path()),
        output_cfg=OutputConfig(outbox=folder, done=folder, failed=folder, mode="full_frame", crf=12, preview=True),
    )
    return replace(job, **changes)


def ignore_progress(stage, done, total):
    pass


def audio_seconds(path: Path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return float(stream.duration * stream.time_base)


@pytest.fixture(scope="module")
def ntsc_clip(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pipeline")
    return write_moving_face_clip(folder / "ntsc.mp4", frames=24, width=241, height=181, fps=NTSC_FPS, audio=True)


@pytest.fixture(scope="module")
def negative_run(ntsc_clip, tmp_path_factory):
    folder = tmp_path_factory.mktemp("negative")
    engine = NegativeEngine()
    stages = []
    job = make_job(folder, ntsc_clip, options={"steps": 3})
    result = restore_video(job, engine, lambda stage, done, total: stages.append((stage, done, total)))
    return job, result, engine, stages


def test_output_keeps_the_even_size_frame_count_duration_fps_and_audio(ntsc_clip, negative_run):
    job, result, _, _ = negative_run
    before, after = probe(ntsc_clip), probe(job.output)
    assert (after.width, after.height) == (240, 180)  # 4:2:0 needs even sizes; see the test below
    assert after.frames == before.frames == result.frames == 24
    assert after.fps == before.fps == NTSC_FPS
    assert abs(after.duration - before.duration) <= 1 / float(before.fps)
    assert audio_seconds(job.output) == pytest.approx(audio_seconds(ntsc_clip), abs=0.03)


def test_face_region_changes_and_pixels_far_from_the_face_do_not(ntsc_clip, negative_run, tmp_path):
    job, _, _, _ = negative_run
    # Baseline: the same clip decoded and re-encoded at the same quality, with no face work at all.
    info = probe(ntsc_clip)
    with VideoWriter(tmp_path / "plain.mp4", info, crf=job.output_cfg.crf) as writer:
        for frame in iter_frames(ntsc_clip):
            writer.write(frame.image, frame.pts)
    crops = tracked_crops(select_subject(scan_faces(ntsc_clip, info, face_model_path())), 12)
    far_restored, far_plain, face_diffs = [], [], []
    for box, before, after, plain in zip(
        crops.boxes, iter_frames(ntsc_clip), iter_frames(job.output), iter_frames(tmp_path / "plain.mp4")
    ):
        before = replace(before, image=before.image[:180, :240])  # the output lost the odd column and row
        far = np.ones(before.image.shape[:2], bool)
        x1, y1, x2, y2 = box.pixel_bounds()
        far[max(0, y1 - 16) : y2 + 16, max(0, x1 - 16) : x2 + 16] = False
        difference = np.abs(before.image.astype(int) - after.image.astype(int)).max(axis=2)
        far_restored.append(difference[far])
        far_plain.append(np.abs(before.image.astype(int) - plain.image.astype(int)).max(axis=2)[far])
        cx, cy = int(box.centre[0]), int(box.centre[1])
        face_diffs.append(difference[cy - 10 : cy + 10, cx - 10 : cx + 10].mean())
    restored_error, plain_error = np.concatenate(far_restored).mean(), np.concatenate(far_plain).mean()
    print(f"pixels 16+ px outside the crop square: mean |diff| {restored_error:.3f} after restoring, "
          f"{plain_error:.3f} after a plain re-encode; face centre mean |diff| {np.mean(face_diffs):.1f}")
    # Pasting leaves them alone (bit-identical before encoding, see test_media_paste); only the H.264 round
    # trip touches them, exactly as much as a plain re-encode does.
    assert restored_error < plain_error + 0.1
    assert min(face_diffs) > 60


def test_engine_gets_the_request_and_the_crops(negative_run):
    _, _, engine, _ = negative_run
    request = engine.requests[0]
    assert request.tasks == frozenset({Task.BFR}) and request.seed == 7
    assert dict(request.options) == {"steps": 3}
    crop = engine.crops_seen[0]
    assert crop.image.shape == (512, 512, 3) and crop.image.dtype == np.uint8
    assert crop.has_face and crop.mask is None


def test_progress_covers_every_stage_up_to_the_last_frame(negative_run):
    _, _, _, stages = negative_run
    names = [s for s, _, _ in stages]
    assert names.index("probe") < names.index("faces") < names.index("encode")
    assert ("faces", 24, 24) in stages and ("encode", 24, 24) in stages


def test_the_result_records_the_facts_for_the_report(negative_run):
    _, result, _, _ = negative_run
    media = result.media
    assert result.frames == 24 and media.fps == "30000/1001" and media.audio_streams == 1
    assert media.frame_size["input"] == [241, 181]
    assert media.options == {"crop": "tracked", "crf": 12, "output_mode": "full_frame", "restore": "all",
                             "min_size": 0.05, "max_faces": 8}
    assert media.frames_with_face == 24
    assert media.crop_jitter["jitter_rel"] < 0.005
    assert media.face_tracking["most_faces_in_a_frame"] == 1
    assert set(result.timings) == {"probe_s", "faces_s", "restore_and_encode_s", "total_s"}


def video_format(path: Path) -> tuple[str, str, int, int]:
    """(pixel format, H.264 profile, width, height) of the video stream, as PyAV reads them."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        context = stream.codec_context
        return context.pix_fmt, context.profile, context.width, context.height


def test_an_odd_sized_video_is_written_in_4_2_0_cropped_by_one_pixel_and_the_report_says_so(ntsc_clip, tmp_path):
    # 241x181: both dimensions odd. Before, the output kept that size as High 4:4:4, which browsers,
    # phones and QuickTime do not play.
    job = make_job(tmp_path, ntsc_clip, preview_video=tmp_path / "p.mp4", contact_sheet=tmp_path / "s.png")
    result = restore_video(job, NegativeEngine(), ignore_progress)
    pix_fmt, profile, width, height = video_format(job.output)
    assert pix_fmt == "yuv420p" and "4:4:4" not in profile and profile in {"High", "Main", "Baseline"}
    assert (width, height) == (240, 180)
    size = result.media.frame_size
    assert size["input"] == [241, 181] and size["output"] == [240, 180]
    assert size["adjusted"].startswith("cropped the last column (right edge) and the last row (bottom edge)")
    assert video_format(tmp_path / "p.mp4")[0] == "yuv420p"  # the preview too


def test_an_even_sized_video_keeps_its_size_and_says_nothing_was_adjusted(tmp_path):
    source = write_moving_face_clip(tmp_path / "even.mp4", frames=6, width=160, height=120)
    result = restore_video(make_job(tmp_path, source), NegativeEngine(), ignore_progress)
    assert video_format(tmp_path / "out.mp4") == ("yuv420p", "High", 160, 120)
    assert result.media.frame_size == {"input": [160, 120], "output": [160, 120], "adjusted": None}


def test_classical_engine_end_to_end_with_previews(tmp_path):
    source = write_moving_face_clip(tmp_path / "small.mp4", frames=8, width=160, height=120)
    job = make_job(tmp_path, source, preview_video=tmp_path / "preview.mp4", contact_sheet=tmp_path / "sheet.png")
    result = restore_video(job, ClassicalEngine(), ignore_progress)
    assert not any("ignores the options" in w for w in result.warnings)
    assert probe(job.output).frames == 8
    preview = probe(tmp_path / "preview.mp4")
    assert preview.frames == 8 and preview.width > 2 * 150  # before and after side by side
    sheet = Image.open(tmp_path / "sheet.png")
    # 4 rows (frames 0, 2, 5, 7), each: frame before | after | face crop before | after, at 120 px high.
    assert sheet.size == (160 + 4 + 160 + 4 + 120 + 4 + 120, 4 * (120 + 4))


def test_crop_output_mode_writes_the_512_face_video(ntsc_clip, tmp_path):
    job = make_job(tmp_path, ntsc_clip, options={"output_mode": "crop", "crop": "reference"})
    result = restore_video(job, NegativeEngine(), ignore_progress)
    out = probe(job.output)
    assert (out.width, out.height, out.frames) == (512, 512, 24)
    assert video_format(job.output)[0] == "yuv420p"
    assert result.media.options["crop"] == "reference" and result.media.options["output_mode"] == "crop"
    assert result.media.frame_size["adjusted"] is None  # the crop is 512x512 whatever the source


def test_video_without_any_face_fails_clearly(tmp_path):
    source = write_no_face_clip(tmp_path / "wall.mp4")
    with pytest.raises(BadInputError, match=r"no face found in wall.mp4: svfrd restores faces"):
        restore_video(make_job(tmp_path, source), NegativeEngine(), ignore_progress)


def test_truncated_video_fails_clearly(ntsc_clip, tmp_path):
    source = write_truncated_copy(ntsc_clip, tmp_path / "cut.mp4", keep=0.6)
    with pytest.raises(BadInputError, match="cut.mp4 is not a readable video"):
        restore_video(make_job(tmp_path, source), NegativeEngine(), ignore_progress)


def test_wrong_size_mask_fails_before_any_restoring(ntsc_clip, tmp_path):
    Image.new("L", (300, 300)).save(tmp_path / "mask.png")
    job = make_job(tmp_path, ntsc_clip, tasks=frozenset({Task.INPAINT}), mask_path=tmp_path / "mask.png")
    engine = NegativeEngine()
    with pytest.raises(BadInputError, match=r"mask.png is 300x300.*241x181.*512x512"):
        restore_video(job, engine, ignore_progress)
    assert engine.crops_seen == []


def test_frame_mask_reaches_the_engine_mapped_into_the_crop(ntsc_clip, tmp_path):
    mask = np.zeros((181, 241), np.uint8)
    mask[100:110, :] = 255  # a bar across the whole frame
    Image.fromarray(mask).save(tmp_path / "mask.png")
    job = make_job(tmp_path, ntsc_clip, tasks=frozenset({Task.BFR, Task.INPAINT}), mask_path=tmp_path / "mask.png")
    engine = NegativeEngine()
    result = restore_video(job, engine, ignore_progress)
    crop_mask = engine.crops_seen[0].mask
    assert crop_mask.shape == (512, 512) and crop_mask.any() and not crop_mask.all()
    assert crop_mask.all(axis=1).any()  # the bar spans the crop's full width
    assert result.media.mask == "frame"


def test_classical_engine_refuses_colorization_before_decoding(tmp_path):
    job = make_job(tmp_path, tmp_path / "never-read.mp4", tasks=frozenset({Task.COLORIZE}))
    with pytest.raises(BadInputError, match="colorization needs the SVFR model weights"):
        restore_video(job, ClassicalEngine(), ignore_progress)


def test_reference_face_image_reaches_the_engine(ntsc_clip, tmp_path):
    Image.new("RGB", (100, 120), (200, 150, 120)).save(tmp_path / "me.jpg")
    engine = NegativeEngine()
    restore_video(make_job(tmp_path, ntsc_clip, reference_path=tmp_path / "me.jpg"), engine, ignore_progress)
    assert engine.requests[0].reference_face.shape == (120, 100, 3)


def test_unreadable_reference_image_fails_clearly(ntsc_clip, tmp_path):
    (tmp_path / "me.png").write_bytes(b"nope")
    with pytest.raises(BadInputError, match="reference image me.png cannot be read"):
        job = make_job(tmp_path, ntsc_clip, reference_path=tmp_path / "me.png")
        restore_video(job, NegativeEngine(), ignore_progress)


def test_phone_video_with_rotation_is_restored_upright_and_keeps_its_rotation(tmp_path):
    source = write_clip(tmp_path / "phone.mp4", moving_face_frames(8, width=120, height=160), rotation=270)
    engine = NegativeEngine()
    result = restore_video(make_job(tmp_path, source), engine, ignore_progress)
    out = probe(tmp_path / "out.mp4")
    assert (out.rotation, out.width, out.height) == (270, 120, 160)
    assert result.media.frames_with_face == 8  # found upright: MediaPipe needs the face the right way up
    assert result.media.rotation == 270


def test_a_failing_engine_leaves_no_partial_output(ntsc_clip, tmp_path):
    class BrokenEngine(NegativeEngine):
        def restore(self, request, crops, progress):
            for i, face in enumerate(super().restore(request, crops, progress)):
                if i == 5:
                    raise RuntimeError("engine blew up")
                yield face

    job = make_job(tmp_path, ntsc_clip, preview_video=tmp_path / "p.mp4", contact_sheet=tmp_path / "s.png")
    with pytest.raises(RuntimeError, match="engine blew up"):
        restore_video(job, BrokenEngine(), ignore_progress)
    assert not job.output.exists() and not (tmp_path / "p.mp4").exists()
    assert ntsc_clip.exists()


def test_an_engine_returning_too_few_crops_is_caught(ntsc_clip, tmp_path):
    class ShortEngine(NegativeEngine):
        def restore(self, request, crops, progress):
            for i, face in enumerate(super().restore(request, crops, progress)):
                if i < 10:
                    yield face

    with pytest.raises(RuntimeError, match="returned 10 crops for 24 frames"):
        restore_video(make_job(tmp_path, ntsc_clip), ShortEngine(), ignore_progress)


def test_frames_without_a_face_pass_through_unchanged(tmp_path):
    frames = moving_face_frames(8, width=160, height=120) + no_face_frames(14, width=160, height=120)
    source = write_clip(tmp_path / "leaves.mp4", frames, crf=0)
    result = restore_video(make_job(tmp_path, source), NegativeEngine(), ignore_progress)
    # The face leaves with a scene cut, so it is not held over into the new shot.
    assert result.media.frames_with_face == 8
    assert "14 of 22 frames had no face and were left unchanged" in result.warnings
    for frame_in, frame_out in zip(iter_frames(source), iter_frames(tmp_path / "out.mp4")):
        difference = np.abs(frame_in.image.astype(int) - frame_out.image.astype(int)).mean()
        if frame_in.index >= 8:
            assert difference < 3, frame_in.index  # only the encoder touched it
        elif frame_in.index < 8:
            assert difference > 10, frame_in.index  # the negative face is in


def test_variable_frame_rate_timestamps_survive_the_pipeline(tmp_path):
    pts = [0, 1000, 1500, 3500, 4000, 4100, 6000, 6400]
    source = write_clip(tmp_path / "vfr.mp4", moving_face_frames(len(pts)), pts=pts, time_base=Fraction(1, 10000))
    restore_video(make_job(tmp_path, source), NegativeEngine(), ignore_progress)
    out = probe(tmp_path / "out.mp4")
    written = [float(f.pts * out.time_base) for f in iter_frames(tmp_path / "out.mp4")]
    assert written == pytest.approx([p / 10000 for p in pts], abs=1e-4)


class ReadAheadEngine(NegativeEngine):
    """Test double: reads every crop before it returns any, as SVFR does with a segment."""

    def restore(self, request, crops, progress):
        images = [crop.image for crop in crops]
        for i, image in enumerate(images):
            progress("restore", i + 1, len(images))
            yield 255 - image


def count_decodes(monkeypatch) -> list[str]:
    """Spy: the name of the video at each decode the pipeline starts (face pass, crops, paste-back)."""
    import svfrd.media.multiface as multiface
    import svfrd.media.tracking as tracking

    opened = []

    def spying(module):
        real = module.iter_frames

        def iter_frames_spy(path, *args, **kwargs):
            opened.append(Path(path).name)
            return real(path, *args, **kwargs)

        monkeypatch.setattr(module, "iter_frames", iter_frames_spy)

    spying(tracking)  # the face pass
    spying(multiface)  # the crop stream and decode_again, which serve the pipeline
    return opened


def test_a_job_decodes_its_video_twice_and_pastes_into_the_frames_the_engine_read(ntsc_clip, tmp_path, monkeypatch):
    # Before, three decodes: face pass, the engine's crops, and again for paste-back.
    opened = count_decodes(monkeypatch)
    restore_video(make_job(tmp_path, ntsc_clip), NegativeEngine(), ignore_progress)
    assert opened == ["ntsc.mp4", "ntsc.mp4"]


def test_an_engine_reading_far_ahead_gets_the_same_output_once_kept_frames_exceed_their_budget(
    ntsc_clip, tmp_path, monkeypatch
):
    # MediaPipe's boxes vary a little from run to run, and so does libx264's output for the same frames: both
    # runs get the same face pass, and the frames handed to the encoder are compared.
    seen = scan_faces(ntsc_clip, probe(ntsc_clip), face_model_path())
    monkeypatch.setattr("svfrd.media.pipeline.scan_faces", lambda *args, **kwargs: seen)
    encoded: dict[str, list[np.ndarray]] = {}
    real_write = VideoWriter.write

    def write_spy(writer, image, pts):
        encoded.setdefault(writer.path.name, []).append(image.copy())
        real_write(writer, image, pts)

    monkeypatch.setattr(VideoWriter, "write", write_spy)
    restore_video(make_job(tmp_path, ntsc_clip, output=tmp_path / "normal.mp4"), NegativeEngine(), ignore_progress)
    # Room for 5 frames of 241x181: the engine reads all 24 before returning any, so paste-back decodes the
    # video again for frames 5 and on, instead of holding the whole video in memory.
    monkeypatch.setattr("svfrd.media.pipeline.KEPT_FRAMES_BYTES", 5 * 241 * 181 * 3)
    opened = count_decodes(monkeypatch)
    ahead = make_job(tmp_path, ntsc_clip, output=tmp_path / "ahead.mp4")
    result = restore_video(ahead, ReadAheadEngine(), ignore_progress)
    assert len(opened) == 2 and result.frames == 24  # the crops' decode and paste-back's (face pass: reused)
    assert len(encoded["normal.mp4"]) == len(encoded["ahead.mp4"]) == 24
    for a, b in zip(encoded["normal.mp4"], encoded["ahead.mp4"]):
        assert np.array_equal(a, b)


def test_decoding_cropping_and_paste_back_run_on_their_own_threads(ntsc_clip, tmp_path, monkeypatch):
    import threading

    import svfrd.media.pipeline as pipeline

    threads = {}

    def spy(name, real):
        def wrapper(*args, **kwargs):
            threads.setdefault(name, set()).add(threading.current_thread().name)
            return real(*args, **kwargs)

        monkeypatch.setattr(pipeline, name, wrapper)

    spy("crop_face", pipeline.crop_face)
    spy("paste_back", pipeline.paste_back)
    engine_threads = set()

    class RecordingEngine(NegativeEngine):
        def restore(self, request, crops, progress):
            for face in super().restore(request, crops, progress):
                engine_threads.add(threading.current_thread().name)
                yield face

    result = restore_video(make_job(tmp_path, ntsc_clip), RecordingEngine(), ignore_progress)
    # The engine runs on the caller's thread (it reports progress, which the worker takes there only).
    assert engine_threads == {threading.current_thread().name}
    assert threads == {"crop_face": {"svfrd-decode+crop"}, "paste_back": {"svfrd-paste+encode"}}
    assert {"decode+crop", "paste", "encode", "faces: detector", "faces: decode+cuts"} <= set(result.stage_busy_s)


@pytest.mark.parametrize("cancel_at", ["restore", "encode"])
def test_cancelling_stops_every_stage_and_leaves_no_output(ntsc_clip, tmp_path, cancel_at):
    import threading

    from svfrd.errors import JobCancelled

    def progress(stage, done, total):
        if stage == cancel_at and done >= 10:
            raise JobCancelled("cancelled by the user")

    job = make_job(tmp_path, ntsc_clip, preview_video=tmp_path / "p.mp4", contact_sheet=tmp_path / "s.png")
    with pytest.raises(JobCancelled):
        restore_video(job, NegativeEngine(), progress)
    assert not job.output.exists() and not (tmp_path / "p.mp4").exists()
    assert [t.name for t in threading.enumerate() if t.name.startswith("svfrd-")] == []
