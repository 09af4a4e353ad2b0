"""The video pipeline: one input video in, one restored video out.

    probe -> face pass (decode once: faces, scene cuts) -> crop squares per frame
          -> engine.restore(crops, decoded again on demand) -> paste back into a fresh decode of the frames
          -> encode (original timestamps, rotation, audio) -> previews

Every stage streams: the only whole-video state is a few numbers per frame (face boxes), so memory does not
grow with the video's length. The engine only ever sees 512x512 crops (`svfrd.engines.interface`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from svfrd.config import FacesConfig, LimitsConfig, OutputConfig
from svfrd.domain import CROP_SIZE, OPTIONS, Task, engine_options, mask_rule_problem
from svfrd.engines.interface import Engine, FaceCrop, ProgressReporter, RestoreRequest
from svfrd.errors import BadInputError
from svfrd.media.crop import FrameCrops, crop_face, crop_jitter, reference_crops, tracked_crops
from svfrd.media.masks import Mask, load_mask, load_reference_face
from svfrd.media.paste import paste_back
from svfrd.media.preview import PreviewMaker
from svfrd.media.tracking import SubjectTrack, scan_faces, select_subject
from svfrd.media.video_io import Frame, VideoInfo, VideoWriter, iter_frames, probe


@dataclass(frozen=True)
class PipelineJob:
    source: Path
    output: Path  # temp path in the outbox folder; the caller fsyncs and renames it
    tasks: frozenset[Task]
    seed: int
    mask_path: Path | None
    reference_path: Path | None
    options: dict
    faces: FacesConfig
    output_cfg: OutputConfig
    preview_video: Path | None = None
    contact_sheet: Path | None = None
    limits: LimitsConfig = LimitsConfig()


@dataclass(frozen=True)
class MediaFacts:
    """What the pipeline found and did, for the job report (laid out by svfrd.service.report, which documents
    each field)."""

    fps: str
    duration_s: float
    rotation: int
    audio_streams: int
    frame_size: dict  # {"input": [w, h], "output": [w, h], "adjusted": str | None}
    frames_with_face: int
    face_tracking: dict
    crop_jitter: dict
    mask: str | None  # "frame" | "crop" (the coordinates it was drawn in) | None
    options: dict  # the pipeline's options as applied: crop, crf, output_mode


@dataclass
class PipelineResult:
    frames: int
    media: MediaFacts
    warnings: list[str] = field(default_factory=list)
    #: Coarse wall-clock seconds per phase (probe_s, faces_s, restore_and_encode_s, total_s), for benchmarks.
    timings: dict[str, float] = field(default_factory=dict)


class VideoCropStream:
    """The crops of one video for the engine. Each iteration decodes the video again (bounded memory)."""

    def __init__(self, source: Path, crops: FrameCrops, mask: Mask | None, limits: LimitsConfig = LimitsConfig()):
        self.source, self.crops, self.mask, self.limits = source, crops, mask, limits

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def enlargement(self) -> float:
        """How much the face crops enlarge the video's own pixels (median over face frames; 1.0 or more).
        An engine may work at the face's own resolution with it (the classical engine does)."""
        sizes = [box.size for box, face in zip(self.crops.boxes, self.crops.has_face) if face]
        return max(1.0, CROP_SIZE / float(np.median(sizes))) if sizes else 1.0

    def __iter__(self) -> Iterator[FaceCrop]:
        for frame in _decode_again(self.source, len(self.crops), self.limits):
            box = self.crops.boxes[frame.index]
            mask = self.mask.for_crop(box) if self.mask is not None else None
            has_face = bool(self.crops.has_face[frame.index])
            yield FaceCrop(image=crop_face(frame.image, box), mask=mask, has_face=has_face)


def _decode_again(source: Path, expected: int, limits: LimitsConfig) -> Iterator[Frame]:
    """The video's first `expected` frames, decoded once more after the face pass counted them; a file that
    now decodes to fewer frames (changed or flaky storage) is bad input."""
    count = 0
    for frame in iter_frames(source, limits):
        if count == expected:
            return
        yield frame
        count += 1
    if count != expected:
        raise BadInputError(f"{source.name} decoded to {count} frames this time, {expected} before: the file "
                            "changed while it was restored, or its storage is unreliable. Drop a complete copy "
                            "into the inbox again.")


