"""The classical engine: real restoration on the CPU, without model weights.

It does what can be done well without a learned model, so the service is useful before SVFR weights are
installed or on a machine without a GPU:

- inpainting (task 2): damaged pixels are filled from neighbouring frames where the same picture content is
  visible (neighbours are aligned by optical flow), and what no neighbour shows is filled spatially (Telea);
- restoration (task 0): temporally consistent denoising (a motion-compensated, occlusion-guarded average over
  a few neighbouring frames), a light edge-preserving filter, then unsharp masking to bring back detail.

Colorization (task 1) is refused: without a learned model it is guesswork.

Both work at the face's own resolution in the video: a face 128 pixels across is enlarged 4x into its 512x512
crop, and denoising or sharpening the enlargement would only touch detail that is not there. The engine works
at the face's own size and enlarges the result back. It takes the enlargement from the crop stream when it
offers one (`enlargement`, as the pipeline's does), else measures it on the crops themselves.

Frames stream through a sliding window of 2 * RADIUS + 1 crops per stage, so memory does not grow with length.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np

from svfrd.domain import BUILTIN_OPTION_NAMES, CROP_SIZE, Task
from svfrd.engines.interface import CropStream, FaceCrop, ProgressReporter, RestoreRequest
from svfrd.errors import BadInputError

#: Neighbours on each side used for denoising and for inpainting.
RADIUS = 2
#: How different (in grey levels, after a small blur) an aligned neighbour may be and still count as the same
#: content; above it the neighbour is ignored there (occlusion, failed alignment).
SIMILARITY_SIGMA = 10.0
#: Unsharp masking: blur radius (sigma, pixels at 512) and strength.
SHARPEN_SIGMA = 1.4
SHARPEN_AMOUNT = 0.6
#: Enlargement factors tried, and the largest mean grey-level change a shrink-and-enlarge round trip may cause
#: for a crop to count as enlarged by that factor (a genuinely sharp 512 crop changes by several levels).
ENLARGEMENTS = (1.5, 2.0, 2.5, 3.0, 4.0)
ROUND_TRIP_TOLERANCE = 1.0
#: How many face crops at the start of the video the enlargement is measured on.
SAMPLE_CROPS = 5
#: Largest enlargement undone (working below 128x128 loses more than it gains), and the smallest worth it.
MAX_ENLARGEMENT = 4.0
MIN_ENLARGEMENT = 1.25


@dataclass
class _Item:
    """A crop travelling through the stages: `image` and `mask` at the working size, `crop` as received."""

    image: np.ndarray
    mask: np.ndarray | None
    has_face: bool
    crop: FaceCrop
    _prefilled: np.ndarray | None = field(default=None, repr=False)

    def prefilled(self) -> np.ndarray:
        """`image` with its damage filled spatially (Telea). Computed once: inpainting aligns every frame of a
        window on these, and a frame sits in up to 2 * RADIUS + 1 windows."""
        if self._prefilled is None:
            if self.mask is None or not self.mask.any():
                self._prefilled = self.image
            else:
                self._prefilled = cv2.inpaint(self.image, self.mask.astype(np.uint8), 3, cv2.INPAINT_TELEA)
        return self._prefilled


class ClassicalEngine:
    name = "classical"
    # It owns no option of the table (svfrd.domain.OPTIONS); all are accepted so an inbox can switch engines,
    # and the SVFR ones it receives are ignored with a warning in the report.
    option_names = BUILTIN_OPTION_NAMES
    #: Frames before a frame that its result depends on: inpainting looks RADIUS frames back, and denoising
    #: RADIUS further, at inpainted frames. A resumed job restarts the engine this far before the first frame
    #: it needs (svfrd.media.pipeline), and the result equals an uninterrupted run's.
    resume_context = 2 * RADIUS

    def __init__(self, cfg=None):
        self.cfg = cfg
        self._warnings: list[str] = []
        cv2.setNumThreads(1)  # the worker runs one job at a time; don't fight the rest of the machine

    def check(self, request: RestoreRequest) -> None:
        if Task.COLORIZE in request.tasks:
            raise BadInputError(
                "colorization needs the SVFR model weights; install them (see models/README.md) or drop task 1"
            )

    def warnings(self) -> list[str]:
        return list(self._warnings)

    def restore(self, request: RestoreRequest, crops: CropStream, progress: ProgressReporter) -> Iterator[np.ndarray]:
        self.check(request)
        self._warnings = []
        if request.options:
            self._warnings.append(
                "the classical engine ignores the options " + ", ".join(sorted(map(str, request.options)))
            )
        if request.reference_face is not None:
            self._warnings.append("the classical engine does not use a reference face image")
        total = len(crops)
        progress("restore", 0, total)
        factor = video_enlargement(crops)
        size = int(round(CROP_SIZE / factor))
        if factor > 1:
            self._warnings.append(
                f"the face crops are enlarged about {factor:g}x from the video's own pixels; the classical engine "
                f"restored them at {size}x{size}"
            )
        items: Iterable[_Item] = (to_working_size(crop, size) for crop in crops)
        if Task.INPAINT in request.tasks:
            items = sliding_window(items, RADIUS, inpaint_from_neighbours)
        if Task.BFR in request.tasks:
            items = sliding_window(items, RADIUS, denoise_and_sharpen)
        for done, item in enumerate(items, start=1):
            yield back_to_crop(item, whole_picture=Task.BFR in request.tasks)
            progress("restore", done, total)


def round_trip_error(grey: np.ndarray, factor: float) -> float:
    """Mean change of a picture shrunk by `factor` and enlarged back: small if it holds no finer detail."""
    height, width = grey.shape
    small = cv2.resize(grey, (int(round(width / factor)), int(round(height / factor))), interpolation=cv2.INTER_AREA)
    back = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    return float(np.abs(grey - back).mean())


def enlargement(image: np.ndarray) -> float:
    """About how much `image` was enlarged from its source pixels (1.0: not at all)."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    fitting = [f for f in ENLARGEMENTS if round_trip_error(grey, f) < ROUND_TRIP_TOLERANCE]
    return max(fitting, default=1.0)


