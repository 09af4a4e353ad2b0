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
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from svfrd.domain import CROP_SIZE
from svfrd.engines.interface import Engine, FaceCrop, ProgressReporter, RestoreRequest
from svfrd.errors import BadInputError
from svfrd.media.crop import CropBox, FrameCrops, crop_face
from svfrd.media.masks import Mask
from svfrd.media.paste import paste_back
from svfrd.media.preview import PreviewMaker
from svfrd.media.stages import threaded
from svfrd.media.tracking import MIN_TRACK_FRAMES, FaceTrack
from svfrd.media.video_io import Frame, VideoInfo, VideoWriter, iter_frames

#: Tracks listed in the report at most (a long film can have thousands).
REPORTED_TRACKS = 50


@dataclass
class PlannedTrack:
    """A face track and what is done with it: `crops` to restore, or why it is `skipped`. The crop squares
    cover the track's own frames, `frame_range`, only (`FaceTrack.as_window`): use `box` and `has_face`."""

    number: int  # 1, 2, ... in order of first appearance
    track: FaceTrack
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
    of the raw size), read back once, in order, then removed. Only the sizes stay in memory."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "wb")
        self._sizes: list[int] = []

    def write(self, crop: np.ndarray) -> None:
        ok, data = cv2.imencode(".png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise RuntimeError("could not encode a restored face crop for the spool")
        self._file.write(data.tobytes())
        self._sizes.append(len(data))

    def finish(self) -> None:
        self._file.close()

    def __len__(self) -> int:
        return len(self._sizes)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def read(self) -> Iterator[np.ndarray]:
        with open(self.path, "rb") as f:
            for size in self._sizes:
                data = np.frombuffer(f.read(size), np.uint8)
                yield cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


class TrackCropStream:
    """The crops of one face track, over its `frame_range`, for the engine (`svfrd.engines.interface`): each
    iteration decodes the video anew, so memory stays bounded."""

    def __init__(self, source: Path, plan: PlannedTrack, mask: Mask | None, limits):
        self.source, self.plan, self.mask, self.limits = source, plan, mask, limits
        self.start, self.end = plan.frame_range
        crops: FrameCrops = plan.crops
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
                   mask: Mask | None, limits, spool_dir: Path,
                   progress: ProgressReporter) -> tuple[dict[int, CropSpool], list[str]]:
    """Run the engine over each planned track in turn; returns each track's spool by its number, and the
    engine's warnings of all runs. A reference face from the sidecar shows the main subject, so only the
    largest track gets it. Progress goes forward over all runs: each run's stages are prefixed "face N of M"
    and map its frames into the share of all tracks' frames that its track has (`_overall`)."""
    chosen = [p for p in plans if p.skipped is None]
    main = main_track(plans)
    total = sum(p.frame_range[1] - p.frame_range[0] for p in chosen)
    done_before = 0
    spools, warnings = {}, []
    for n, plan in enumerate(chosen, 1):
        stream = TrackCropStream(source, plan, mask, limits)
        own_request = request if plan is main else RestoreRequest(
            tasks=request.tasks, seed=request.seed, reference_face=None, options=request.options)
        spool = CropSpool(spool_dir / f"track-{plan.number}.png-spool")
        spools[plan.number] = spool
        label = f"face {n} of {len(chosen)}"
        _restore_one(engine, own_request, stream, spool, _overall(progress, label, done_before, len(stream), total))
        done_before += len(stream)
        warnings += [w for w in engine.warnings() if w not in warnings]
    return spools, warnings


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
                    progress: ProgressReporter, busy: dict[str, float]) -> dict:
    """The one output pass: every frame decoded, its faces pasted (`composite_frame`), encoded; returns the
    frame size facts as `svfrd.media.pipeline` reports them."""
    faces_in_view = _FacesInView(plans, spools)
    decoded = threaded("decode", lambda: decode_again(source, frames, limits), 4, busy)
    try:
        with VideoWriter(output, info, crf=crf, audio_source=source) as writer:
            written = 0
            for frame in decoded:
                started = time.perf_counter()
                faces = faces_in_view.on(frame.index)
                after = composite_frame(frame.image, faces, in_place=previews is None)
                pasted = time.perf_counter()
                writer.write(after, frame.pts)
                encoded = time.perf_counter()
                if previews is not None:
                    _preview(previews, frame, after, faces)
                _count(busy, "paste", pasted - started)
                _count(busy, "encode", encoded - pasted)
                written += 1
                progress("encode", written, frames)
            size = {"input": list(writer.input_size), "output": list(writer.size), "adjusted": writer.adjustment}
        if previews is not None:
            previews.close()
    except BaseException:
        if previews is not None:
            previews.abort()
        raise
    finally:
        decoded.close()
        faces_in_view.close()
    return size


class _FacesInView:
    """The restored faces of each frame, read from the spools of the tracks in view (frames in order): a
    track's spool is opened at its first frame, and closed and removed after its last, so open files and disk
    use follow the faces in view, not all the video's tracks."""

    def __init__(self, plans: list[PlannedTrack], spools: dict[int, CropSpool]):
        self.spools = spools
        chosen = [p for p in plans if p.skipped is None]
        self.waiting = deque(sorted(chosen, key=lambda p: (p.frame_range[0], p.number)))
        self.in_view: list[tuple[PlannedTrack, Iterator[np.ndarray]]] = []

    def on(self, index: int) -> list[tuple[np.ndarray, CropBox]]:
        """(restored face, crop square) of each face on frame `index`, the largest track first."""
        while self.waiting and self.waiting[0].frame_range[0] <= index:
            plan = self.waiting.popleft()
            self.in_view.append((plan, self.spools[plan.number].read()))
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

