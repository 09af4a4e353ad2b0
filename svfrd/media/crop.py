"""Where the face is cropped: crop policies, and cutting a crop square out of a frame at 512x512.

Two policies turn the subject's per-frame face boxes into one crop square per frame:

- `reference`: SVFR's own behaviour (docs/svfr.md §7): the union of the face boxes on every 5th frame,
  expanded by 0.4 per side, squared to the shorter side, one static crop for the whole video.
- `tracked`: a square per frame that follows the face, from the detected boxes, with short detection gaps
  bridged, smoothed without lag (the whole track is known before restoring), and restarted at scene cuts.

A crop square may reach outside the frame (a face at the edge); the missing part is filled by repeating the
edge pixels, and pasting back only writes inside the frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from svfrd.domain import CROP_SIZE
from svfrd.media.tracking import SubjectTrack

#: Crop side relative to the landmark-mesh box (tracked policy), and how far the centre is raised (relative to
#: the mesh height): the mesh stops at mid-forehead, so this frames the whole head with some shoulders, as the
#: reference's expanded detector boxes do.
TRACKED_SCALE = 2.0
HEAD_LIFT = 0.1
#: Temporal smoothing (Gaussian sigma in frames) of the crop centre and size.
CENTRE_SIGMA = 2.0
SIZE_SIGMA = 4.0


@dataclass(frozen=True)
class CropBox:
    """A square in upright frame pixels; x, y is the top-left corner. Sub-pixel: the tracked policy moves the
    square smoothly, and whole-pixel steps would make it shake by up to half a pixel per frame."""

    x: float
    y: float
    size: float

    @property
    def centre(self) -> tuple[float, float]:
        return self.x + self.size / 2, self.y + self.size / 2

    def pixel_bounds(self) -> tuple[int, int, int, int]:
        """The whole-pixel rectangle (x1, y1, x2, y2), end exclusive, that the square touches."""
        return (
            math.floor(self.x), math.floor(self.y),
            math.ceil(self.x + self.size), math.ceil(self.y + self.size),
        )

    def pixel_bounds_in_frame(self, width: int, height: int) -> tuple[int, int, int, int]:
        """`pixel_bounds` cut to a width x height frame: the pixels pasting back may write. Empty (x2 == x1 or
        y2 == y1) for a square beside the frame, never reversed, so slicing with them selects nothing."""
        x1, y1, x2, y2 = self.pixel_bounds()
        x1, y1 = min(max(0, x1), width), min(max(0, y1), height)
        return x1, y1, max(x1, min(width, x2)), max(y1, min(height, y2))


@dataclass(frozen=True)
class FrameCrops:
    """One crop square per frame, and whether that frame has the subject's face (else it passes through)."""

    boxes: list[CropBox]
    has_face: np.ndarray  # (N,) bool
    policy: str
    shots: list[tuple[int, int]]  # (start, end) frame ranges between scene cuts

    def __len__(self) -> int:
        return len(self.boxes)


def reference_square(union: tuple[float, float, float, float], width: int, height: int, expand: float = 0.4) -> CropBox:
    """SVFR's `process_bbox` as described in docs/svfr.md §7 (written from the description)."""
    x1, y1, x2, y2 = union
    w, h = x2 - x1, y2 - y1
    ex1, ey1 = max(x1 - expand * w, 0.0), max(y1 - expand * h, 0.0)
    ex2, ey2 = min(x2 + expand * w, float(width)), min(y2 + expand * h, float(height))
    ew, eh = ex2 - ex1, ey2 - ey1
    cx, cy = (ex1 + ex2) / 2, (ey1 + ey2) / 2
    union_cx, union_cy = (x1 + x2) / 2, (y1 + y2) / 2
    half = min(ew, eh) / 2
    slack = abs(eh - ew) / 2  # how far the square can slide along the longer axis and stay inside
    if ew < eh:
        cy += float(np.clip(union_cy - cy, -slack, slack))
    else:
        cx += float(np.clip(union_cx - cx, -slack, slack))
    left, top = round(cx - half), round(cy - half)
    right, bottom = round(cx + half), round(cy + half)
    return CropBox(int(left), int(top), int(max(1, min(right - left, bottom - top))))


