"""The video pipeline: one input video in, one restored video out.

    probe -> face pass (decode once: faces, scene cuts) -> crop squares per frame
          -> decode again and crop (thread) -> engine.restore(crops) (this thread)
          -> paste back into the same decoded frames, encode (original timestamps, rotation, audio), previews
             (thread)

Every stage streams: the only whole-video state is a few numbers per frame (face boxes), so memory does not
grow with the video's length. The engine only ever sees 512x512 crops (`svfrd.engines.interface`).

With a checkpoint folder (`PipelineJob.checkpoints`) a job can be resumed (docs/architecture.md, "Resume"): the
face pass's crop squares are saved, the output is encoded in segments (`svfrd.media.segments`) joined at the
end, and a restarted run reuses both, restoring only from the first frame no finished segment holds. With
several faces each finished track's restored crops are kept too (`svfrd.media.multiface.TrackCheckpoints`).

The stages after the face pass overlap through bounded channels (`svfrd.media.stages`), and the frames the
engine reads are kept for pasting back until it returns their crops, so the video is decoded twice in all.
An engine that reads far ahead before it returns anything (SVFR reads a whole segment) would make that store
grow: past KEPT_FRAMES_BYTES the frames are not kept and paste-back decodes the video once more itself.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from svfrd.config import FacesConfig, LimitsConfig, OutputConfig
from svfrd.domain import CROP_SIZE, OPTIONS, Task, engine_options, mask_rule_problem
from svfrd.engines.interface import Engine, FaceCrop, ProgressReporter, RestoreRequest, engine_start
from svfrd.errors import BadInputError
from svfrd.files.placement import spool_folder
from svfrd.jobs.checkpoints import CheckpointFolder
from svfrd.media.crop import CropBox, FrameCrops, crop_face, crop_jitter, reference_crops, tracked_crops
from svfrd.media.masks import Mask, load_mask, load_reference_face
from svfrd.media.multiface import (
    PlannedTrack,
    TrackCheckpoints,
    TrackSummary,
    decode_again,
    frames_with_face,
    main_track,
    plan_tracks,
    restore_tracks,
    tracks_report,
    write_composite,
)
from svfrd.media.paste import paste_back
from svfrd.media.preview import PreviewMaker
from svfrd.media.segments import SegmentedWriter, frames_per_segment, reusable_segments, segment_name
from svfrd.media.stages import Channel, ChannelClosed, StageThread, threaded
from svfrd.media.tracking import SubjectTrack, link_face_tracks, scan_faces, select_subject
from svfrd.media.video_io import Frame, VideoInfo, VideoWriter, even_size, iter_frames, probe, size_adjustment

#: Frames (with their crops) the decoder thread may run ahead of the engine, and restored crops the engine may
#: run ahead of paste-back and encoding. A few are enough to keep every stage busy.
DECODE_AHEAD = 4
ENCODE_AHEAD = 4
#: Memory for frames the engine has read and not yet returned (see the module docstring).
KEPT_FRAMES_BYTES = 256 * 2**20


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
    #: The job's checkpoint folder (svfrd.jobs.checkpoints), None for a run that cannot be resumed, and what
    #: decides the result (a checkpoint made under another identity is never used).
    checkpoints: Path | None = None
    identity: dict = field(default_factory=dict)


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
    #: Seconds each stage was busy (not waiting on another), for benchmarks. Stages overlap, so they add up to
    #: more than the wall-clock time.
    stage_busy_s: dict[str, float] = field(default_factory=dict)
    #: What a resumed run reused from the one before (for the report; None: it started from the beginning).
    resume: dict | None = None


class FrameShelf:
    """Decoded frames the engine has read and paste-back has not used yet, up to `budget` bytes. Once a frame
    does not fit, no later frame is kept either: paste-back then decodes the rest itself, in order."""

    def __init__(self, budget: int | None = None):
        self._frames: dict[int, Frame] = {}
        self._budget, self._bytes = KEPT_FRAMES_BYTES if budget is None else budget, 0
        self._lock = threading.Lock()
        self.overflowed = False

    def keep(self, frame: Frame) -> None:
        with self._lock:
            if self.overflowed or self._bytes + frame.image.nbytes > self._budget:
                self.overflowed = True
                return
            self._frames[frame.index] = frame
            self._bytes += frame.image.nbytes

    def take(self, index: int) -> Frame | None:
        with self._lock:
            frame = self._frames.pop(index, None)
            if frame is not None:
                self._bytes -= frame.image.nbytes
            return frame


class VideoCropStream:
    """The crops of one video for the engine, from frame `start` on (a resumed run: earlier frames are decoded
    and skipped, which lands exactly where a seek might not). The first iteration decodes on a thread and hands
    its frames to paste-back (`shelf`); each later one decodes the video again (bounded memory either way)."""

    def __init__(self, source: Path, crops: FrameCrops, mask: Mask | None, limits: LimitsConfig = LimitsConfig(),
                 shelf: FrameShelf | None = None, busy: dict[str, float] | None = None, start: int = 0):
        self.source, self.crops, self.mask, self.limits = source, crops, mask, limits
        self.start = start
        self._shelf = shelf
        self._busy = busy if busy is not None else {}
        self._open: list[Iterator] = []

    def __len__(self) -> int:
        return len(self.crops) - self.start

    @property
    def enlargement(self) -> float:
        """How much the face crops enlarge the video's own pixels (median over face frames; 1.0 or more).
        An engine may work at the face's own resolution with it (the classical engine does)."""
        sizes = [box.size for box, face in zip(self.crops.boxes, self.crops.has_face) if face]
        return max(1.0, CROP_SIZE / float(np.median(sizes))) if sizes else 1.0

    def __iter__(self) -> Iterator[FaceCrop]:
        shelf, self._shelf = self._shelf, None
        if shelf is None:
            yield from (crop for _, crop in self._cropped_frames())
            return
        decoded = threaded("decode+crop", self._cropped_frames, DECODE_AHEAD, self._busy)
        self._open.append(decoded)
        for frame, crop in decoded:
            shelf.keep(frame)
            yield crop

    def close(self) -> None:
        """Stop the decoder thread of an iteration the engine left unfinished (and wait for it)."""
        for decoded in self._open:
            decoded.close()
        self._open = []

    def _cropped_frames(self) -> Iterator[tuple[Frame, FaceCrop]]:
        for frame in decode_again(self.source, len(self.crops), self.limits):
            if frame.index < self.start:
                continue
            box = self.crops.boxes[frame.index]
            mask = self.mask.for_crop(box) if self.mask is not None else None
            has_face = bool(self.crops.has_face[frame.index])
            yield frame, FaceCrop(image=crop_face(frame.image, box), mask=mask, has_face=has_face)


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

    # Every face needs the whole frame: a crop-only output shows one face, the largest.
    restore = "largest" if output_mode == "crop" else _pipeline_option(job, "restore", job.faces.restore)
    min_size = _pipeline_option(job, "min_size", job.faces.min_size)
    max_faces = _pipeline_option(job, "max_faces", job.faces.max_faces)

    mark = time.monotonic()
    busy: dict[str, float] = {}
    store = _checkpoint_folder(job)
    faces = _resumed_face_pass(store)
    if faces is None:
        faces = _face_pass(job, engine, info, progress, busy, crop_policy, restore, min_size, max_faces)
        if store is not None:
            _save_face_pass(store, faces)
    face_tracking = faces.face_tracking
    timings["faces_s"] = time.monotonic() - mark

    mark = time.monotonic()
    resume = None
    if faces.plans:
        plans = faces.plans
        main = main_track(plans)
        crops = main.crops
        segments = _segmented_writer(job, store, info, faces.frames, crf, output_mode)
        resume_from = segments.next_frame if segments is not None else 0
        saved = TrackCheckpoints(store) if store is not None else None
        # A resumable job keeps its spools in its checkpoint folder: the next run may reuse them.
        with spool_folder(job.output) if store is None else nullcontext(store.folder) as folder:
            spools, engine_notes, tracks_reused = restore_tracks(
                job.source, plans, engine, request, mask, job.limits, Path(folder), progress, saved, resume_from)
            frame_size = write_composite(job.source, job.output, info, faces.frames, plans, spools, crf,
                                         job.limits, _preview_maker(job, faces.frames, info), progress, busy,
                                         segments)
        written = faces.frames
        with_face = frames_with_face(plans, faces.frames)
        warnings += _every_face_warnings(plans, faces.frames, with_face)
        if faces.reused or resume_from or tracks_reused["tracks_reused"]:
            resume = {"face_pass_reused": faces.reused, "from_frame": resume_from,
                      "segments_reused": len(segments.reused) if segments is not None else 0,
                      "frames_reused": resume_from, **tracks_reused}
    else:
        crops = faces.crops
        segments = _segmented_writer(job, store, info, faces.frames, crf, output_mode)
        resume_from = segments.next_frame if segments is not None else 0
        first = faces.frames if resume_from >= faces.frames else engine_start(engine, 0, resume_from)
        shelf = FrameShelf()
        stream = VideoCropStream(job.source, crops, mask, job.limits, shelf=shelf, busy=busy, start=first)
        output = _OutputStage(job, info, crops, shelf, output_mode, crf, _preview_maker(job, faces.frames, info),
                              busy, segments=segments, first=first)
        # The engine's own checkpoints share the folder: only here, where one engine run covers the video.
        engine_request = replace(request, checkpoints=store) if store is not None else request
        written, frame_size = _restore_and_write(engine, engine_request, stream, output, progress)
        written += first
        engine_notes = list(engine.warnings()) if len(stream) else []
        with_face = int(crops.has_face.sum())
        warnings += faces.notes
        engine_reused = getattr(engine, "resume_details", dict)() if len(stream) else {}
        if faces.reused or resume_from or engine_reused:
            resume = {"face_pass_reused": faces.reused, "from_frame": resume_from,
                      "segments_reused": len(segments.reused) if segments is not None else 0,
                      "frames_reused": resume_from, "engine_restarted_at_frame": first, **engine_reused}
    timings["restore_and_encode_s"] = time.monotonic() - mark
    timings["total_s"] = time.monotonic() - started

    warnings += _mask_warnings(mask, crops)
    warnings += engine_notes
    media = MediaFacts(
        fps=str(info.fps),
        duration_s=round(info.duration, 3),
        rotation=info.rotation,
        audio_streams=len(info.audio),
        frame_size=frame_size,
        frames_with_face=with_face,
        face_tracking=face_tracking,
        crop_jitter=crop_jitter(crops),
        mask=None if mask is None else mask.coordinates,
        options={"crop": crop_policy, "crf": crf, "output_mode": output_mode, "restore": restore,
                 "min_size": min_size, "max_faces": max_faces},
    )
    timings = {k: round(v, 2) for k, v in timings.items()}
    busy = {k: round(v, 2) for k, v in busy.items()}
    return PipelineResult(frames=written, media=media, warnings=warnings, timings=timings, stage_busy_s=busy,
                          resume=resume)