def restore_video(job: PipelineJob, engine: Engine, progress: ProgressReporter,
                  on_probed: Callable[[VideoInfo], None] | None = None) -> PipelineResult:
    """Restore the faces of `job.source` into `job.output`. See the module docstring for the stages.
    `on_probed` hears the video's facts once its probe passed `job.limits` (the worker sets the job's
    deadline from them). On failure the partial output and previews are removed; the source is never touched."""
    try:
        return _restore_video(job, engine, progress, on_probed)
    except BaseException:
        for path in (job.output, job.preview_video, job.contact_sheet):
            if path is not None and path.is_file():
                path.unlink()
        raise


def _restore_video(job: PipelineJob, engine: Engine, progress: ProgressReporter,
                   on_probed: Callable[[VideoInfo], None] | None) -> PipelineResult:
    started = time.monotonic()
    timings: dict[str, float] = {}
    crop_policy = _pipeline_option(job, "crop", job.faces.crop)
    output_mode = _pipeline_option(job, "output_mode", job.output_cfg.mode)
    crf = _pipeline_option(job, "crf", job.output_cfg.crf)

    request = RestoreRequest(
        tasks=frozenset(job.tasks),
        seed=job.seed,
        reference_face=load_reference_face(job.reference_path) if job.reference_path else None,
        options=engine_options(job.options),
    )
    problem = mask_rule_problem(job.tasks, has_mask=job.mask_path is not None)
    if problem:  # intake refuses such a job before it exists; this guards callers that build one themselves
        raise BadInputError(f"{job.source.name}: {problem}; give a mask with task 2, and only then")
    engine.check(request)

    progress("probe", 0, 1)
    info = probe(job.source, job.limits)
    if on_probed is not None:
        on_probed(info)
    progress("probe", 1, 1)
    warnings: list[str] = []
    mask = _load_task_mask(job, info, warnings)
    timings["probe_s"] = time.monotonic() - started

    mark = time.monotonic()
    seen = scan_faces(job.source, info, job.faces.model, lambda done, total: progress("faces", done, total),
                      limits=job.limits)
    track = select_subject(seen, max_gap=_max_gap_frames(info))
    if not track.detected.any():
        raise BadInputError(
            f"no face found in {job.source.name}: svfrd restores faces, and the face detector found none in any "
            f"of its {seen.frames} frames. Faces must be visible, turned roughly toward the camera and not tiny "
            "(about a tenth of the picture height or more); the file itself is fine and was not changed."
        )
    crops = _crop_squares(track, crop_policy, info)
    timings["faces_s"] = time.monotonic() - mark

    mark = time.monotonic()
    stream = VideoCropStream(job.source, crops, mask, job.limits)
    previews = _preview_maker(job, seen.frames, info)
    written, frame_size = _write_output(job, info, crops, engine.restore(request, stream, progress), output_mode,
                                        crf, previews, progress)
    timings["restore_and_encode_s"] = time.monotonic() - mark
    timings["total_s"] = time.monotonic() - started

    warnings += _face_warnings(track, crops)
    warnings += _mask_warnings(mask, crops)
    warnings += list(engine.warnings())
    media = MediaFacts(
        fps=str(info.fps),
        duration_s=round(info.duration, 3),
        rotation=info.rotation,
        audio_streams=len(info.audio),
        frame_size=frame_size,
        frames_with_face=int(crops.has_face.sum()),
        face_tracking=track.report,
        crop_jitter=crop_jitter(crops),
        mask=None if mask is None else mask.coordinates,
        options={"crop": crop_policy, "crf": crf, "output_mode": output_mode},
    )
    timings = {k: round(v, 2) for k, v in timings.items()}
    return PipelineResult(frames=written, media=media, warnings=warnings, timings=timings)


def _pipeline_option(job: PipelineJob, name: str, configured):
    """The job's value of a pipeline option (svfrd.domain.OPTIONS), else the configured one. Intake checked
    it already; a job row edited by hand is still refused with what is allowed."""
    value = job.options.get(name, configured)
    problem = OPTIONS[name].problem(value)
    if problem:
        raise BadInputError(f"option {name} = {value!r}: {problem}")
    return value


