"""The classical CPU engine restores for real: less noise, filled-in damage, and honest refusals."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from svfrd.domain import Task
from svfrd.engines.classical import ClassicalEngine, enlargement
from svfrd.engines.interface import Engine, FaceCrop, RestoreRequest
from svfrd.errors import BadInputError
from tests.helpers.media_clips import astronaut


class CropList:
    """A re-iterable crop stream held in memory (fine for a handful of test crops)."""

    def __init__(self, crops: list[FaceCrop]):
        self.crops = crops
        self.iterations = 0

    def __len__(self) -> int:
        return len(self.crops)

    def __iter__(self):
        self.iterations += 1
        return iter(self.crops)


def clean_sequence(frames: int, dx: float = 3.0, dy: float = 0.0) -> list[np.ndarray]:
    """512x512 crops of the astronaut's face, the camera drifting by (dx, dy) photo pixels per frame."""
    photo = astronaut()
    result = []
    for i in range(frames):
        matrix = np.float32([[1.6, 0, -1.6 * (120 + dx * i)], [0, 1.6, -1.6 * (10 + dy * i)]])
        result.append(cv2.warpAffine(photo, matrix, (512, 512), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return result


def restore(crops: list[FaceCrop], tasks: set[Task]) -> list[np.ndarray]:
    return list(ClassicalEngine().restore(RestoreRequest(tasks=frozenset(tasks)), CropList(crops), lambda *a: None))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


def test_it_implements_the_engine_interface():
    engine = ClassicalEngine()
    assert isinstance(engine, Engine) and engine.name == "classical"


def test_colorization_is_refused_with_what_to_do():
    expected = r"colorization needs the SVFR model weights.*models/README.md.*drop task 1"
    with pytest.raises(BadInputError, match=expected):
        ClassicalEngine().check(RestoreRequest(tasks=frozenset({Task.BFR, Task.COLORIZE})))


def test_denoising_brings_noisy_frames_closer_to_the_clean_ones():
    clean = clean_sequence(5)
    rng = np.random.default_rng(3)
    noisy = [np.clip(c + rng.normal(0, 12, c.shape), 0, 255).astype(np.uint8) for c in clean]
    restored = restore([FaceCrop(image=n) for n in noisy], {Task.BFR})
    assert len(restored) == 5
    before = np.mean([psnr(n, c) for n, c in zip(noisy, clean)])
    after = np.mean([psnr(r, c) for r, c in zip(restored, clean)])
    print(f"classical BFR on noise sigma 12: PSNR {before:.2f} dB -> {after:.2f} dB")
    assert after > before + 2.0


def test_it_measures_how_much_the_crops_were_enlarged_erring_low():
    photo = astronaut()
    assert enlargement(photo) == 1.0
    half = cv2.resize(photo, (256, 256), interpolation=cv2.INTER_AREA)
    assert enlargement(cv2.resize(half, (512, 512), interpolation=cv2.INTER_CUBIC)) == 2.0
    quarter = cv2.resize(photo, (128, 128), interpolation=cv2.INTER_AREA)
    assert 2.0 <= enlargement(cv2.resize(quarter, (512, 512), interpolation=cv2.INTER_CUBIC)) <= 4.0


def test_a_small_noisy_face_enlarged_into_its_crop_is_denoised_at_its_own_size():
    rng = np.random.default_rng(4)
    clean_small = [cv2.resize(c, (128, 128), interpolation=cv2.INTER_AREA) for c in clean_sequence(5)]
    noisy_small = [np.clip(c + rng.normal(0, 10, c.shape), 0, 255).astype(np.uint8) for c in clean_small]
    enlarge = lambda image: cv2.resize(image, (512, 512), interpolation=cv2.INTER_CUBIC)  # noqa: E731
    clean, noisy = [enlarge(c) for c in clean_small], [enlarge(n) for n in noisy_small]
    stream = CropList([FaceCrop(n) for n in noisy])
    stream.enlargement = 4.0  # as the pipeline's crop stream tells it
    engine = ClassicalEngine()
    restored = list(engine.restore(RestoreRequest(tasks=frozenset({Task.BFR})), stream, lambda *a: None))
    before = np.mean([psnr(n, c) for n, c in zip(noisy, clean)])
    after = np.mean([psnr(r, c) for r, c in zip(restored, clean)])
    print(f"classical BFR on a 4x enlarged face with noise sigma 10: PSNR {before:.2f} dB -> {after:.2f} dB")
    assert after > before + 2.0
    assert any("enlarged about 4x" in note and "at 128x128" in note for note in engine.warnings())


def test_damage_is_filled_from_neighbouring_frames_where_the_picture_moves_under_it():
    clean = clean_sequence(5, dx=1.0, dy=-8.0)  # the face moves down by about 13 crop pixels per frame
    mask = np.zeros((512, 512), bool)
    mask[300:320, 150:360] = True  # a subtitle bar, fixed on the crop while the face moves under it
    damaged = []
    for c in clean:
        d = c.copy()
        d[mask] = 255
        damaged.append(d)
    restored = restore([FaceCrop(image=d, mask=mask) for d in damaged], {Task.INPAINT})
    centre = 2
    spatial_only = cv2.inpaint(damaged[centre], mask.astype(np.uint8), 3, cv2.INPAINT_TELEA)
    error_spatial = np.abs(spatial_only[mask].astype(int) - clean[centre][mask]).mean()
    error_temporal = np.abs(restored[centre][mask].astype(int) - clean[centre][mask]).mean()
    print(f"inpainting error under the mask: spatial only {error_spatial:.1f}, from neighbours {error_temporal:.1f}")
    assert error_temporal < 0.6 * error_spatial
    assert (restored[centre][~mask] == damaged[centre][~mask]).all()  # inpainting alone touches only the mask


def test_frames_without_a_face_are_passed_through_and_every_frame_is_returned():
    clean = clean_sequence(3)
    crops = [FaceCrop(image=clean[0]), FaceCrop(image=clean[1], has_face=False), FaceCrop(image=clean[2])]
    restored = restore(crops, {Task.BFR})
    assert len(restored) == 3
    assert restored[1] is clean[1]


@pytest.mark.parametrize("frames", [1, 2])
def test_very_short_videos_work(frames):
    restored = restore([FaceCrop(image=c) for c in clean_sequence(frames)], {Task.BFR})
    assert len(restored) == frames and all(r.shape == (512, 512, 3) for r in restored)