@dataclass
class _FacePass:
    """What the face pass decided: every face's plans, or (plans empty) the one face's crop squares with the
    notes about them. `reused`: read from a checkpoint instead of found again."""

    frames: int
    face_tracking: dict
    plans: list[PlannedTrack] = field(default_factory=list)
    crops: FrameCrops | None = None
    notes: list[str] = field(default_factory=list)
    reused: bool = False


FACES_KIND = "faces"


def _face_pass(job: PipelineJob, engine: Engine, info: VideoInfo, progress: ProgressReporter,
               busy: dict[str, float], crop_policy: str, restore: str, min_size: float,
               max_faces: int) -> _FacePass:
    seen = scan_faces(job.source, info, job.faces.model, lambda done, total: progress("faces", done, total),
                      limits=job.limits, busy=busy, max_faces=4 if restore == "largest" else max(4, max_faces))
    track = select_subject(seen, max_gap=_max_gap_frames(info))
    if not track.detected.any():
        raise BadInputError(
            f"no face found in {job.source.name}: svfrd restores faces, and the face detector found none in any "
            f"of its {seen.frames} frames. Faces must be visible, turned roughly toward the camera and not tiny "
            "(about a tenth of the picture height or more); the file itself is fine and was not changed."
        )
    face_tracking = track.report
    skipped_note: list[str] = []
    if restore == "all":
        plans = _plan_every_face(job, seen, info, crop_policy, min_size, max_faces)
        skipped_note = _every_face_warnings(plans, 1, 1)
        face_tracking = {**track.report, "tracks": tracks_report(plans, engine.name)}
        chosen = [p for p in plans if p.skipped is None]
        if len(chosen) != 1:
            return _FacePass(seen.frames, face_tracking, plans=plans)
        track = chosen[0].track.as_subject(seen.frames, seen.shots())  # one face: the single-face path
    crops = _crop_squares(track, crop_policy, info)
    notes = _face_warnings(track, crops, restore) + [note for note in skipped_note if "left as they are" in note]
    return _FacePass(seen.frames, face_tracking, crops=crops, notes=notes)