def reference_crops(track: SubjectTrack, has_face: np.ndarray, width: int, height: int) -> FrameCrops:
    """One static square for the whole video from the union of the boxes on frames 0, 5, 10, ..."""
    sampled = track.boxes[::5]
    sampled = sampled[~np.isnan(sampled[:, 0])]
    if len(sampled) == 0:  # the face shows only between sampled frames: use every frame rather than fail
        sampled = track.boxes[track.detected]
    union = (sampled[:, 0].min(), sampled[:, 1].min(), sampled[:, 2].max(), sampled[:, 3].max())
    box = reference_square(union, width, height)
    return FrameCrops(boxes=[box] * len(track.boxes), has_face=has_face, policy="reference", shots=track.shots)


def square_geometry(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) landmark-mesh boxes x1, y1, x2, y2 -> (N, 3) crop squares as centre x, centre y, side."""
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2 - HEAD_LIFT * height
    return np.stack([centre_x, centre_y, TRACKED_SCALE * np.maximum(width, height)], axis=1)


def face_crop_box(box: tuple[float, float, float, float]) -> CropBox:
    """The tracked policy's crop square for one face box (e.g. a face found in a reference picture)."""
    cx, cy, side = square_geometry(np.asarray([box], dtype=np.float64))[0]
    return CropBox(float(cx - side / 2), float(cy - side / 2), float(side))


