"""Putting the restored 512x512 face back into the full frame.

The face is resized to its crop square and blended in with a feathered square mask: full weight in the middle,
fading to zero at the square's border, so there is no seam. Pixels outside the square are not touched at all
(bit-identical), and where the mask weight is zero the original pixel is kept exactly.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from svfrd.media.crop import CropBox

#: Width of the fade, as a fraction of the crop side.
FEATHER = 0.12


@lru_cache(maxsize=8)
def feather_mask(size: int, feather: float = FEATHER) -> np.ndarray:
    """(size, size, 1) float32 weights: 1 inside, a smooth fade to exactly 0 at the border."""
    ramp_width = max(1.0, feather * size)
    coords = np.arange(size, dtype=np.float32) + 0.5
    edge_distance = np.minimum(coords, size - coords)  # distance of each row/column to the nearest border
    ramp = np.clip((edge_distance - 0.5) / ramp_width, 0.0, 1.0)
    ramp = ramp * ramp * (3 - 2 * ramp)  # smoothstep: no visible kink where the fade begins
    weights = np.minimum.outer(ramp, ramp)
    weights.setflags(write=False)
    return weights[:, :, None]


def resize_face(face: np.ndarray, size: int) -> np.ndarray:
    if face.shape[0] == size:
        return face
    return np.asarray(Image.fromarray(face).resize((size, size), Image.BICUBIC))


def paste_back(frame: np.ndarray, face: np.ndarray, box: CropBox) -> np.ndarray:
    """A copy of `frame` with the restored `face` (512x512 RGB uint8) blended into `box`."""
    height, width = frame.shape[:2]
    x1, y1 = max(0, box.x), max(0, box.y)
    x2, y2 = min(width, box.x + box.size), min(height, box.y + box.size)
    out = frame.copy()
    if x2 <= x1 or y2 <= y1:
        return out
    scaled = resize_face(face, box.size)
    region = (slice(y1 - box.y, y2 - box.y), slice(x1 - box.x, x2 - box.x))
    weights = feather_mask(box.size)[region]
    original = frame[y1:y2, x1:x2].astype(np.float32)
    blended = original + (scaled[region].astype(np.float32) - original) * weights
    out[y1:y2, x1:x2] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out