def _checkpoint_folder(job: PipelineJob) -> CheckpointFolder | None:
    if job.checkpoints is None:
        return None
    return CheckpointFolder(job.checkpoints, job.identity).create()


def _save_face_pass(store: CheckpointFolder, faces: _FacePass) -> None:
    """The face pass's crop squares (with several faces: every track's plan): a resumed run pastes into exactly
    the same squares (MediaPipe need not find the same boxes twice) and skips the face pass."""
    if faces.plans:
        payload = {"frames": faces.frames, "face_tracking": faces.face_tracking,
                   "plans": [_plan_as_data(plan) for plan in faces.plans]}
    else:
        payload = {"frames": faces.frames, "face_tracking": faces.face_tracking, "notes": faces.notes,
                   **_crops_as_data(faces.crops)}
    store.save(FACES_KIND, {"frames": faces.frames}, json.dumps(payload).encode())


def _crops_as_data(crops: FrameCrops) -> dict:
    return {"boxes": [[box.x, box.y, box.size] for box in crops.boxes], "has_face": crops.has_face.tolist(),
            "policy": crops.policy, "shots": [list(shot) for shot in crops.shots]}


def _crops_from_data(data: dict) -> FrameCrops:
    return FrameCrops(boxes=[CropBox(x, y, size) for x, y, size in data["boxes"]],
                      has_face=np.array(data["has_face"], dtype=bool), policy=data["policy"],
                      shots=[tuple(shot) for shot in data["shots"]])


