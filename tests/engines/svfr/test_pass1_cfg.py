"""`SVFRSettings.pass1_cfg`: pass 1 with guidance, as the reference runs it (for scripts/gpu-check's
reference-style row). Both halves get the same input, so only the UNet's work changes (docs/svfr.md §8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from svfrd.domain import Task
from svfrd.engines.svfr.pipeline import SVFRPipeline, SVFRSettings
from tests.helpers.paths import FACE_MODEL
from tests.helpers.tiny_svfr import face_crops, write_tiny_svfr_models

RESOLUTION = 64
FRAMES = 5


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return write_tiny_svfr_models(tmp_path_factory.mktemp("svfr-models"))


def restore(pipeline: SVFRPipeline, pass1_cfg: bool) -> tuple[np.ndarray, list[int]]:
    """The crops, and the batch of each UNet call."""
    batches: list[int] = []
    hook = pipeline.models.unet.register_forward_pre_hook(lambda _m, args: batches.append(args[0].shape[0]))
    settings = SVFRSettings(steps=1, pass1_steps=2, mode="reference", pass1_cfg=pass1_cfg)
    try:
        crops = np.stack(list(pipeline(face_crops(FRAMES), frozenset({Task.BFR}), seed=7, settings=settings,
                                       warn=lambda _: None)))
    finally:
        hook.remove()
    return crops, batches


@pytest.mark.skipif(not FACE_MODEL.is_file(), reason="models/face_landmarker.task missing: run scripts/ensure-env")
def test_pass_one_with_guidance_doubles_its_batch_and_restores_the_same_crops(models_dir: Path) -> None:
    pipeline = SVFRPipeline.from_folder(models_dir, torch.device("cpu"), torch.float32, FACE_MODEL,
                                        resolution=RESOLUTION)

    plain, plain_batches = restore(pipeline, pass1_cfg=False)
    guided, guided_batches = restore(pipeline, pass1_cfg=True)

    pass1_calls = len(plain_batches) - 1  # pass 2 is one call here (one step, one window)
    assert plain_batches[:pass1_calls] == [1] * pass1_calls
    assert guided_batches == [2] * pass1_calls + plain_batches[pass1_calls:]
    # The same maths in another batch: CPU rounding differs a little, as between the memory tiers (docs/svfr.md §9).
    difference = np.abs(guided.astype(int) - plain.astype(int))
    assert difference.max() <= 2 and difference.mean() < 0.05
