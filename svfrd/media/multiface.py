"""Every face in the picture (`[faces] restore = "all"`, docs/architecture.md, "Every face").

    face pass -> one track per person and shot (`svfrd.media.tracking.link_face_tracks`)
              -> each track big and long enough: its own smoothed crop track, its own engine run over its
                 frame range, restored crops spooled to disk (PNG, in
                 `svfrd.files.placement.spool_folder` beside the output: crash cleanup knows its name)
              -> one output pass: decode, paste every face of the frame (smallest first, so the larger,
                 nearer face ends on top), encode

Tracks run one after another, so the GPU holds one face's work at a time. Memory holds a track's crop squares
over its own frames only (not the whole video's), and one crop per track in view at most: the spool is on
disk, read back streaming, and each track's spool file is closed and removed once the output has passed it.

A resumable job (docs/architecture.md, "Resume") spools into its checkpoint folder instead (`TrackCheckpoints`):
each finished track's spool is renamed into place and named, with its sha256 and the digest of its track's
plan, in a "tracks" checkpoint, and kept until the job ends; the composite pass writes segments
(`svfrd.media.segments`). A restarted run reuses the finished tracks and segments and runs the engine only
for the tracks, and from the frames, that the frames still to be encoded need.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from svfrd.domain import CROP_SIZE
from svfrd.engines.interface import Engine, FaceCrop, ProgressReporter, RestoreRequest, engine_start
from svfrd.errors import BadInputError
from svfrd.files.hashing import file_sha256
from svfrd.jobs.checkpoints import CheckpointFolder
from svfrd.media.crop import CropBox, FrameCrops, crop_face
from svfrd.media.masks import Mask
from svfrd.media.paste import paste_back
from svfrd.media.preview import PreviewMaker
from svfrd.media.segments import SegmentedWriter, segment_name
from svfrd.media.stages import threaded
from svfrd.media.tracking import MIN_TRACK_FRAMES, FaceTrack
from svfrd.media.video_io import Frame, VideoInfo, VideoWriter, even_size, iter_frames, size_adjustment

log = logging.getLogger(__name__)

#: Tracks listed in the report at most (a long film can have thousands).
REPORTED_TRACKS = 50
#: The checkpoint kind that names the finished tracks' spools (`TrackCheckpoints`).
TRACKS_KIND = "tracks"


@dataclass(frozen=True)
class TrackSummary:
    """What the restoration and the composite pass use of a `FaceTrack` (its detections are not needed once
    its crop squares are made): a resumed run reads it back from the face pass's checkpoint."""

    shot: tuple[int, int]
    first: int
    last: int
    total_area: float


@dataclass
class PlannedTrack:
    """A face track and what is done with it: `crops` to restore, or why it is `skipped`. The crop squares
    cover the track's own frames, `frame_range`, only (`FaceTrack.as_window`): use `box` and `has_face`."""

    number: int  # 1, 2, ... in order of first appearance
    track: FaceTrack | TrackSummary  # a TrackSummary when read back from a checkpoint
    typical_size: float  # median face height relative to the frame height
    skipped: str | None = None
    crops: FrameCrops | None = None

    @property
    def frame_range(self) -> tuple[int, int]:
        """(start, end), end exclusive: from the first detection to the last. A face that enters or leaves
        mid-shot is restored over that range only; a crop track held beyond it would cover the empty place it
        came from or went to."""
        return self.track.first, self.track.last + 1

    def box(self, index: int) -> CropBox:
        """The crop square on frame `index` of the video (within `frame_range`)."""
        return self.crops.boxes[index - self.track.first]

    def has_face(self, index: int) -> bool:
        return bool(self.crops.has_face[index - self.track.first])

    def report(self, engine: str | None) -> dict:
        return {
            "track": self.number,
            "frame_span": list(self.frame_range),  # the report's keys are unique (svfrd.service.report)
            "typical_size": round(self.typical_size, 3),
            "restored_by": engine if self.skipped is None else None,
            "skipped": self.skipped,
        }


def plan_tracks(tracks: list[FaceTrack], frame_height: int, min_size: float, max_faces: int) -> list[PlannedTrack]:
    """Which tracks are restored: long enough (MIN_TRACK_FRAMES, or the whole shot if it is shorter), at least
    `min_size` of the frame height, and among the `max_faces` largest of their shot (area summed over time)."""
    planned = [PlannedTrack(n + 1, t, t.typical_height / frame_height) for n, t in
               enumerate(sorted(tracks, key=lambda t: (t.first, -t.total_area)))]
    for plan in planned:
        shot_length = plan.track.shot[1] - plan.track.shot[0]
        if plan.track.last - plan.track.first + 1 < min(MIN_TRACK_FRAMES, shot_length):
            plan.skipped = "too short"
        elif plan.typical_size < min_size:
            plan.skipped = "too small"
    for shot in sorted({p.track.shot for p in planned}):
        kept = sorted((p for p in planned if p.track.shot == shot and p.skipped is None),
                      key=lambda p: (-p.track.total_area, p.number))
        for plan in kept[max_faces:]:
            plan.skipped = "over max_faces"
    return planned


