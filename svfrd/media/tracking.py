"""The face pass: one streaming decode that finds faces and scene cuts, then the main subject's track.

Only small per-frame facts are kept (face boxes, 5 points, a cut flag), never frames (at most one, held back
for a moment), so the pass costs the same memory for a minute or an hour of video. What comes out is per
frame: the subject's face box (or none), which the crop policies in `svfrd.media.crop` turn into crop squares.

While a face is in view the detector looks at every DETECT_EVERY-th frame and at the first and last frame of
each shot; faces on the frames between are interpolated from the looks either side (a face is matched to
itself by box overlap). The crop is smoothed over several frames anyway (`svfrd.media.crop`), so this saves
most of the detector's time at no visible cost: docs/architecture.md gives the measured crop jitter. While no
face is in view every frame is looked at, so a face is picked up on the frame it appears.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from svfrd.config import LimitsConfig
from svfrd.media.faces import DetectedFace, FaceFinder, intersection_area
from svfrd.media.stages import threaded
from svfrd.media.video_io import DEFAULT_LIMITS, Frame, VideoInfo, iter_frames

#: Bhattacharyya distance between colour histograms of consecutive frames above which a scene cut is assumed.
CUT_THRESHOLD = 0.45
#: A face seen in fewer frames of a shot than this (or than the shot has) is taken for a detector mistake.
MIN_TRACK_FRAMES = 3
#: While a face is in view, the detector looks at every this many frames (see the module docstring).
DETECT_EVERY = 2
#: Decoded frames the face pass's decoder thread may run ahead of the detector.
DECODE_AHEAD = 4


@dataclass
class FacePass:
    """What the face pass saw, per frame."""

    faces: list[list[DetectedFace]] = field(default_factory=list)  # found, or interpolated between looks
    cut_before: list[bool] = field(default_factory=list)  # True: frame i starts a new shot
    looked: list[bool] = field(default_factory=list)  # True: the detector looked at frame i (empty: all)

    @property
    def frames(self) -> int:
        return len(self.faces)

    def shots(self) -> list[tuple[int, int]]:
        """(start, end) frame ranges, end exclusive."""
        starts = [i for i, cut in enumerate(self.cut_before) if cut or i == 0]
        return [(s, e) for s, e in zip(starts, starts[1:] + [self.frames])]


@dataclass(frozen=True)
class SubjectTrack:
    """The main subject's face per frame. boxes: (N, 4) x1, y1, x2, y2, NaN where not detected."""

    boxes: np.ndarray
    points5: np.ndarray  # (N, 5, 2), NaN where not detected
    shots: list[tuple[int, int]]
    faces_seen: int  # the most faces seen in one frame
    report: dict

    @property
    def detected(self) -> np.ndarray:
        return ~np.isnan(self.boxes[:, 0])


