"""A tiny, randomly initialised SVFR model set in the real folder layout (models/README.md), and face crops
to restore with it. The model set is written by `bench/svfr_models.py` (re-exported here); sizes are chosen
for CPU speed, and the engine reads the files with its real loading code.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

# The model set itself lives in bench/ so that scripts (scripts/gpu-check) build it without importing tests/.
from bench.svfr_models import (  # noqa: F401 - re-exported for the tests
    ARCFACE_WIDTH,
    TINY_UNET_CONFIG,
    TINY_VAE_CONFIG,
    TOKEN_WIDTH,
    randomise_batch_norms,
    save_state_dict,
    tiny_arcface,
    tiny_id_projection,
    write_tiny_svfr_models,
)
from svfrd.config import EngineConfig, SvfrConfig
from svfrd.domain import CROP_SIZE
from svfrd.engines.interface import FaceCrop
from tests.helpers.media_clips import astronaut


class ListCrops:
    """A `CropStream` over crops held in a list, counting how often it is read (engines should read once)."""

    def __init__(self, crops: list[FaceCrop]) -> None:
        self.crops = crops
        self.iterations = 0

    def __len__(self) -> int:
        return len(self.crops)

    def __iter__(self) -> Iterator[FaceCrop]:
        self.iterations += 1
        return iter(self.crops)


def face_crops(count: int, with_mask: bool = False) -> ListCrops:
    """`count` 512x512 crops of the astronaut's face, drifting a little from frame to frame."""
    photo = astronaut()
    mask = None
    if with_mask:
        mask = np.zeros((CROP_SIZE, CROP_SIZE), bool)
        mask[400:460, 60:450] = True  # a subtitle bar
    crops = []
    for i in range(count):
        x, y = 60 + 2 * i, 10 + i
        window = photo[y : y + 260, x : x + 260]
        image = cv2.resize(window, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_CUBIC)
        crops.append(FaceCrop(image=image, mask=mask))
    return ListCrops(crops)


def engine_config(models_dir: Path, **svfr: object) -> EngineConfig:
    """An EngineConfig for the tiny models on the CPU in fp32, with few steps so runs take seconds."""
    settings = dict(
        models_dir=Path(models_dir), mode="reference", steps=2, pass1_steps=2, guidance_scale=2.0,
        vae_chunk=16, segment_frames=2000,
    )
    settings.update(svfr)
    return EngineConfig(name="svfr", device="cpu", dtype="fp32", svfr=SvfrConfig(**settings))
