"""Putting the restored 512x512 face back into the full frame.

The face is resized to its crop square and blended in with a feathered square mask: full weight in the middle,
fading to zero at the square's border, so there is no seam (except on sides where the square reaches the
frame's border: there is nothing to blend with there). Pixels outside the square are not touched at all
(bit-identical), and where the mask weight is zero the original pixel is kept exactly.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image

from svfrd.media.crop import CropBox

#: Width of the fade, as a fraction of the crop side.
FEATHER = 0.12


def edge_ramp(
    first: int, last: int, start: float, end: float, feather: float, fade_start: bool = True, fade_end: bool = True
) -> np.ndarray:
    """Weights for pixels first..last-1 of a square side spanning [start, end): 0 for pixels whose centre is
    within half a pixel of an edge (or outside), rising smoothly to 1 over `feather` pixels. A side that does
    not fade (it lies on or beyond the frame's border, where there is no seam to hide) keeps weight 1."""
    centres = np.arange(first, last, dtype=np.float64) + 0.5
    to_start = centres - start if fade_start else np.full_like(centres, np.inf)
    to_end = end - centres if fade_end else np.full_like(centres, np.inf)
    edge_distance = np.minimum(to_start, to_end)
    ramp = np.clip((edge_distance - 0.5) / max(feather, 1.0), 0.0, 1.0)
    return (ramp * ramp * (3 - 2 * ramp)).astype(np.float32)  # smoothstep: no kink where the fade begins


def feather_weights(
    box: CropBox, bounds: tuple[int, int, int, int], frame_size: tuple[int, int] | None = None,
    feather: float = FEATHER,
) -> np.ndarray:
    """(h, w, 1) blend weights over the whole-pixel rectangle `bounds` (x1, y1, x2, y2) for the square `box`.
    With `frame_size` (width, height), sides of the square on or beyond the frame's border do not fade, so a
    face that fills the picture is restored right up to the border."""
    x1, y1, x2, y2 = bounds
    frame_width, frame_height = frame_size if frame_size else (np.inf, np.inf)
    width = feather * box.size
    right, bottom = box.x + box.size, box.y + box.size
    columns = edge_ramp(x1, x2, box.x, right, width, box.x > 0.5, right < frame_width - 0.5)
    rows = edge_ramp(y1, y2, box.y, bottom, width, box.y > 0.5, bottom < frame_height - 0.5)
    return np.minimum.outer(rows, columns)[:, :, None]


def place_face(face: np.ndarray, box: CropBox, bounds: tuple[int, int, int, int]) -> np.ndarray:
    """The 512 face resampled onto the frame's pixel grid over `bounds`, honouring the square's sub-pixel
    position. The face is padded by repeating its edge, so the filter has input at the square's border."""
    x1, y1, x2, y2 = bounds
    scale = face.shape[0] / box.size
    margin = int(math.ceil(scale)) + 2
    padded = cv2.copyMakeBorder(face, margin, margin, margin, margin, cv2.BORDER_REPLICATE)
    source_box = (
        margin + (x1 - box.x) * scale, margin + (y1 - box.y) * scale,
        margin + (x2 - box.x) * scale, margin + (y2 - box.y) * scale,
    )
    return np.asarray(Image.fromarray(padded).resize((x2 - x1, y2 - y1), Image.BICUBIC, box=source_box))


def paste_back(frame: np.ndarray, face: np.ndarray, box: CropBox, in_place: bool = False) -> np.ndarray:
    """A copy of `frame` with the restored `face` (512x512 RGB uint8) blended into `box`; with `in_place`,
    `frame` itself (saves copying every frame when nothing else needs the original)."""
    height, width = frame.shape[:2]
    bounds = box.pixel_bounds_in_frame(width, height)
    x1, y1, x2, y2 = bounds
    out = frame if in_place else frame.copy()
    if x2 <= x1 or y2 <= y1:
        return out
    weights = feather_weights(box, bounds, (width, height))
    placed = place_face(face, box, bounds)
    region = out[y1:y2, x1:x2]
    # Most of the square has weight 1 (the face as restored, exactly what blending gives there): only the
    # feathered band around it is blended, which is about 40 % of the pixels.
    top, bottom = _full_weight_span(weights[:, :, 0].max(axis=1))
    left, right = _full_weight_span(weights[:, :, 0].max(axis=0))
    if top == bottom or left == right:
        _blend(region, placed, weights)
        return out
    _blend(region[:top], placed[:top], weights[:top])
    _blend(region[bottom:], placed[bottom:], weights[bottom:])
    _blend(region[top:bottom, :left], placed[top:bottom, :left], weights[top:bottom, :left])
    _blend(region[top:bottom, right:], placed[top:bottom, right:], weights[top:bottom, right:])
    region[top:bottom, left:right] = placed[top:bottom, left:right]
    return out


def _full_weight_span(ramp: np.ndarray) -> tuple[int, int]:
    """(start, end) of the run of weight 1 in a rising-then-falling ramp; (0, 0) when there is none."""
    full = np.flatnonzero(ramp >= 1.0)
    return (int(full[0]), int(full[-1]) + 1) if len(full) else (0, 0)


def _blend(region: np.ndarray, placed: np.ndarray, weights: np.ndarray) -> None:
    """region <- round(region + (placed - region) * weights), in place, in float32."""
    if region.size == 0:
        return
    original = region.astype(np.float32)
    blended = placed.astype(np.float32)
    blended -= original
    blended *= weights
    blended += original
    np.rint(blended, out=blended)
    np.clip(blended, 0, 255, out=blended)
    region[...] = blended
