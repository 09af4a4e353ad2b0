"""Running out of GPU memory: the VAE retries with smaller chunks, and what still does not fit becomes a
transient failure (the job is retried later) rather than a crash. The out-of-memory errors are raised by
wrappers around the tiny models' real VAE and UNet (the CPU has no CUDA memory to run out of)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from svfrd.domain import Task
from svfrd.engines.interface import RestoreRequest
from svfrd.engines.svfr.engine import SvfrEngine, resolve_device
from svfrd.errors import ConfigError, TransientError
from tests.helpers.paths import FACE_MODEL
from tests.helpers.tiny_svfr import engine_config, face_crops, write_tiny_svfr_models

REQUEST = RestoreRequest(tasks=frozenset({Task.BFR}), seed=1)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_svfr_models(tmp_path_factory.mktemp("svfr-models"))


def small_engine(models_dir: Path) -> SvfrEngine:
    torch.set_num_threads(1)
    return SvfrEngine(engine_config(models_dir, vae_chunk=16), resolution=64, face_model=FACE_MODEL)


def fail_above(module: torch.nn.Module, method: str, max_frames: int, calls: list[int]) -> None:
    """Make `module.method` raise CUDA's out-of-memory error for batches of more than `max_frames` frames."""
    real = getattr(module, method)

    def limited(tensor: torch.Tensor, *args, **kwargs):
        calls.append(len(tensor))
        if len(tensor) > max_frames:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(tensor, *args, **kwargs)

    setattr(module, method, limited)


def restore_all(engine: SvfrEngine, frames: int) -> list[np.ndarray]:
    return list(engine.restore(REQUEST, face_crops(frames), lambda *_: None))


def test_the_vae_retries_with_smaller_chunks_and_later_jobs_start_small(models_dir: Path) -> None:
    engine = small_engine(models_dir)
    encodes, decodes = [], []
    fail_above(engine.pipeline.models.vae, "encode", 4, encodes)
    fail_above(engine.pipeline.models.vae, "decode", 4, decodes)
    restored = restore_all(engine, 10)
    assert len(restored) == 10
    assert encodes[:5] == [10, 8, 4, 4, 2], "10 frames in chunks of 16, then 8, then 4"
    assert engine.vae_chunk == 4
    assert decodes == [4, 4, 2, 4, 4, 2], "pass 1's clip, then the output, both in the chunks that fit"
    encodes.clear()
    restore_all(engine, 10)
    assert max(encodes) <= 4, "the next job starts from the chunk size that fitted"


def test_a_vae_that_does_not_fit_even_one_frame_is_a_transient_failure(models_dir: Path) -> None:
    engine = small_engine(models_dir)
    fail_above(engine.pipeline.models.vae, "decode", 0, [])
    with pytest.raises(TransientError, match="out of memory"):
        restore_all(engine, 5)


def test_a_unet_out_of_memory_is_a_transient_failure(models_dir: Path) -> None:
    engine = small_engine(models_dir)
    fail_above(engine.pipeline.models.unet, "forward", 0, [])
    with pytest.raises(TransientError, match="out of memory while denoising"):
        restore_all(engine, 5)


def test_asking_for_cuda_without_a_gpu_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda:0")
    assert resolve_device("auto") == torch.device("cpu")