def video_enlargement(crops: CropStream) -> float:
    """One enlargement for the whole video, so every frame is processed alike: the stream's own figure if it
    has one, else the median measured over its first face crops (reading only the start of the stream).
    Measuring errs low on sharp material, which is the safe side."""
    declared = getattr(crops, "enlargement", None)
    if declared is not None:
        factor = min(float(declared), MAX_ENLARGEMENT)
        return factor if factor >= MIN_ENLARGEMENT else 1.0
    factors = []
    for crop in crops:
        if crop.has_face:
            factors.append(enlargement(crop.image))
        if len(factors) == SAMPLE_CROPS:
            break
    return float(np.median(factors)) if factors else 1.0


def to_working_size(crop: FaceCrop, size: int) -> _Item:
    if size == crop.image.shape[0]:
        return _Item(crop.image, crop.mask, crop.has_face, crop)
    image = cv2.resize(crop.image, (size, size), interpolation=cv2.INTER_AREA)
    mask = None
    if crop.mask is not None:  # a working pixel touched by any damage counts as damaged
        mask = cv2.resize(crop.mask.astype(np.uint8) * 255, (size, size), interpolation=cv2.INTER_AREA) > 0
    return _Item(image, mask, crop.has_face, crop)


def back_to_crop(item: _Item, whole_picture: bool) -> np.ndarray:
    """The result at 512x512. When only inpainting was done, only the damaged pixels change."""
    original = item.crop.image
    if not item.has_face or item.image is original:
        return original
    restored = item.image
    if restored.shape != original.shape:
        restored = cv2.resize(restored, original.shape[1::-1], interpolation=cv2.INTER_CUBIC)
    if whole_picture or item.crop.mask is None:
        return restored
    combined = original.copy()
    combined[item.crop.mask] = restored[item.crop.mask]
    return combined


def sliding_window(
    items: Iterable[_Item], radius: int, process: Callable[[list[_Item], int], _Item]
) -> Iterator[_Item]:
    """Call `process(window, centre)` for each item with up to `radius` neighbours on each side (fewer at the
    ends); only 2 * radius + 1 items are held."""
    window: deque[_Item] = deque()
    centre = 0  # index in `window` of the next item to process

    def process_centre() -> _Item:
        nonlocal centre
        result = _process_if_face(process, list(window), centre)
        if centre >= radius:  # the leftmost item is no one's neighbour any more
            window.popleft()
        else:
            centre += 1
        return result

    for item in items:
        window.append(item)
        if len(window) - 1 - centre >= radius:  # the centre has all its right neighbours
            yield process_centre()
    while centre < len(window):  # the last items, with fewer right neighbours
        yield process_centre()


