"""SVFR resumes from its checkpoints (svfrd.engines.svfr.resume): a call stopped in pass 1 or pass 2 and run
again with the same checkpoint folder gives the uninterrupted result bit for bit (CPU, tiny models), reusing
the steps saved; a torn newest checkpoint falls back to the one before."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from svfrd.domain import Task
from svfrd.engines.interface import RestoreRequest
from svfrd.engines.svfr.engine import SvfrEngine
from svfrd.jobs.checkpoints import CheckpointFolder
from tests.helpers.paths import FACE_MODEL
from tests.helpers.tiny_svfr import engine_config, face_crops

FRAMES = 20  # two pass-2 segments with segment_frames = 12
TASKS = frozenset({Task.BFR})


class Stopped(Exception):
    pass


@pytest.fixture(scope="module")
def engine(models_dir) -> SvfrEngine:
    torch.set_num_threads(1)
    return SvfrEngine(engine_config(models_dir, steps=3, pass1_steps=4, segment_frames=12), resolution=64,
                      face_model=FACE_MODEL)


def run(engine, folder, progress=lambda *_: None) -> list[np.ndarray]:
    request = RestoreRequest(tasks=TASKS, seed=5, checkpoints=folder)
    return list(engine.restore(request, face_crops(FRAMES), progress))


def stop_at(stage_prefix: str, done: int):
    def progress(stage, count, total):
        if stage.startswith(stage_prefix) and count >= done:
            raise Stopped(stage)
    return progress


@pytest.fixture(scope="module")
def uninterrupted(engine) -> list[np.ndarray]:
    return list(engine.restore(RestoreRequest(tasks=TASKS, seed=5), face_crops(FRAMES), lambda *_: None))


# In pass 1's last step; in pass 2's 2nd step; in the 2nd pass-2 segment's last step (the first segment done).
@pytest.mark.parametrize("stage, calls", [("pass 1", 6), ("pass 2 step 2/3", 1), ("pass 2 step 3/3 (segment 2", 1)])
def test_a_stopped_call_resumes_from_its_checkpoint_and_equals_the_uninterrupted_result(
        engine, uninterrupted, tmp_path, stage, calls):
    folder = CheckpointFolder(tmp_path / "job1", {"job": 1}).create()
    with pytest.raises(Stopped):
        run(engine, folder, stop_at(stage, calls))

    resumed = run(engine, folder)

    assert engine.resume_details()["sampler_steps_reused"] > 0
    assert len(resumed) == len(uninterrupted)
    assert all(np.array_equal(a, b) for a, b in zip(resumed, uninterrupted))


def test_a_torn_newest_sampler_checkpoint_falls_back_to_the_one_before(engine, uninterrupted, tmp_path):
    folder = CheckpointFolder(tmp_path / "job1", {"job": 1}).create()
    with pytest.raises(Stopped):
        run(engine, folder, stop_at("pass 2 step 3/3", 1))
    newest = sorted(folder.folder.glob("pass2-0-*.ckpt"))[-1]
    os.truncate(newest, newest.stat().st_size // 2)

    resumed = run(engine, folder)

    assert engine.resume_details() == {"sampler_steps_reused": 1, "pass1_reused": True}
    assert all(np.array_equal(a, b) for a, b in zip(resumed, uninterrupted))