def colour_signature(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Small colour (hue/saturation) and brightness histograms: cheap, and stable under camera motion,
    unlike pixel differences."""
    small = cv2.resize(image, (64, 64), interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    colour = cv2.calcHist([hsv], [0, 1], None, [16, 8], [0, 180, 0, 256])
    brightness = cv2.calcHist([hsv], [2], None, [16], [0, 256])
    return cv2.normalize(colour, colour).flatten(), cv2.normalize(brightness, brightness).flatten()


def is_cut(previous: tuple[np.ndarray, np.ndarray] | None, current: tuple[np.ndarray, np.ndarray]) -> bool:
    if previous is None:
        return False
    return any(
        cv2.compareHist(a, b, cv2.HISTCMP_BHATTACHARYYA) > CUT_THRESHOLD for a, b in zip(previous, current)
    )


def scan_faces(
    path: Path, info: VideoInfo, model_path: Path, progress: Callable[[int, int], None] | None = None,
    limits: LimitsConfig = DEFAULT_LIMITS, detect_every: int = DETECT_EVERY, busy: dict[str, float] | None = None,
    max_faces: int = 4,
) -> FacePass:
    """Decode the whole video once, keeping only faces and cut flags per frame (within `limits`). Decoding and
    the cut detector's histograms run on a thread beside the face detector; `progress` is called here.
    `busy` gets the seconds each of the two was busy (benchmarks); `max_faces` is the most faces the detector
    reports in one frame."""
    seen = FacePass()
    busy = busy if busy is not None else {}
    with FaceFinder(model_path, max_faces=max_faces) as finder:
        scanner = _Scanner(seen, finder, float(info.time_base) * 1000.0, detect_every)
        frames = threaded("faces: decode+cuts", lambda: _signed_frames(path, limits), DECODE_AHEAD, busy)
        try:
            for frame, signature in frames:
                started = time.perf_counter()
                scanner.add(frame, signature)
                busy["faces: detector"] = busy.get("faces: detector", 0.0) + time.perf_counter() - started
                if progress is not None:
                    progress(frame.index + 1, info.frames)  # raises on cancel: the decoder thread stops below
        finally:
            frames.close()
        started = time.perf_counter()
        scanner.finish()
        busy["faces: detector"] = busy.get("faces: detector", 0.0) + time.perf_counter() - started
    return seen


def _signed_frames(path: Path, limits: LimitsConfig) -> Iterator[tuple[Frame, tuple[np.ndarray, np.ndarray]]]:
    for frame in iter_frames(path, limits):
        yield frame, colour_signature(frame.image)


class _Scanner:
    """Decides which frames the detector looks at, and fills the frames between two looks (module docstring)."""

    def __init__(self, seen: FacePass, finder: FaceFinder, ms_per_tick: float, detect_every: int):
        self.seen, self.finder, self.ms_per_tick = seen, finder, ms_per_tick
        self.every = max(1, detect_every)
        self.previous_signature: tuple[np.ndarray, np.ndarray] | None = None
        self.last_looked: int | None = None
        self.held: Frame | None = None  # the latest frame, not looked at (yet)

    def add(self, frame: Frame, signature: tuple[np.ndarray, np.ndarray]) -> None:
        cut = is_cut(self.previous_signature, signature)
        self.previous_signature = signature
        self.seen.cut_before.append(cut)
        self.seen.faces.append([])
        self.seen.looked.append(False)
        if cut and self.held is not None:
            self._look(self.held)  # the last frame of a shot closes its last gap
        self.held = None
        if cut or self._due(frame.index):
            self._look(frame)
        else:
            self.held = frame

    def finish(self) -> None:
        if self.held is not None:
            self._look(self.held)
            self.held = None

    def _due(self, index: int) -> bool:
        last = self.last_looked
        return last is None or not self.seen.faces[last] or index - last >= self.every

    def _look(self, frame: Frame) -> None:
        index = frame.index
        self.seen.faces[index] = self.finder.find(frame.image, int(frame.pts * self.ms_per_tick))
        self.seen.looked[index] = True
        if self.last_looked is not None:
            self._fill_gap(self.last_looked, index)
        self.last_looked = index

    def _fill_gap(self, before: int, after: int) -> None:
        for i in range(before + 1, after):
            t = (i - before) / (after - before)
            self.seen.faces[i] = interpolate_faces(self.seen.faces[before], self.seen.faces[after], t)


def interpolate_faces(before: list[DetectedFace], after: list[DetectedFace], t: float) -> list[DetectedFace]:
    """The faces a fraction `t` of the way between two looks: each face of `before` that overlaps one of `after`
    (the rule frame-to-frame linking uses) moves linearly toward it; a face seen on one side only is left out.
    Largest first, as the detector gives them."""
    faces, taken = [], set()
    for face in before:
        best, best_iou = None, 0.2
        for k, other in enumerate(after):
            overlap = _iou(face.box, other.box)
            if k not in taken and overlap > best_iou:
                best, best_iou = k, overlap
        if best is None:
            continue
        taken.add(best)
        other = after[best]
        box = tuple(float((1 - t) * a + t * b) for a, b in zip(face.box, other.box))
        points = ((1 - t) * face.points5 + t * other.points5).astype(np.float32)
        faces.append(DetectedFace(box=box, points5=points))
    return sorted(faces, key=lambda f: -f.area)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    inter = intersection_area(a, b)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _link_tracks(faces: list[list[DetectedFace]], start: int, end: int, max_gap: int) -> list[dict[int, DetectedFace]]:
    """Greedy frame-to-frame linking by box overlap, within one shot. Faces come largest first, so the
    result does not depend on MediaPipe's output order."""
    tracks: list[dict[int, DetectedFace]] = []
    for i in range(start, end):
        taken: set[int] = set()
        for face in faces[i]:
            best, best_iou = None, 0.2
            for t, track in enumerate(tracks):
                last = next(reversed(track))  # frames are added in order: max() would grow with the track
                if t in taken or i - last > max_gap:
                    continue
                overlap = _iou(track[last].box, face.box)
                if overlap > best_iou:
                    best, best_iou = t, overlap
            if best is None:
                tracks.append({i: face})
                taken.add(len(tracks) - 1)
            else:
                tracks[best][i] = face
                taken.add(best)
    return tracks


def select_subject(seen: FacePass, max_gap: int = 12) -> SubjectTrack:
    """The main subject per shot: the face track with the largest total area (size times time on screen)."""
    n = seen.frames
    boxes = np.full((n, 4), np.nan, dtype=np.float64)
    points = np.full((n, 5, 2), np.nan, dtype=np.float64)
    shot_reports = []
    shots = seen.shots()
    for start, end in shots:
        needed = min(MIN_TRACK_FRAMES, end - start)
        tracks = [t for t in _link_tracks(seen.faces, start, end, max_gap) if len(t) >= needed]
        if not tracks:
            shot_reports.append({"frame_range": [start, end], "face_tracks": 0})
            continue
        # Ties go to the track that appears first: deterministic whatever the detector's order.
        subject = max(tracks, key=lambda t: (sum(f.area for f in t.values()), -min(t)))
        for i, face in subject.items():
            boxes[i] = face.box
            points[i] = face.points5
        mean_box = np.mean([f.box for f in subject.values()], axis=0)
        shot_reports.append({
            "frame_range": [start, end],
            "face_tracks": len(tracks),
            "subject_box": [round(float(v), 1) for v in mean_box],
            "subject_frames": len(subject),
        })
    faces_seen = max((len(f) for f in seen.faces), default=0)
    report = {
        "shots": len(shot_reports),
        "frames_with_subject": int((~np.isnan(boxes[:, 0])).sum()),
        # The rest were interpolated between looks (see the module docstring).
        "frames_the_detector_looked_at": int(sum(seen.looked)) if seen.looked else n,
        "most_faces_in_a_frame": faces_seen,
        "subject_rule": "per shot, the face track with the largest area summed over its frames",
        "shot_details": shot_reports[:50],
    }
    return SubjectTrack(boxes=boxes, points5=points, shots=shots, faces_seen=faces_seen, report=report)


# ---------------------------------------------------------------------------------------------------------------
# Every face (`[faces] restore = "all"`): detections linked into one track per person and shot.

#: A detection continues a track when its centre lies within this many face sizes of where the track's motion
#: puts it, and its size is within this ratio of the track's: faces that pass each other differ in place and
#: usually in size, so neither alone is enough (docs/architecture.md, "Every face").
LINK_DISTANCE = 0.6
LINK_SIZE_RATIO = 1.6


@dataclass
class FaceTrack:
    """One person's face through part of one shot: detections by frame (looked-at frames only; the frames
    between are filled by the crop track, `svfrd.media.crop.bridge_gaps`), added in frame order: the linker
    asks for the last ones every frame, which must not cost more as the track grows."""

    shot: tuple[int, int]
    faces: dict[int, DetectedFace] = field(default_factory=dict)

    @property
    def first(self) -> int:
        return next(iter(self.faces))

    @property
    def last(self) -> int:
        return next(reversed(self.faces))

    @property
    def total_area(self) -> float:
        return sum(face.area for face in self.faces.values())

    @property
    def typical_height(self) -> float:
        """The median height of the face box in pixels."""
        return float(np.median([face.height for face in self.faces.values()]))

    def predicted(self, index: int) -> tuple[float, float, float]:
        """(cx, cy, size) expected at frame `index`: the last detection moved on at the track's recent velocity
        (over up to its last three detections), so a face keeps its course through a crossing or a gap."""
        frames = list(islice(reversed(self.faces), 3))[::-1]
        last = self.faces[frames[-1]]
        cx, cy = last.centre
        if len(frames) > 1:
            first = self.faces[frames[0]]
            steps = frames[-1] - frames[0]
            vx, vy = (cx - first.centre[0]) / steps, (cy - first.centre[1]) / steps
            ahead = index - frames[-1]
            cx, cy = cx + vx * ahead, cy + vy * ahead
        return cx, cy, _face_size(last)

    def as_subject(self, frames: int, shots: list[tuple[int, int]]) -> SubjectTrack:
        """This track in the form the crop policies take (`svfrd.media.crop`): NaN outside its detections."""
        boxes = np.full((frames, 4), np.nan, dtype=np.float64)
        points = np.full((frames, 5, 2), np.nan, dtype=np.float64)
        for i, face in self.faces.items():
            boxes[i], points[i] = face.box, face.points5
        return SubjectTrack(boxes=boxes, points5=points, shots=shots, faces_seen=1, report={})

    def as_window(self) -> SubjectTrack:
        """This track over its own frames only, `first` to `last` (index 0 is frame `first`): crop squares
        built from it cost memory for the track's length, not the whole video's."""
        first = self.first
        window = FaceTrack(self.shot, {i - first: face for i, face in self.faces.items()})
        return window.as_subject(self.last - first + 1, [(0, self.last - first + 1)])


def _face_size(face: DetectedFace) -> float:
    return max(face.width, face.height, 1.0)


def _link_cost(track: FaceTrack, face: DetectedFace, index: int) -> float | None:
    """How far `face` is from where `track` should be at `index`, in face sizes; None when it cannot be it."""
    cx, cy, size = track.predicted(index)
    ratio = _face_size(face) / size
    if not 1 / LINK_SIZE_RATIO <= ratio <= LINK_SIZE_RATIO:
        return None
    distance = float(np.hypot(face.centre[0] - cx, face.centre[1] - cy)) / max(size, _face_size(face))
    if distance > LINK_DISTANCE:
        return None
    return distance + abs(np.log(ratio))  # a size change counts as much as a move of that many sizes


def link_face_tracks(seen: FacePass, max_gap: int) -> list[FaceTrack]:
    """Every face track of every shot. Only the frames the detector looked at are linked (the faces on the
    frames between are interpolations, which can mix up two faces as they pass each other). Each frame, the
    cheapest detection-to-track pairs are taken first; a track not seen for more than `max_gap` frames has
    ended, and a shot cut ends every track."""
    looked = seen.looked if seen.looked else [True] * seen.frames
    tracks: list[FaceTrack] = []
    for shot in seen.shots():
        open_tracks: list[FaceTrack] = []
        for i in range(*shot):
            if not looked[i]:
                continue
            open_tracks = [t for t in open_tracks if i - t.last <= max_gap]
            pairs = sorted(
                (cost, t, f)
                for t, track in enumerate(open_tracks)
                for f, face in enumerate(seen.faces[i])
                if (cost := _link_cost(track, face, i)) is not None
            )
            used_tracks, used_faces = set(), set()
            for _, t, f in pairs:
                if t in used_tracks or f in used_faces:
                    continue
                open_tracks[t].faces[i] = seen.faces[i][f]
                used_tracks.add(t)
                used_faces.add(f)
            for f, face in enumerate(seen.faces[i]):
                if f not in used_faces:
                    track = FaceTrack(shot=shot, faces={i: face})
                    open_tracks.append(track)
                    tracks.append(track)
    return tracks
