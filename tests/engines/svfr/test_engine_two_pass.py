"""The streaming engine computes exactly SVFR's two-pass recipe (docs/svfr.md §6), written out here with the
sampler's whole-clip `sample` function: pass 1 on the first <= 16 frames without CFG, its last frame as the
reference latent, pass 2 over the whole clip, output truncated to uint8. Only the engine streams, chunks
and keeps latents instead of frames; the numbers must not change."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from svfrd.domain import CROP_SIZE, Task
from svfrd.engines.interface import RestoreRequest
from svfrd.engines.svfr.engine import SvfrEngine
from svfrd.engines.svfr.pipeline import task_vector, to_model_pixels
from svfrd.engines.svfr.sampler import SamplerSettings, sample
from svfrd.media.masks import prepare_svfr_input
from tests.helpers.paths import FACE_MODEL
from tests.helpers.tiny_svfr import engine_config, face_crops, write_tiny_svfr_models

needs_face_model = pytest.mark.skipif(
    not FACE_MODEL.is_file(), reason="models/face_landmarker.task missing: run scripts/ensure-env"
)
RESOLUTION = 64


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> SvfrEngine:
    torch.set_num_threads(1)
    models_dir = write_tiny_svfr_models(tmp_path_factory.mktemp("svfr-models"))
    return SvfrEngine(engine_config(models_dir, steps=3, pass1_steps=4), resolution=RESOLUTION, face_model=FACE_MODEL)


def two_pass_recipe(engine: SvfrEngine, crops, tasks: frozenset[Task], seed: int) -> list[np.ndarray]:
    """docs/svfr.md §6 on whole tensors: what the engine must reproduce."""
    models = engine.pipeline.models
    frames = torch.stack([to_model_pixels(prepare_svfr_input(c, tasks), RESOLUTION) for c in crops.crops])
    generator = torch.Generator().manual_seed(seed)
    first = frames[:16]
    pass1 = SamplerSettings(num_inference_steps=4, window=len(first), use_cfg=False)
    _, pass1_frames = sample(models, first, None, None, task_vector(tasks), pass1, generator=generator)
    reference = pass1_frames[-1]
    pass2 = SamplerSettings(num_inference_steps=3)
    # The random tiny models' reference frame shows no face, so pass 2 runs without ID tokens (a warning).
    _, restored = sample(models, frames, reference, None, task_vector(tasks), pass2, generator=generator)
    pixels = ((restored * 0.5 + 0.5).clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [cv2.resize(p, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_CUBIC) for p in pixels]


@needs_face_model
@pytest.mark.parametrize("frames", [7, 20])
def test_the_engine_output_equals_the_two_pass_recipe(engine: SvfrEngine, frames: int) -> None:
    tasks = frozenset({Task.BFR, Task.COLORIZE, Task.INPAINT})
    crops = face_crops(frames, with_mask=True)
    request = RestoreRequest(tasks=tasks, seed=11)
    restored = list(engine.restore(request, crops, lambda *_: None))
    assert engine.warnings() == ["no face found in the pass-1 reference frame; ID tokens disabled"]
    expected = two_pass_recipe(engine, crops, tasks, seed=11)
    assert len(restored) == len(expected) == frames
    for got, want in zip(restored, expected):
        assert np.array_equal(got, want)
