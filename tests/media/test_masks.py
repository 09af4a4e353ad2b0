"""Inpainting masks in frame or crop coordinates, and the model input for each task."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from svfrd.domain import Task
from svfrd.engines.interface import FaceCrop
from svfrd.errors import BadInputError
from svfrd.media import masks
from svfrd.media.crop import CropBox
from svfrd.media.masks import grayscale, load_mask, load_reference_face, prepare_svfr_input

FRAME = (320, 240)  # width, height
BOX = CropBox(80, 20, 200)  # 200 px square -> 512: scale 2.56


def save_mask(path, pixels: np.ndarray):
    Image.fromarray(pixels.astype(np.uint8) * 255).save(path)
    return path


def test_a_mask_drawn_on_the_frame_and_one_drawn_on_the_crop_map_to_the_same_crop_mask(tmp_path):
    # A bar of damage across the mouth, drawn on a frame: x 130..230, y 150..170.
    frame_pixels = np.zeros((240, 320), bool)
    frame_pixels[150:170, 130:230] = True
    # The same bar drawn on the 512 crop: ((x - 80) * 2.56, (y - 20) * 2.56).
    crop_pixels = np.zeros((512, 512), bool)
    crop_pixels[333:384, 128:384] = True
    from_frame = load_mask(save_mask(tmp_path / "frame.png", frame_pixels), FRAME)
    from_crop = load_mask(save_mask(tmp_path / "crop.png", crop_pixels), FRAME)
    assert (from_frame.coordinates, from_crop.coordinates) == ("frame", "crop")
    a, b = from_frame.for_crop(BOX), from_crop.for_crop(BOX)
    iou = (a & b).sum() / (a | b).sum()
    print(f"frame-coordinate vs crop-coordinate mask IoU: {iou:.4f}, differing pixels: {(a ^ b).sum()}")
    assert iou > 0.97


def test_a_512_mask_for_a_512_video_is_read_as_drawn_on_the_frame_and_says_so(tmp_path):
    mask = load_mask(save_mask(tmp_path / "m.png", np.ones((512, 512), bool)), (512, 512))
    assert mask.coordinates == "frame" and "read as drawn on the full frame" in mask.note


def test_the_share_of_the_mask_outside_the_crop_is_measured(tmp_path):
    pixels = np.zeros((240, 320), bool)
    pixels[230:240, :] = True  # subtitles along the bottom, below the face crop
    pixels[100:110, 100:200] = True  # and a scratch across the face (1000 of 4200 pixels)
    mask = load_mask(save_mask(tmp_path / "m.png", pixels), FRAME)
    assert mask.share_outside(BOX) == pytest.approx(3200 / 4200)
    # A square wholly beside the frame (left of it, below it) sees none of the mask.
    assert mask.share_outside(CropBox(-300, 20, 200)) == 1.0
    assert mask.share_outside(CropBox(80, 300, 200)) == 1.0


def test_a_mask_of_any_other_size_is_refused_naming_both_accepted_sizes(tmp_path):
    path = save_mask(tmp_path / "odd.png", np.zeros((100, 100), bool))
    with pytest.raises(BadInputError, match=r"odd.png is 100x100.*320x240.*512x512"):
        load_mask(path, FRAME)


def test_an_unreadable_mask_is_refused(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG not really")
    with pytest.raises(BadInputError, match="broken.png cannot be read"):
        load_mask(path, FRAME)


def test_transparent_pixels_count_as_undamaged(tmp_path):
    rgba = np.zeros((512, 512, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere, but only opaque in one corner
    rgba[:10, :10, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    mask = load_mask(tmp_path / "alpha.png", FRAME)
    assert mask.pixels.sum() == 100


def test_colorization_input_is_601_luma_in_three_channels():
    image = np.zeros((512, 512, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 200, 100, 50
    prepared = prepare_svfr_input(FaceCrop(image=image), frozenset({Task.COLORIZE}))
    expected = round((299 * 200 + 587 * 100 + 114 * 50) / 1000)
    assert (prepared == expected).all()
    assert (grayscale(image)[..., 0] == prepared[..., 1]).all()


def test_inpainting_input_is_white_under_the_mask_after_graying():
    image = np.full((512, 512, 3), 40, np.uint8)
    mask = np.zeros((512, 512), bool)
    mask[100:120] = True
    prepared = prepare_svfr_input(FaceCrop(image=image, mask=mask), frozenset({Task.COLORIZE, Task.INPAINT}))
    assert (prepared[mask] == 255).all() and (prepared[~mask] == 40).all()
    untouched = prepare_svfr_input(FaceCrop(image=image, mask=mask), frozenset({Task.BFR}))
    assert untouched is image


# ---------------------------------------------------------------------------------------------------------------
# [limits] max_mask_pixels: checked in the image header, before any pixel is decoded.


def png_header_only(path, width, height):
    """A PNG of a few dozen bytes that claims `width` x `height` pixels (no image data: it cannot be decoded)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_a_png_claiming_a_huge_picture_is_refused_as_bad_input_naming_the_limit(tmp_path):
    bomb = png_header_only(tmp_path / "bomb.png", 14000, 14000)
    with pytest.raises(BadInputError) as refused:
        load_mask(bomb, FRAME)
    assert "the mask bomb.png claims more than 66,355,200 pixels" in str(refused.value)
    assert "over the limit of 33,177,600 pixels ([limits] max_mask_pixels" in str(refused.value)


@pytest.mark.parametrize("limit", [1000, 200_000])  # beyond twice the limit PIL refuses it; within, svfrd
def test_a_mask_over_a_lowered_limit_is_refused_without_being_decoded(tmp_path, monkeypatch, limit):
    path = save_mask(tmp_path / "m.png", np.ones((512, 512), bool))
    monkeypatch.setattr(masks, "_flatten_alpha", lambda picture: pytest.fail("the mask was decoded"))
    with pytest.raises(BadInputError, match=rf"the mask m.png .* over the limit of {limit:,} pixels"):
        load_mask(path, FRAME, max_pixels=limit)


def test_a_raised_limit_is_honoured_by_pils_own_bomb_check_and_the_size_is_still_checked_first(tmp_path):
    bomb = png_header_only(tmp_path / "big.png", 14000, 14000)
    pils_default = Image.MAX_IMAGE_PIXELS
    with pytest.raises(BadInputError, match=r"the mask big.png is 14000x14000, but it must be either"):
        load_mask(bomb, FRAME, max_pixels=14000 * 14000)
    assert Image.MAX_IMAGE_PIXELS == pils_default  # restored: other images keep PIL's own check


def test_a_mask_can_be_read_from_an_open_file(tmp_path):
    path = save_mask(tmp_path / "crop.png", np.ones((512, 512), bool))
    with open(path, "rb") as file:
        mask = load_mask(file, FRAME)
    assert mask.coordinates == "crop" and mask.pixels.all()


def test_a_reference_picture_claiming_a_huge_size_is_bad_input_not_an_unexpected_error(tmp_path):
    with pytest.raises(BadInputError, match=r"the reference image face.png was not decoded: Image size"):
        load_reference_face(png_header_only(tmp_path / "face.png", 14000, 14000))
