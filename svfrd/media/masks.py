"""Inpainting masks and the task-specific model input.

A sidecar mask marks damaged pixels in white. Users draw it either on a full frame (frame coordinates: the
natural way) or on the 512x512 face crop (the SVFR reference's convention, docs/svfr.md §7). Its size tells
which; a frame coordinate mask is mapped into each frame's crop square, so it stays put on the picture while
the crop follows the face. When the frame is itself 512x512 both readings are possible; frame coordinates are
taken, and the report says so: that is what the reference means too when it runs without face cropping (as
for its own 512x512 sample lq3, whose subtitle mask covers the bottom rows of the frame).

Any mask pixel of 128 or more counts as damaged (the reference demands exactly 255, which anti-aliased
drawings miss).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from svfrd.domain import CROP_SIZE, Task
from svfrd.engines.interface import FaceCrop
from svfrd.errors import BadInputError
from svfrd.media.crop import CropBox, sample_square


@dataclass(frozen=True)
class Mask:
    """A loaded mask: `pixels` (H, W) bool, True = damaged; `coordinates` is "frame" or "crop"."""

    pixels: np.ndarray
    coordinates: str
    note: str | None = None

    def share_outside(self, box: CropBox) -> float:
        """The fraction of damaged pixels outside the crop square: the face restorer never sees them."""
        if self.coordinates == "crop" or not self.pixels.any():
            return 0.0
        height, width = self.pixels.shape
        x1, y1, x2, y2 = box.pixel_bounds_in_frame(width, height)
        inside = self.pixels[y1:y2, x1:x2].sum()
        return 1.0 - float(inside) / float(self.pixels.sum())

    def for_crop(self, box: CropBox) -> np.ndarray:
        """The (512, 512) bool mask for one frame's crop square."""
        if self.coordinates == "crop":
            return self.pixels
        # Outside the frame nothing is damaged; the smooth resample is cut at half way, keeping the mask's area.
        square = sample_square(self.pixels.astype(np.uint8) * 255, box, CROP_SIZE, Image.BILINEAR, fill="zero")
        return square >= 128


def load_mask(path: Path, frame_size: tuple[int, int]) -> Mask:
    """Read a mask image and decide its coordinate frame from its size; `frame_size` is (width, height),
    upright as a player shows the video."""
    path = Path(path)
    try:
        with Image.open(path) as picture:
            gray = np.asarray(_flatten_alpha(picture).convert("L"))
    except (OSError, UnidentifiedImageError) as err:
        raise BadInputError(f"the mask {path.name} cannot be read as an image ({err}); use a PNG") from err
    height, width = gray.shape
    pixels = gray >= 128
    if (width, height) == tuple(frame_size):
        note = None
        if frame_size == (CROP_SIZE, CROP_SIZE):
            note = "the video and the mask are both 512x512: the mask was read as drawn on the full frame"
        return Mask(pixels, "frame", note)
    if (width, height) == (CROP_SIZE, CROP_SIZE):
        return Mask(pixels, "crop")
    raise BadInputError(
        f"the mask {path.name} is {width}x{height}, but it must be either the video's frame size "
        f"{frame_size[0]}x{frame_size[1]} (drawn on a frame) or 512x512 (drawn on the face crop); "
        "resize or redraw it"
    )


def _flatten_alpha(picture: Image.Image) -> Image.Image:
    """Transparent pixels count as black (undamaged), whatever colour they carry."""
    if picture.mode in ("RGBA", "LA") or (picture.mode == "P" and "transparency" in picture.info):
        rgba = picture.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba)
    return picture


def load_reference_face(path: Path) -> np.ndarray:
    """A user-supplied picture of the subject, (H, W, 3) uint8 RGB."""
    path = Path(path)
    try:
        with Image.open(path) as picture:
            return np.asarray(picture.convert("RGB")).copy()
    except (OSError, UnidentifiedImageError) as err:
        raise BadInputError(f"the reference image {path.name} cannot be read ({err}); use a PNG or JPEG") from err


def grayscale(image: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma repeated in 3 channels, exactly as PIL's convert("L") then convert("RGB")."""
    luma = np.asarray(Image.fromarray(image).convert("L"))
    return np.repeat(luma[:, :, None], 3, axis=2)


def prepare_svfr_input(crop: FaceCrop, tasks: frozenset[Task]) -> np.ndarray:
    """The model-resolution input for SVFR (docs/svfr.md §7): gray for colorization, then white under the
    mask for inpainting. (512, 512, 3) uint8 RGB; the caller scales it to [-1, 1]."""
    image = crop.image
    if Task.COLORIZE in tasks:
        image = grayscale(image)
    if Task.INPAINT in tasks and crop.mask is not None:
        image = image.copy()
        image[crop.mask] = 255
    return image
