"""Pasting the restored face back: the face region changes, the rest of the picture stays bit-identical."""

from __future__ import annotations

import numpy as np
import pytest

from svfrd.media.crop import CropBox, crop_face, cut_square
from svfrd.media.paste import feather_weights, paste_back
from tests.helpers.media_clips import astronaut


def test_pixels_outside_the_crop_square_are_bit_identical_and_the_face_changed():
    frame = astronaut()
    box = CropBox(120, 10, 180)
    restored = 255 - crop_face(frame, box)  # any visibly different face
    out = paste_back(frame, restored, box)
    outside = np.ones(frame.shape[:2], bool)
    outside[box.y : box.y + box.size, box.x : box.x + box.size] = False
    identical = (out == frame).all(axis=2)
    print(f"paste-back: {identical[outside].mean():.6f} of pixels outside the square identical, "
          f"{(~identical[~outside]).mean():.3f} of pixels inside changed")
    assert identical[outside].all()
    centre = out[box.y + 60 : box.y + 120, box.x + 60 : box.x + 120].astype(int)
    assert np.abs(centre - frame[box.y + 60 : box.y + 120, box.x + 60 : box.x + 120]).mean() > 50


def test_the_seam_fades_in_without_a_step():
    weights = feather_weights(CropBox(10, 10, 200), (10, 10, 210, 210), (400, 400))[:, :, 0]
    assert weights[0].max() == 0.0 and weights[:, 0].max() == 0.0  # the border keeps the original exactly
    assert weights[100, 100] == 1.0
    steps = np.abs(np.diff(weights[100]))
    assert steps.max() < 0.1  # no visible jump from one pixel to the next


def test_sides_on_the_frame_border_do_not_fade():
    frame = astronaut()[:300, :300]
    out = paste_back(frame, np.zeros((512, 512, 3), np.uint8), CropBox(-20, 100, 200))
    assert (out[150, 0] == 0).all()  # left side beyond the frame: restored right up to the border
    assert (out[100, 90] == frame[100, 90]).all()  # top side inside the frame: fades to the original


@pytest.mark.parametrize("box", [CropBox(130, 20, 160), CropBox(130.4, 20.7, 159.3)], ids=["whole", "sub-pixel"])
def test_restoring_to_the_same_face_puts_it_back_where_it_was(box):
    frame = astronaut()
    out = paste_back(frame, crop_face(frame, box), box)
    # Resampling through 512 and back loses a little sharpness; a misplaced face would differ by far more.
    x1, y1, x2, y2 = box.pixel_bounds()
    difference = np.abs(out.astype(int) - frame.astype(int))[y1:y2, x1:x2].mean()
    print(f"crop and paste back unchanged, {box}: mean |diff| {difference:.3f}")
    assert difference < 1.5


def test_sub_pixel_square_touches_only_its_whole_pixel_bounds():
    frame = astronaut()
    box = CropBox(100.25, 50.75, 120.5)
    out = paste_back(frame, np.zeros((512, 512, 3), np.uint8), box)
    changed = np.argwhere((out != frame).any(axis=2))
    x1, y1, x2, y2 = box.pixel_bounds()
    assert changed[:, 0].min() >= y1 and changed[:, 0].max() < y2
    assert changed[:, 1].min() >= x1 and changed[:, 1].max() < x2


def test_a_square_reaching_outside_the_frame_is_padded_and_pasted_inside_only():
    frame = astronaut()[:200, :200]
    box = CropBox(-50, -30, 160)
    square = cut_square(frame, box)
    assert square.shape == (160, 160, 3)
    assert (square[:30, 50] == frame[0, 0]).all()  # padding repeats the edge
    out = paste_back(frame, np.zeros((512, 512, 3), np.uint8), box)
    assert out.shape == frame.shape
    assert (out[150:, 150:] == frame[150:, 150:]).all()