def _load_task_mask(job: PipelineJob, info: VideoInfo, warnings: list[str]) -> Mask | None:
    if job.mask_path is None:
        return None
    mask = load_mask(job.mask_path, info.size, max_pixels=job.limits.max_mask_pixels)
    if mask.note:
        warnings.append(mask.note)
    return mask


def _max_gap_frames(info: VideoInfo) -> int:
    """Detection gaps up to half a second are bridged; longer ones mean the face is gone."""
    return max(2, int(round(float(info.fps) / 2)))


def _crop_squares(track: SubjectTrack, policy: str, info: VideoInfo) -> FrameCrops:
    tracked = tracked_crops(track, _max_gap_frames(info))
    if policy == "tracked":
        return tracked
    # The reference policy restores the same frames (the bridged face frames), with one static square.
    return reference_crops(track, tracked.has_face, info.width, info.height)


def _preview_maker(job: PipelineJob, frames: int, info: VideoInfo) -> PreviewMaker | None:
    if not job.output_cfg.preview or (job.preview_video is None and job.contact_sheet is None):
        return None
    return PreviewMaker(job.preview_video, job.contact_sheet, frames, info)


def _write_output(
    job: PipelineJob, info: VideoInfo, crops: FrameCrops, restored: Iterator[np.ndarray], output_mode: str,
    crf: int, previews: PreviewMaker | None, progress: ProgressReporter,
) -> tuple[int, dict]:
    """Zip the engine's output with a fresh decode of the originals, paste back, encode. Returns the frames
    written and the frame size: {"input": [w, h], "output": [w, h], "adjusted": what changed or None}."""
    total = len(crops)
    crop_only = output_mode == "crop"
    size = (CROP_SIZE, CROP_SIZE) if crop_only else None
    rotation = 0 if crop_only else None  # crops are already upright
    written = 0
    try:
        with VideoWriter(job.output, info, crf=crf, audio_source=job.source, size=size, rotation=rotation) as writer:
            for frame in _decode_again(job.source, total, job.limits):
                face = next(restored, None)
                if face is None:
                    raise RuntimeError(f"the engine returned {written} crops for {total} frames")
                _check_face(face, written)
                box, has_face = crops.boxes[written], bool(crops.has_face[written])
                if crop_only:
                    before = crop_face(frame.image, box)
                    after = face if has_face else before
                else:
                    before = frame.image
                    after = paste_back(frame.image, face, box) if has_face else frame.image
                writer.write(after, frame.pts)
                if previews is not None:
                    faces = None
                    if not crop_only and previews.wants_sheet_frame(written):
                        original_face = crop_face(frame.image, box)
                        faces = (original_face, face if has_face else original_face)
                    previews.add(written, frame.pts, before, after, faces)
                written += 1
                progress("encode", written, total)
            frame_size = {"input": list(writer.input_size), "output": list(writer.size),
                          "adjusted": writer.adjustment}
        if next(restored, None) is not None:
            raise RuntimeError(f"the engine returned more crops than the {total} frames")
    except BaseException:
        if previews is not None:
            previews.abort()
        raise
    if previews is not None:
        previews.close()
    return written, frame_size


def _check_face(face: np.ndarray, index: int) -> None:
    if face.shape != (CROP_SIZE, CROP_SIZE, 3) or face.dtype != np.uint8:
        raise RuntimeError(f"the engine returned a {face.shape} {face.dtype} crop for frame {index}; "
                           f"expected ({CROP_SIZE}, {CROP_SIZE}, 3) uint8")


def _face_warnings(track: SubjectTrack, crops: FrameCrops) -> list[str]:
    notes = []
    missing = int((~crops.has_face).sum())
    if missing:
        notes.append(f"{missing} of {len(crops)} frames had no face and were left unchanged")
    if track.faces_seen > 1:
        notes.append(f"up to {track.faces_seen} faces in a frame; the largest over time was restored")
    return notes


def _mask_warnings(mask: Mask | None, crops: FrameCrops) -> list[str]:
    if mask is None:
        return []
    step = max(1, len(crops) // 50)  # a sample of frames is plenty for a percentage
    outside = max(mask.share_outside(box) for box in crops.boxes[::step])
    if outside < 0.01:
        return []
    return [f"up to {outside:.0%} of the mask lies outside the face crop and was left as it is: svfrd restores "
            "the face region only (options = { crop = \"reference\" } in the sidecar crops wider)"]
