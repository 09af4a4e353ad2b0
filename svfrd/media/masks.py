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

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from svfrd.config import LimitsConfig
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


#: The default [limits] max_mask_pixels (svfrd.config.LimitsConfig).
DEFAULT_MAX_MASK_PIXELS = LimitsConfig().max_mask_pixels


def load_mask(path_or_file: Path | BinaryIO, frame_size: tuple[int, int],
              max_pixels: int = DEFAULT_MAX_MASK_PIXELS) -> Mask:
    """Read a mask image (a path, or a file open for binary reading) and decide its coordinate frame from its
    size; `frame_size` is (width, height), upright as a player shows the video. The size, read from the image
    header, is checked against `max_pixels` ([limits] max_mask_pixels) and the accepted sizes before any
    pixel is decoded: a tiny PNG can claim a huge picture."""
    name = _name_of(path_or_file)
    try:
        with _open_image(path_or_file, name, max_pixels) as picture:
            coordinates, note = _mask_coordinates(name, picture.size, tuple(frame_size))
            gray = np.asarray(_flatten_alpha(picture).convert("L"))
    except (OSError, UnidentifiedImageError) as err:
        raise BadInputError(f"the mask {name} cannot be read as an image ({err}); use a PNG") from err
    return Mask(gray >= 128, coordinates, note)


def check_mask_file(file: BinaryIO, name: str, max_pixels: int = DEFAULT_MAX_MASK_PIXELS) -> None:
    """Intake's check of a sidecar's mask (svfrd.service.sidecar): its header size against `max_pixels`, the
    limit `load_mask` applies when the job starts, and its data for damage, without decoding its pixels. A mask
    the worker would refuse is refused before its job is queued, with the same message."""
    with _open_image(file, name, max_pixels) as picture:
        picture.verify()


def _name_of(path_or_file: Path | BinaryIO) -> str:
    name = path_or_file if isinstance(path_or_file, (str, Path)) else getattr(path_or_file, "name", "")
    return Path(name).name if isinstance(name, (str, Path)) and str(name) else "(unnamed)"


@contextlib.contextmanager
def _open_image(path_or_file: Path | BinaryIO, name: str, max_pixels: int) -> Iterator[Image.Image]:
    """Image.open reads only the header. PIL's own decompression-bomb check is set to the same limit while it
    does, so the two agree and a raised limit is honoured: PIL refuses twice the limit itself (its warning
    below that is ours to decide), and the size it read is checked here."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture = Image.open(path_or_file)
    except Image.DecompressionBombError:
        raise _too_many_pixels(name, f"claims more than {2 * max_pixels:,} pixels", max_pixels) from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    with picture:
        width, height = picture.size
        if width * height > max_pixels:
            raise _too_many_pixels(name, f"is {width}x{height} ({width * height:,} pixels)", max_pixels)
        yield picture


def _too_many_pixels(name: str, size: str, max_pixels: int) -> BadInputError:
    return BadInputError(
        f"the mask {name} {size}, over the limit of {max_pixels:,} pixels ([limits] max_mask_pixels in the "
        "service's config.toml); it was not decoded. A mask is the video's frame size or 512x512: redraw it "
        "at one of those, or raise [limits] max_mask_pixels."
    )


def _mask_coordinates(name: str, size: tuple[int, int], frame_size: tuple[int, int]) -> tuple[str, str | None]:
    """("frame" or "crop", a note for the report) from the mask's size; any other size is refused."""
    if size == frame_size:
        note = None
        if frame_size == (CROP_SIZE, CROP_SIZE):
            note = "the video and the mask are both 512x512: the mask was read as drawn on the full frame"
        return "frame", note
    if size == (CROP_SIZE, CROP_SIZE):
        return "crop", None
    raise BadInputError(
        f"the mask {name} is {size[0]}x{size[1]}, but it must be either the video's frame size "
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
    except Image.DecompressionBombError as err:  # a header claiming more pixels than any photo has
        raise BadInputError(f"the reference image {path.name} was not decoded: {err} Use a photo of a few "
                            "megapixels") from None


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