def bridge_gaps(track: SubjectTrack, max_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (cx, cy, side) of the face, with detection gaps of up to `max_gap` frames filled in.

    Inside a shot a short gap is interpolated (a blink of the detector, a hand passing); at a shot's ends the
    nearest detection is held. Longer gaps stay empty: the face has probably left the picture."""
    n = len(track.boxes)
    geometry = np.full((n, 3), np.nan)
    found = track.detected
    geometry[found] = square_geometry(track.boxes[found])
    filled = geometry.copy()
    for start, end in track.shots:
        idx = np.flatnonzero(found[start:end]) + start
        if len(idx) == 0:
            continue
        for a, c in zip(idx, idx[1:]):
            if 1 < c - a <= max_gap + 1:
                for i in range(a + 1, c):
                    t = (i - a) / (c - a)
                    filled[i] = (1 - t) * geometry[a] + t * geometry[c]
        for i in range(max(start, idx[0] - max_gap), idx[0]):
            filled[i] = geometry[idx[0]]
        for i in range(idx[-1] + 1, min(end, idx[-1] + 1 + max_gap)):
            filled[i] = geometry[idx[-1]]
    return filled, ~np.isnan(filled[:, 0])


def _gaussian_smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    """Zero-lag Gaussian smoothing along axis 0, edges padded with the end values (no pull toward zero)."""
    if len(values) < 2 or sigma <= 0:
        return values.copy()
    radius = int(3 * sigma)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.concatenate([np.repeat(values[:1], radius, 0), values, np.repeat(values[-1:], radius, 0)])
    return np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(values.shape[1])], axis=1)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True values."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def tracked_crops(track: SubjectTrack, max_gap: int) -> FrameCrops:
    """A smoothed square per frame; smoothing restarts at scene cuts and at frames without the face."""
    geometry, has_face = bridge_gaps(track, max_gap)
    smooth = geometry.copy()
    for start, end in track.shots:
        for a, b in _runs(has_face[start:end]):
            part = geometry[start + a : start + b]
            smooth[start + a : start + b, :2] = _gaussian_smooth(part[:, :2], CENTRE_SIGMA)
            smooth[start + a : start + b, 2:] = _gaussian_smooth(part[:, 2:], SIZE_SIGMA)
    smooth = _hold_nearest(smooth, has_face)
    boxes = [CropBox(float(cx - s / 2), float(cy - s / 2), float(max(s, 1.0))) for cx, cy, s in smooth]
    return FrameCrops(boxes=boxes, has_face=has_face, policy="tracked", shots=track.shots)


def _hold_nearest(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill rows without a face from the nearest row with one, so the engine still gets a sensible crop."""
    positions = np.arange(len(values))
    idx = np.flatnonzero(valid)
    after = np.clip(np.searchsorted(idx, positions), 0, len(idx) - 1)  # first valid row at or after
    before = np.clip(after - 1, 0, len(idx) - 1)
    use_before = np.abs(idx[before] - positions) < np.abs(idx[after] - positions)
    nearest = np.where(use_before, idx[before], idx[after])
    out = values.copy()
    out[~valid] = values[nearest[~valid]]
    return out


def _face_runs(crops: FrameCrops) -> list[tuple[int, int]]:
    """Runs of consecutive face frames, never across a scene cut."""
    return [(start + a, start + b) for start, end in crops.shots for a, b in _runs(crops.has_face[start:end])]


def crop_jitter(crops: FrameCrops) -> dict:
    """How much the crop square shakes: RMS of the frame-to-frame change of its velocity (second difference)
    of the centre, over runs of face frames within one shot. A smooth pan has a small value, detector noise a
    large one. In pixels and relative to the crop size; `max_step_px` is the largest frame-to-frame move of
    the centre or size."""
    geo = np.array([(b.centre[0], b.centre[1], b.size) for b in crops.boxes], dtype=np.float64)
    runs = _face_runs(crops)
    seconds = [np.diff(geo[a:b], n=2, axis=0) for a, b in runs if b - a >= 3]
    if not seconds:
        return {"jitter_px": 0.0, "jitter_rel": 0.0, "max_step_px": 0.0}
    second = np.concatenate(seconds)
    first = np.concatenate([np.diff(geo[a:b], axis=0) for a, b in runs if b - a >= 2])
    rms = float(np.sqrt((second[:, :2] ** 2).sum(axis=1).mean()))
    mean_size = float(geo[crops.has_face, 2].mean())
    return {
        "jitter_px": round(rms, 3),
        "jitter_rel": round(rms / mean_size, 5),
        "max_step_px": round(float(np.abs(first).max()), 2),
    }


def cut_rect(image: np.ndarray, x1: int, y1: int, x2: int, y2: int, fill: str = "edge") -> np.ndarray:
    """image[y1:y2, x1:x2], padded where the rectangle leaves the frame ("edge": repeat the edge pixels, as
    a face at the border is best continued; "zero": zeros, as for masks, where outside means undamaged)."""
    height, width = image.shape[:2]
    pad = (max(0, -y1), max(0, y2 - height), max(0, -x1), max(0, x2 - width))
    inside = image[max(0, y1) : min(height, y2), max(0, x1) : min(width, x2)]
    if not any(pad):
        return inside
    if inside.size == 0 or fill == "zero":
        out = np.zeros((y2 - y1, x2 - x1) + image.shape[2:], image.dtype)
        if inside.size:
            out[pad[0] : pad[0] + inside.shape[0], pad[2] : pad[2] + inside.shape[1]] = inside
        return out
    return cv2.copyMakeBorder(np.ascontiguousarray(inside), *pad, cv2.BORDER_REPLICATE)


def cut_square(image: np.ndarray, box: CropBox, fill: str = "edge") -> np.ndarray:
    """The whole pixels under `box` (for a box on whole pixels: exactly its pixels), padded outside the frame."""
    return cut_rect(image, *box.pixel_bounds(), fill=fill)


def sample_square(
    image: np.ndarray, box: CropBox, size: int = CROP_SIZE, resample: int = Image.BICUBIC, fill: str = "edge"
) -> np.ndarray:
    """The square `box` resampled to size x size, with sub-pixel accuracy and antialiasing when shrinking
    (PIL's resize of a fractional source box). A margin of 2 pixels feeds the filter at the square's edges."""
    x1, y1, x2, y2 = box.pixel_bounds()
    margin = 2
    region = np.ascontiguousarray(cut_rect(image, x1 - margin, y1 - margin, x2 + margin, y2 + margin, fill))
    left, top = box.x - (x1 - margin), box.y - (y1 - margin)
    source_box = (left, top, left + box.size, top + box.size)
    return np.asarray(Image.fromarray(region).resize((size, size), resample, box=source_box))


def crop_face(image: np.ndarray, box: CropBox) -> np.ndarray:
    """The 512x512 RGB crop the engine sees; bicubic as the reference's PIL resize (docs/svfr.md §7)."""
    return sample_square(image, box)