def _process_if_face(process: Callable[[list[_Item], int], _Item], window: list[_Item], centre: int) -> _Item:
    item = window[centre]
    if not item.has_face:
        return item  # the pipeline leaves these frames unchanged; don't spend time on them
    return process(window, centre)


def _grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


_flow_engine = None


def optical_flow(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Dense flow (H, W, 2) such that target[y + v, x + u] matches source[y, x]."""
    global _flow_engine
    if _flow_engine is None:
        _flow_engine = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
    return _flow_engine.calc(_grey(source), _grey(target), None)


@lru_cache(maxsize=4)
def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y of every pixel, (height, width) float32 each; one working size per video, so made once."""
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    grid_x.flags.writeable = grid_y.flags.writeable = False  # shared between calls
    return grid_x, grid_y


def warp_to(image: np.ndarray, flow: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """`image` (a neighbour) resampled onto the centre frame's pixel grid along `flow`."""
    grid_x, grid_y = _pixel_grid(*flow.shape[:2])
    map_x, map_y = grid_x + flow[..., 0], grid_y + flow[..., 1]
    return cv2.remap(image, map_x, map_y, interpolation, borderMode=cv2.BORDER_REPLICATE)


def similarity_weight(aligned: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Per-pixel weight in [0, 1]: near 1 where the aligned neighbour shows the same content as the centre."""
    difference = np.abs(aligned.astype(np.float32) - centre.astype(np.float32)).mean(axis=2)
    difference = cv2.GaussianBlur(difference, (5, 5), 0)
    return np.exp(-0.5 * (difference / SIMILARITY_SIGMA) ** 2)


def denoise_and_sharpen(window: list[_Item], centre: int) -> _Item:
    """Motion-compensated temporal average, edge-preserving smoothing, then unsharp masking."""
    target = window[centre].image
    total = target.astype(np.float32)
    weight_sum = np.ones(target.shape[:2], np.float32)
    for k, item in enumerate(window):
        if k == centre or not item.has_face:
            continue
        aligned = warp_to(item.image, optical_flow(target, item.image))
        weight = similarity_weight(aligned, target)
        total += aligned.astype(np.float32) * weight[..., None]
        weight_sum += weight
    averaged = np.clip(total / weight_sum[..., None], 0, 255).astype(np.uint8)
    smoothed = cv2.bilateralFilter(averaged, 5, 20, 3)
    blurred = cv2.GaussianBlur(smoothed, (0, 0), SHARPEN_SIGMA)
    sharpened = cv2.addWeighted(smoothed, 1 + SHARPEN_AMOUNT, blurred, -SHARPEN_AMOUNT, 0)
    return _Item(sharpened, window[centre].mask, True, window[centre].crop)


def inpaint_from_neighbours(window: list[_Item], centre: int) -> _Item:
    """Fill the centre's masked pixels from neighbours that show them undamaged, then spatially."""
    item = window[centre]
    if item.mask is None or not item.mask.any():
        return item
    # Align on spatially pre-filled pictures, so the damage itself (e.g. burnt-in text) does not steer the flow.
    guess = item.prefilled()
    result = guess.copy()
    missing = item.mask.copy()
    # Nearest neighbours in time first: their content is the most similar.
    for k in sorted(range(len(window)), key=lambda k: (abs(k - centre), k)):
        if k == centre or not missing.any():
            continue
        other = window[k]
        other_mask = other.mask if other.mask is not None else np.zeros_like(item.mask)
        flow = optical_flow(guess, other.prefilled())
        aligned = warp_to(other.image, flow)
        aligned_damage = warp_to(other_mask.astype(np.uint8) * 255, flow) > 0
        usable = missing & ~aligned_damage
        result[usable] = aligned[usable]
        missing &= ~usable
    if missing.any():
        result = cv2.inpaint(result, missing.astype(np.uint8), 3, cv2.INPAINT_TELEA)
    return _Item(result, item.mask, item.has_face, item.crop)