class CropSpool:
    """Restored 512x512 crops of one track on disk, losslessly (PNG at low compression: fast, about a third
    of the raw size), read back once, in order, then removed. Only the sizes stay in memory. Its first crop
    is of frame `first` (None: the track's first frame); `sizes` reopens a finished spool."""

    def __init__(self, path: Path, first: int | None = None, sizes: list[int] | None = None):
        self.path = path
        self.first = first
        self._file = open(path, "wb") if sizes is None else None
        self._sizes: list[int] = [] if sizes is None else list(sizes)

    def write(self, crop: np.ndarray) -> None:
        ok, data = cv2.imencode(".png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise RuntimeError("could not encode a restored face crop for the spool")
        self._file.write(data.tobytes())
        self._sizes.append(len(data))

    def finish(self) -> None:
        if self._file is not None:
            self._file.close()

    def __len__(self) -> int:
        return len(self._sizes)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    @property
    def sizes(self) -> list[int]:
        return list(self._sizes)

    def read(self, skip: int = 0) -> Iterator[np.ndarray]:
        """The crops in order, after the first `skip` (passed over without decoding)."""
        with open(self.path, "rb") as f:
            f.seek(sum(self._sizes[:skip]))
            for size in self._sizes[skip:]:
                data = np.frombuffer(f.read(size), np.uint8)
                yield cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


class TrackCropStream:
    """The crops of one face track, over its `frame_range`, for the engine (`svfrd.engines.interface`): each
    iteration decodes the video anew, so memory stays bounded."""

    def __init__(self, source: Path, plan: PlannedTrack, mask: Mask | None, limits, start: int | None = None):
        self.source, self.plan, self.mask, self.limits = source, plan, mask, limits
        self.start, self.end = plan.frame_range
        if start is not None:  # a resumed run: the engine starts later in the track (`restore_tracks`)
            self.start = start
        crops: FrameCrops = plan.crops  # the enlargement is the whole track's, whatever the start
        self.enlargement = max(1.0, CROP_SIZE / float(np.median(
            [box.size for box, face in zip(crops.boxes, crops.has_face) if face])))

    def __len__(self) -> int:
        return self.end - self.start

    def __iter__(self) -> Iterator[FaceCrop]:
        for frame in iter_frames(self.source, self.limits):
            if frame.index >= self.end:
                return
            if frame.index < self.start:
                continue
            box = self.plan.box(frame.index)
            mask = self.mask.for_crop(box) if self.mask is not None else None
            yield FaceCrop(image=crop_face(frame.image, box), mask=mask, has_face=self.plan.has_face(frame.index))


def restore_tracks(source: Path, plans: list[PlannedTrack], engine: Engine, request: RestoreRequest,
                   mask: Mask | None, limits, spool_dir: Path, progress: ProgressReporter,
                   saved: "TrackCheckpoints | None" = None,
                   resume_from: int = 0) -> tuple[dict[int, CropSpool], list[str], dict]:
    """Run the engine over each planned track in turn; returns each track's spool by its number, the
    engine's warnings of all runs, and what a resumed run reused (`resume_details`). A reference face from the
    sidecar shows the main subject, so only the largest track gets it. Progress goes forward over all runs:
    each run's stages are prefixed "face N of M" and map its frames into the share of all tracks' frames that
    its track has (`_overall`).

    With `saved` (a resumable job) finished spools are kept there and reused; frames before `resume_from` are
    in reused output segments, so a track that ends before it is not run, and one that spans it runs from
    there, less the engine's `resume_context`."""
    chosen = [p for p in plans if p.skipped is None]
    main = main_track(plans)
    total = sum(p.frame_range[1] - p.frame_range[0] for p in chosen)
    done_before = 0
    spools, warnings = {}, []
    reused, restarted = 0, []
    for n, plan in enumerate(chosen, 1):
        start, end = plan.frame_range
        needed_from = max(start, resume_from)
        spool = saved.reuse(plan, needed_from) if saved is not None and needed_from < end else None
        if needed_from >= end or spool is not None:
            if spool is not None:
                spools[plan.number] = spool
            reused += 1
            done_before += end - start
            if saved is not None:
                warnings += [w for w in saved.warnings_of(plan) if w not in warnings]
            continue
        first = engine_start(engine, start, needed_from)
        if first != start:
            restarted.append({"track": plan.number, "at_frame": first})
        stream = TrackCropStream(source, plan, mask, limits, start=first)
        own_request = request if plan is main else RestoreRequest(
            tasks=request.tasks, seed=request.seed, reference_face=None, options=request.options)
        spool = saved.new_spool(plan, first) if saved is not None else \
            CropSpool(spool_dir / f"track-{plan.number}.png-spool")
        spools[plan.number] = spool
        label = f"face {n} of {len(chosen)}"
        before = done_before + (first - start)
        _restore_one(engine, own_request, stream, spool, _overall(progress, label, before, len(stream), total))
        if saved is not None:
            saved.keep(plan, spool, valid_from=needed_from, warnings=engine.warnings())
        done_before += end - start
        warnings += [w for w in engine.warnings() if w not in warnings]
    return spools, warnings, {"tracks_reused": reused, "tracks_restarted": restarted}


def plan_digest(plan: PlannedTrack) -> str:
    """What a track's restored crops depend on besides the job's identity: its number, frames and crop
    squares. A spool is reused only for a plan with the same digest."""
    crops = plan.crops
    text = json.dumps([plan.number, list(plan.frame_range), [[b.x, b.y, b.size] for b in crops.boxes],
                       crops.has_face.tolist()], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class TrackCheckpoints:
    """The finished tracks' spools of a resumable job, in its checkpoint folder (docs/architecture.md,
    "Resume"): each is written under a hidden name, fsynced and renamed to `track-N.png-spool`, then named
    in a "tracks" checkpoint with its sha256, its crops' sizes, the digest of its plan, the engine's warnings
    of its run (for the report) and `valid_from`, the first frame whose crop equals an uninterrupted run's (a
    run restarted mid-track has a few crops of context before it)."""

    def __init__(self, store: CheckpointFolder):
        self.store = store
        self.entries: dict[int, dict] = self._load()

    def reuse(self, plan: PlannedTrack, needed_from: int) -> CropSpool | None:
        """The track's finished spool when it holds its crops from `needed_from` on and is still intact."""
        entry = self.entries.get(plan.number)
        if entry is None or entry["plan"] != plan_digest(plan) or entry["valid_from"] > needed_from:
            return None
        path = self._path(plan)
        if not path.is_file() or file_sha256(path) != entry["sha256"]:
            log.warning("the restored faces in %s are missing or changed; track %d is restored again", path,
                        plan.number)
            return None
        return CropSpool(path, first=entry["first"], sizes=entry["sizes"])

    def new_spool(self, plan: PlannedTrack, first: int) -> CropSpool:
        return CropSpool(self.store.folder / ("." + self._path(plan).name + ".part"), first=first)

    def warnings_of(self, plan: PlannedTrack) -> list[str]:
        """The engine's warnings of the track's saved run (a track whose frames are all in reused segments
        is not run again, and its notes still belong in the report)."""
        entry = self.entries.get(plan.number)
        return list(entry["warnings"]) if entry is not None and entry["plan"] == plan_digest(plan) else []

    def keep(self, plan: PlannedTrack, spool: CropSpool, valid_from: int, warnings: list[str]) -> None:
        """Put a finished spool in place durably, then name it in a checkpoint."""
        target = self._path(plan)
        digest = self.store.put(spool.path, target.name)
        spool.path = target
        self.entries[plan.number] = {"number": plan.number, "plan": plan_digest(plan), "sha256": digest,
                                     "first": spool.first, "valid_from": valid_from, "sizes": spool.sizes,
                                     "warnings": list(warnings)}
        payload = json.dumps(sorted(self.entries.values(), key=lambda e: e["number"])).encode()
        self.store.save(TRACKS_KIND, {"tracks": len(self.entries)}, payload)

    def _path(self, plan: PlannedTrack) -> Path:
        return self.store.folder / f"track-{plan.number}.png-spool"

    def _load(self) -> dict[int, dict]:
        checkpoint = self.store.load(TRACKS_KIND)
        if checkpoint is None:
            return {}
        return {int(entry["number"]): entry for entry in json.loads(checkpoint.payload)}


def main_track(plans: list[PlannedTrack]) -> PlannedTrack:
    """The largest restored track (face area summed over its frames): the one a reference face shows."""
    return max((p for p in plans if p.skipped is None), key=lambda p: (p.track.total_area, -p.number))


def _overall(progress: ProgressReporter, label: str, before: int, length: int, total: int) -> ProgressReporter:
    """Progress of one track's run as a share of all tracks' frames, its stages named "`label`: stage"."""
    def report(stage: str, done: int, of: int) -> None:
        progress(f"{label}: {stage}", before + (min(done, of) * length // of if of else 0), total)
    return report


def _restore_one(engine: Engine, request: RestoreRequest, stream: TrackCropStream, spool: CropSpool,
                 progress: ProgressReporter) -> None:
    restored = engine.restore(request, stream, progress)
    try:
        for face in restored:
            if len(spool) == len(stream):
                raise RuntimeError(f"the engine returned more crops than the {len(stream)} frames of a face track")
            if face.shape != (CROP_SIZE, CROP_SIZE, 3) or face.dtype != np.uint8:
                raise RuntimeError(f"the engine returned a {face.shape} {face.dtype} crop; expected "
                                   f"({CROP_SIZE}, {CROP_SIZE}, 3) uint8")
            spool.write(face)
    finally:
        getattr(restored, "close", lambda: None)()
        spool.finish()
    if len(spool) != len(stream):
        raise RuntimeError(f"the engine returned {len(spool)} crops for the {len(stream)} frames of a face track")


def composite_frame(image: np.ndarray, faces: list[tuple[np.ndarray, CropBox]], in_place: bool) -> np.ndarray:
    """Paste every face into the frame, smallest crop first: the larger (nearer) face is pasted last and so
    lies on top. Each face is blended once, with its own feathered edge, onto what is there already, so where
    crops overlap nothing is feathered twice."""
    out = image if in_place else image.copy()
    for face, box in sorted(faces, key=lambda item: item[1].size):
        paste_back(out, face, box, in_place=True)
    return out


def write_composite(source: Path, output: Path, info: VideoInfo, frames: int, plans: list[PlannedTrack],
                    spools: dict[int, CropSpool], crf: int, limits, previews: PreviewMaker | None,
                    progress: ProgressReporter, busy: dict[str, float],
                    segments: SegmentedWriter | None = None) -> dict:
    """The one output pass: every frame decoded, its faces pasted (`composite_frame`), encoded; returns the
    frame size facts as `svfrd.media.pipeline` reports them. With `segments` (a resumable job) the frames go
    to segments joined into `output` at the end; those before `segments.next_frame` are in reused segments,
    and feed only the previews (`_ReusedFrames`). The spools are then kept: the job's end removes them."""
    resume_from = segments.next_frame if segments is not None else 0
    faces_in_view = _FacesInView(plans, spools, remove=segments is None)
    reused = _ReusedFrames(segments, plans) if segments is not None and previews is not None else None
    decoded = threaded("decode", lambda: decode_again(source, frames, limits), 4, busy)
    try:
        with _Encoder(output, info, crf, source, segments) as encoder:
            written = 0
            for frame in decoded:
                if frame.index < resume_from:
                    if reused is not None:
                        _preview(previews, frame, *reused.on(frame))
                else:
                    started = time.perf_counter()
                    faces = faces_in_view.on(frame.index)
                    after = composite_frame(frame.image, faces, in_place=previews is None)
                    pasted = time.perf_counter()
                    encoder.write(frame.index, after, frame.pts)
                    encoded = time.perf_counter()
                    if previews is not None:
                        _preview(previews, frame, after, faces)
                    _count(busy, "paste", pasted - started)
                    _count(busy, "encode", encoded - pasted)
                written += 1
                progress("encode", written, frames)
        if previews is not None:
            previews.close()
    except BaseException:
        if previews is not None:
            previews.abort()
        raise
    finally:
        decoded.close()
        faces_in_view.close()
        if reused is not None:
            reused.close()
    return encoder.size


class _Encoder:
    """The output of the composite pass: one file, or segments joined into it when all frames are in."""

    def __init__(self, output: Path, info: VideoInfo, crf: int, source: Path, segments: SegmentedWriter | None):
        self.output, self.info, self.crf, self.source, self.segments = output, info, crf, source, segments
        self._writer: VideoWriter | None = None
        self.size: dict = {}

    def __enter__(self) -> "_Encoder":
        if self.segments is None:
            self._writer = VideoWriter(self.output, self.info, crf=self.crf, audio_source=self.source).__enter__()
        return self

    def write(self, index: int, image: np.ndarray, pts: int) -> None:
        if self._writer is not None:
            self._writer.write(image, pts)
        else:
            self.segments.write(index, image, pts)

    def __exit__(self, kind, error, trace) -> None:
        if self._writer is not None:
            self._writer.__exit__(kind, error, trace)
            if kind is None:
                self.size = {"input": list(self._writer.input_size), "output": list(self._writer.size),
                             "adjusted": self._writer.adjustment}
            return
        if kind is not None:
            self.segments.abort()
            return
        self.segments.join(self.output, self.source, self.info.rotation)
        size = even_size(*self.info.size)  # as VideoWriter makes it, also when no segment was encoded now
        self.size = {"input": list(self.info.size), "output": list(size),
                     "adjusted": size_adjustment(self.info.size, size)}


class _ReusedFrames:
    """The frames a resumed run reuses, read back from their segments, with the faces restored on them (crops
    of the encoded frame), for the previews."""

    def __init__(self, segments: SegmentedWriter, plans: list[PlannedTrack]):
        self.chosen = sorted((p for p in plans if p.skipped is None),
                             key=lambda p: (-p.track.total_area, p.number))
        self._frames = self._read(segments)

    def on(self, frame: Frame) -> tuple[np.ndarray, list[tuple[np.ndarray, CropBox]]]:
        after = next(self._frames).image
        boxes = [p.box(frame.index) for p in self.chosen
                 if p.frame_range[0] <= frame.index < p.frame_range[1] and p.has_face(frame.index)]
        return after, [(crop_face(after, box), box) for box in boxes]

    def close(self) -> None:
        self._frames.close()

    @staticmethod
    def _read(segments: SegmentedWriter) -> Iterator[Frame]:
        for segment in segments.reused:
            yield from iter_frames(segments.store.folder / segment_name(segment.number))


class _FacesInView:
    """The restored faces of each frame, read from the spools of the tracks in view (frames in order): a
    track's spool is opened at its first frame, and closed and removed (`remove`) after its last, so open files
    and disk use follow the faces in view, not all the video's tracks. The first frame asked for may come
    after tracks' starts (a resumed run): a spool is then read from that frame on, a track already over is
    not opened."""

    def __init__(self, plans: list[PlannedTrack], spools: dict[int, CropSpool], remove: bool = True):
        self.spools, self.remove = spools, remove
        chosen = [p for p in plans if p.skipped is None]
        self.waiting = deque(sorted(chosen, key=lambda p: (p.frame_range[0], p.number)))
        self.in_view: list[tuple[PlannedTrack, Iterator[np.ndarray]]] = []

    def on(self, index: int) -> list[tuple[np.ndarray, CropBox]]:
        """(restored face, crop square) of each face on frame `index`, the largest track first."""
        while self.waiting and self.waiting[0].frame_range[0] <= index:
            plan = self.waiting.popleft()
            if plan.frame_range[1] <= index:
                continue
            spool = self.spools[plan.number]
            first = plan.frame_range[0] if spool.first is None else spool.first
            self.in_view.append((plan, spool.read(skip=index - first)))
            self.in_view.sort(key=lambda item: (-item[0].track.total_area, item[0].number))
        faces = []
        for plan, reader in self.in_view:
            face = next(reader)
            if plan.has_face(index):
                faces.append((face, plan.box(index)))
        for item in [item for item in self.in_view if item[0].frame_range[1] <= index + 1]:
            self.in_view.remove(item)
            self._done(*item)
        return faces

    def close(self) -> None:
        for item in self.in_view:
            self._done(*item)
        self.in_view = []

    def _done(self, plan: PlannedTrack, reader: Iterator[np.ndarray]) -> None:
        reader.close()
        if self.remove:
            self.spools[plan.number].remove()


def frames_with_face(plans: list[PlannedTrack], frames: int) -> int:
    """Frames of the video on which at least one restored track has its face."""
    covered = np.zeros(frames, bool)
    for plan in plans:
        if plan.skipped is None:
            start, end = plan.frame_range
            covered[start:end] |= plan.crops.has_face
    return int(covered.sum())


def _preview(previews: PreviewMaker, frame: Frame, after: np.ndarray, faces: list[tuple[np.ndarray, CropBox]]) -> None:
    """The contact sheet shows the largest face of the frame, before and after."""
    pair = None
    if faces and previews.wants_sheet_frame(frame.index):
        face, box = faces[0]
        pair = (crop_face(frame.image, box), face)
    previews.add(frame.index, frame.pts, frame.image, after, pair)


def decode_again(source: Path, expected: int, limits) -> Iterator[Frame]:
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


def _count(busy: dict[str, float], stage: str, seconds: float) -> None:
    busy[stage] = busy.get(stage, 0.0) + seconds


def tracks_report(plans: list[PlannedTrack], engine: str) -> list[dict]:
    return [p.report(engine) for p in plans[:REPORTED_TRACKS]]

