"""`SVFRPipeline` on its own, as a diffusers-style object: loaded from a model folder and called on crops, it
restores exactly what the service's engine (a thin adapter over it) restores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from svfrd.domain import Task
from svfrd.engines.interface import RestoreRequest
from svfrd.engines.svfr.engine import SvfrEngine
from svfrd.engines.svfr.pipeline import FixedChunks, SVFRPipeline, SVFRSettings
from tests.helpers.paths import FACE_MODEL
from tests.helpers.tiny_svfr import engine_config, face_crops, write_tiny_svfr_models

RESOLUTION = 64
FRAMES = 5


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return write_tiny_svfr_models(tmp_path_factory.mktemp("svfr-models"))


@pytest.mark.skipif(not FACE_MODEL.is_file(), reason="models/face_landmarker.task missing: run scripts/ensure-env")
def test_the_pipeline_alone_restores_what_the_engine_restores(models_dir: Path) -> None:
    # The engine encodes 4 frames per call ("balanced" tier): the same maths, but other batch sizes round
    # differently on the CPU (up to 2 uint8 levels on 5 frames), so the pipeline is given the same chunks.
    pipeline = SVFRPipeline.from_folder(
        models_dir, torch.device("cpu"), torch.float32, FACE_MODEL, resolution=RESOLUTION,
        memory=FixedChunks(16, encode_chunk=4),
    )
    stages: list[str] = []
    warnings: list[str] = []
    restored = list(
        pipeline(
            face_crops(FRAMES),
            frozenset({Task.BFR}),
            seed=7,
            settings=SVFRSettings(steps=1, pass1_steps=1, mode="reference"),
            progress=lambda stage, done, total: stages.append(stage),
            warn=warnings.append,
        )
    )
    engine = SvfrEngine(engine_config(models_dir, steps=1, pass1_steps=1), resolution=RESOLUTION, face_model=FACE_MODEL)
    expected = list(engine.restore(RestoreRequest(frozenset({Task.BFR}), seed=7), face_crops(FRAMES), lambda *_: None))
    assert len(restored) == FRAMES
    assert all(np.array_equal(got, want) for got, want in zip(restored, expected))
    assert warnings == engine.warnings() == ["no face found in the pass-1 reference frame; ID tokens disabled"]
    assert list(dict.fromkeys(stages)) == ["vae encode", "pass 1", "pass 2 step 1/1", "vae decode"]
