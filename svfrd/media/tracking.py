"""The face pass: one streaming decode that finds faces and scene cuts, then the main subject's track.

Only small per-frame facts are kept (face boxes, 5 points, a cut flag), never frames, so the pass costs the
same memory for a minute or an hour of video. What comes out is per frame: the subject's face box (or none),
which the crop policies in `svfrd.media.crop` turn into crop squares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from svfrd.config import LimitsConfig
from svfrd.media.faces import DetectedFace, FaceFinder, intersection_area
from svfrd.media.video_io import DEFAULT_LIMITS, VideoInfo, iter_frames

#: Bhattacharyya distance between colour histograms of consecutive frames above which a scene cut is assumed.
CUT_THRESHOLD = 0.45
#: A face seen in fewer frames of a shot than this (or than the shot has) is taken for a detector mistake.
MIN_TRACK_FRAMES = 3


@dataclass
class FacePass:
    """What the face pass saw, per frame."""

    faces: list[list[DetectedFace]] = field(default_factory=list)
    cut_before: list[bool] = field(default_factory=list)  # True: frame i starts a new shot

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
    limits: LimitsConfig = DEFAULT_LIMITS,
) -> FacePass:
    """Decode the whole video once, keeping only faces and cut flags per frame (within `limits`)."""
    seen = FacePass()
    previous = None
    ms_per_tick = float(info.time_base) * 1000.0
    with FaceFinder(model_path) as finder:
        for frame in iter_frames(path, limits):
            signature = colour_signature(frame.image)
            seen.cut_before.append(is_cut(previous, signature))
            previous = signature
            seen.faces.append(finder.find(frame.image, int(frame.pts * ms_per_tick)))
            if progress is not None:
                progress(frame.index + 1, info.frames)
    return seen


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
                last = max(track)
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
        "most_faces_in_a_frame": faces_seen,
        "subject_rule": "per shot, the face track with the largest area summed over its frames",
        "shot_details": shot_reports[:50],
    }
    return SubjectTrack(boxes=boxes, points5=points, shots=shots, faces_seen=faces_seen, report=report)