def _plan_as_data(plan: PlannedTrack) -> dict:
    track = plan.track
    return {"number": plan.number, "shot": list(track.shot), "first": track.first, "last": track.last,
            "total_area": track.total_area, "typical_size": plan.typical_size, "skipped": plan.skipped,
            "crops": _crops_as_data(plan.crops) if plan.crops is not None else None}


def _plan_from_data(data: dict) -> PlannedTrack:
    track = TrackSummary(tuple(data["shot"]), int(data["first"]), int(data["last"]), float(data["total_area"]))
    crops = _crops_from_data(data["crops"]) if data["crops"] is not None else None
    return PlannedTrack(int(data["number"]), track, float(data["typical_size"]), data["skipped"], crops)


def _resumed_face_pass(store: CheckpointFolder | None) -> _FacePass | None:
    checkpoint = store.load(FACES_KIND) if store is not None else None
    if checkpoint is None:
        return None
    data = json.loads(checkpoint.payload)
    if "plans" in data:
        return _FacePass(int(data["frames"]), data["face_tracking"],
                         plans=[_plan_from_data(plan) for plan in data["plans"]], reused=True)
    return _FacePass(int(data["frames"]), data["face_tracking"], crops=_crops_from_data(data),
                     notes=list(data["notes"]), reused=True)


def _segmented_writer(job: PipelineJob, store: CheckpointFolder | None, info: VideoInfo, frames: int, crf: int,
                      output_mode: str) -> SegmentedWriter | None:
    """The output in segments in the checkpoint folder, going on after those an earlier run finished."""
    if store is None:
        return None
    frames_each = frames_per_segment(info, job.output_cfg.segment_seconds)
    crop_only = output_mode == "crop"
    return SegmentedWriter(store, info, frames_each, reusable_segments(store, frames_each), frames, crf=crf,
                           size=(CROP_SIZE, CROP_SIZE) if crop_only else None, rotation=0 if crop_only else None)


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


def _plan_every_face(job: PipelineJob, seen, info: VideoInfo, crop_policy: str, min_size: float,
                     max_faces: int) -> list[PlannedTrack]:
    """Every face track, with the crop squares of those to restore over the track's own frames
    (svfrd.media.multiface.PlannedTrack)."""
    max_gap = _max_gap_frames(info)
    plans = plan_tracks(link_face_tracks(seen, max_gap), info.height, min_size, max_faces)
    for plan in plans:
        if plan.skipped is None:
            plan.crops = _crop_squares(plan.track.as_window(), crop_policy, info)
    if not any(p.skipped is None for p in plans):
        largest = max((p.typical_size for p in plans), default=0.0)
        raise BadInputError(
            f"no face in {job.source.name} was large enough or in view long enough to restore: the largest was "
            f"{largest:.0%} of the picture height, and min_size is {min_size:g}. Lower min_size in the sidecar's "
            "[options] (or [faces] min_size), or use restore = \"largest\"; the file itself was not changed."
        )
    return plans


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


def _restore_and_write(engine: Engine, request: RestoreRequest, stream: VideoCropStream, output: "_OutputStage",
                       progress: ProgressReporter) -> tuple[int, dict]:
    """Run the engine on this thread (it reports progress, which only this thread may do) while the stream
    decodes and the output stage pastes back and encodes on theirs. Returns what `_OutputStage` found."""
    total = len(stream)
    # A resumed run whose segments hold every frame only joins them: the engine has nothing to do.
    restored = engine.restore(request, stream, progress) if total else iter(())
    thread = StageThread("paste+encode", output.run).start()
    try:
        count = 0
        for face in restored:
            if count == total:
                raise RuntimeError(f"the engine returned more crops than the {total} frames")
            _check_face(face, count)
            output.faces.put(face)
            count += 1
            progress("encode", output.written, total)
        if count < total:
            raise RuntimeError(f"the engine returned {count} crops for {total} frames")
        output.faces.finish()
        output.relay_progress(progress, total)
    except ChannelClosed:
        pass  # the output stage stopped on an error, raised below
    finally:
        getattr(restored, "close", lambda: None)()
        stream.close()
        output.faces.close()  # stops the output stage if this thread failed or was cancelled
        thread.join()
    if thread.error is not None:
        raise thread.error
    if output.written != total:  # only when it was stopped, which raised above; kept as a guard
        raise RuntimeError(f"wrote {output.written} of {total} frames")
    return output.written, output.frame_size


class _OutputStage:
    """Pastes each restored crop into its frame (kept by the stream, else decoded again), encodes the frame
    and feeds the previews: the work of one thread, fed through `faces`, one crop per frame from frame `first`.

    With `segments` (a resumable run) the frames go to segments that are joined into the output at the end;
    frames before `segments.next_frame` are in segments already, so their crops (an engine starts a little
    earlier, for its context) are dropped and the previews are fed from the segments instead."""

    def __init__(self, job: PipelineJob, info: VideoInfo, crops: FrameCrops, shelf: FrameShelf, output_mode: str,
                 crf: int, previews: PreviewMaker | None, busy: dict[str, float],
                 segments: SegmentedWriter | None = None, first: int = 0):
        self.job, self.info, self.crops, self.shelf = job, info, crops, shelf
        self.segments, self.first = segments, first
        self.crop_only = output_mode == "crop"
        self.crf, self.previews, self.busy = crf, previews, busy
        self.faces: Channel[np.ndarray] = Channel(ENCODE_AHEAD)
        self.written = 0
        self.frame_size: dict = {}
        self._changed = threading.Condition()
        self._ended = False
        self._decoded: Iterator[Frame] | None = None  # paste-back's own decode, once frames are not kept

    def run(self) -> None:
        try:
            self._write_all()
            if self.previews is not None:
                self.previews.close()
        except BaseException:
            if self.previews is not None:
                self.previews.abort()
            self.faces.close()  # the engine's thread stops handing crops over
            raise
        finally:
            if self._decoded is not None:
                self._decoded.close()
            with self._changed:
                self._ended = True
                self._changed.notify_all()

    def relay_progress(self, progress: ProgressReporter, total: int) -> None:
        """Report "encode" progress from the calling thread until this stage ends (it may raise: cancel)."""
        reported = -1
        while True:
            with self._changed:
                while self.written == reported and not self._ended:
                    self._changed.wait()
                written, ended = self.written, self._ended
            if written != reported:
                progress("encode", written, total)
                reported = written
            if ended:
                return

    def _write_all(self) -> None:
        if self.segments is not None:
            self._write_segments()
        else:
            self._write_one_file()

    def _write_segments(self) -> None:
        segments = self.segments
        resume_from = segments.next_frame
        if self.previews is not None and resume_from:
            self._replay_previews(resume_from)
        try:
            for face in self.faces:
                index = self.first + self.written
                frame = self._frame(index)
                if index >= resume_from:
                    self._output_frame(frame, face, lambda image: segments.write(index, image, frame.pts))
                with self._changed:
                    self.written += 1
                    self._changed.notify_all()
        except BaseException:
            segments.abort()
            raise
        started = time.perf_counter()
        segments.join(self.job.output, self.job.source, 0 if self.crop_only else self.info.rotation)
        self._count("encode", time.perf_counter() - started)
        input_size = (CROP_SIZE, CROP_SIZE) if self.crop_only else self.info.size
        size = even_size(*input_size)
        self.frame_size = {"input": list(input_size), "output": list(size),
                           "adjusted": size_adjustment(input_size, size)}

    def _replay_previews(self, end: int) -> None:
        """The previews of the frames a resumed run reuses, from the source and the reused segments."""
        originals = decode_again(self.job.source, len(self.crops), self.job.limits)
        try:
            for number in range(len(self.segments.done)):
                for restored in iter_frames(self.segments.store.folder / segment_name(number)):
                    frame = next(originals)
                    if frame.index >= end:
                        return
                    face = crop_face(restored.image, self.crops.boxes[frame.index]) if not self.crop_only \
                        else restored.image
                    before = crop_face(frame.image, self.crops.boxes[frame.index]) if self.crop_only else frame.image
                    self._preview(frame, face, before, restored.image)
        finally:
            originals.close()

    def _output_frame(self, frame: Frame, face: np.ndarray, write: Callable[[np.ndarray], None]) -> None:
        started = time.perf_counter()
        before, after = self._paste(frame, face)
        pasted = time.perf_counter()
        write(after)
        encoded = time.perf_counter()
        if self.previews is not None:
            self._preview(frame, face, before, after)
        self._count("paste", pasted - started)
        self._count("encode", encoded - pasted)
        self._count("previews", time.perf_counter() - encoded)

    def _write_one_file(self) -> None:
        """{"input": [w, h], "output": [w, h], "adjusted": what changed or None} goes to `frame_size`."""
        size = (CROP_SIZE, CROP_SIZE) if self.crop_only else None
        rotation = 0 if self.crop_only else None  # crops are already upright
        job = self.job
        with VideoWriter(job.output, self.info, crf=self.crf, audio_source=job.source, size=size,
                         rotation=rotation) as writer:
            for face in self.faces:
                frame = self._frame(self.written)
                self._output_frame(frame, face, lambda image: writer.write(image, frame.pts))
                with self._changed:
                    self.written += 1
                    self._changed.notify_all()
            started = time.perf_counter()
            self.frame_size = {"input": list(writer.input_size), "output": list(writer.size),
                               "adjusted": writer.adjustment}
        self._count("encode", time.perf_counter() - started)  # the encoder's flush

    def _frame(self, index: int) -> Frame:
        frame = self.shelf.take(index)
        if frame is not None:
            return frame
        if self._decoded is None:
            self._decoded = decode_again(self.job.source, len(self.crops), self.job.limits)
        for frame in self._decoded:
            if frame.index == index:
                return frame
        raise RuntimeError(f"frame {index} was neither kept nor decoded again")  # _decode_again raised first

    def _paste(self, frame: Frame, face: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(before, after) for the output and the previews."""
        index = frame.index
        box, has_face = self.crops.boxes[index], bool(self.crops.has_face[index])
        if self.crop_only:
            before = crop_face(frame.image, box)
            return before, face if has_face else before
        if not has_face:
            return frame.image, frame.image
        # The frame is ours alone: paste into it, unless the previews still need the original.
        return frame.image, paste_back(frame.image, face, box, in_place=self.previews is None)

    def _preview(self, frame: Frame, face: np.ndarray, before: np.ndarray, after: np.ndarray) -> None:
        index = frame.index
        faces = None
        if not self.crop_only and self.previews.wants_sheet_frame(index):
            box, has_face = self.crops.boxes[index], bool(self.crops.has_face[index])
            original_face = crop_face(frame.image, box)
            faces = (original_face, face if has_face else original_face)
        self.previews.add(index, frame.pts, before, after, faces)

    def _count(self, stage: str, seconds: float) -> None:
        self.busy[stage] = self.busy.get(stage, 0.0) + seconds


def _check_face(face: np.ndarray, index: int) -> None:
    if face.shape != (CROP_SIZE, CROP_SIZE, 3) or face.dtype != np.uint8:
        raise RuntimeError(f"the engine returned a {face.shape} {face.dtype} crop for frame {index}; "
                           f"expected ({CROP_SIZE}, {CROP_SIZE}, 3) uint8")


def _face_warnings(track: SubjectTrack, crops: FrameCrops, restore: str = "largest") -> list[str]:
    notes = []
    missing = int((~crops.has_face).sum())
    if missing:
        notes.append(f"{missing} of {len(crops)} frames had no face and were left unchanged")
    if track.faces_seen > 1 and restore == "largest":
        notes.append(f"up to {track.faces_seen} faces in a frame; the largest over time was restored")
    return notes


def _every_face_warnings(plans: list[PlannedTrack], frames: int, frames_with_face: int) -> list[str]:
    notes = []
    if frames_with_face < frames:
        notes.append(f"{frames - frames_with_face} of {frames} frames had no face and were left unchanged")
    skipped = [p for p in plans if p.skipped is not None]
    restored = len(plans) - len(skipped)
    note = f"{restored} face tracks were restored"
    if skipped:
        reasons = sorted({p.skipped for p in skipped})
        note += f"; {len(skipped)} were left as they are ({', '.join(reasons)}; see face_tracking.tracks)"
    notes.append(note)
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
