"""GPU memory on the CPU: out-of-memory errors are raised by wrappers around the tiny models' real modules
(tests/helpers/oom.py), free memory is injected. The VAE encodes and decodes in chunks of its own, UNet calls
shrink without changing the result, what cannot fit is not retried, the GPU's cache is handed back after each
job, and each memory tier gives reference mode's output within its stated tolerance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.models.attention import FeedForward

from svfrd.domain import Task
from svfrd.engines.interface import RestoreRequest
from svfrd.engines.svfr.engine import SvfrEngine, build_pipeline, check_bf16_native, resolve_device
from svfrd.engines.svfr.loading import load_diffusion_models
from svfrd.engines.svfr.memory import (
    GIB,
    TIERS,
    OutOfGpuMemory,
    ServiceMemory,
    choose_tier,
    estimate_peak_vram_gib,
)
from svfrd.engines.svfr.pipeline import FixedChunks, SVFRPipeline, SVFRSettings
from svfrd.engines.svfr.sampler import SamplerSettings, UNetFallback, denoise_latents
from svfrd.errors import BadInputError, ConfigError, ResourceError, TransientError
from tests.helpers.oom import fail_above, fail_above_rows, lift
from tests.helpers.paths import FACE_MODEL
from tests.helpers.tiny_svfr import engine_config, face_crops

REQUEST = RestoreRequest(tasks=frozenset({Task.BFR}), seed=1)
RESOLUTION = 64
#: Largest |difference| in uint8 levels of each tier's crops from reference mode's, on the tiny models (docs/svfr.md
#: §9). No tier changes the decode chunk (16, the one setting that shapes the output); they batch the same
#: arithmetic differently (measured: high 0, balanced 0, low 2 levels, mean 0.02; high may round differently on
#: another CPU, so 1 is allowed).
TIER_TOLERANCE = {"high": 1, "balanced": 0, "low": 2}


def small_engine(models_dir: Path, **svfr: object) -> SvfrEngine:
    torch.set_num_threads(1)
    return SvfrEngine(engine_config(models_dir, **svfr), resolution=RESOLUTION, face_model=FACE_MODEL)


def restore_all(engine: SvfrEngine, frames: int) -> list[np.ndarray]:
    return list(engine.restore(REQUEST, face_crops(frames), lambda *_: None))


# -- the VAE: chunks of its own for encode and decode ------------------------------------------------------


def test_encode_and_decode_have_their_own_chunks_and_a_smaller_decode_chunk_is_reported(models_dir: Path) -> None:
    engine = small_engine(models_dir, memory="balanced")
    encodes, decodes = [], []
    fail_above(engine.pipeline.models.vae, "encode", 16, encodes)
    fail_above(engine.pipeline.models.vae, "decode", 4, decodes)
    assert len(restore_all(engine, 10)) == 10
    assert max(encodes) == 4 == engine.encode_chunk, "the encoder's own small chunk, not the decoder's 16"
    assert decodes[:3] == [10, 8, 4], "pass 1's clip in chunks of 16, halved until it fits"
    assert engine.vae_chunk == 4
    assert any("decoded 4 frames per call instead of the reference's 16" in w for w in engine.warnings())
    restore_all(engine, 10)
    assert any("instead of the reference's 16" in w for w in engine.warnings()), "a later job that shrinks says so"


def test_calls_shrunk_after_an_out_of_memory_error_hold_for_that_job_only(models_dir: Path) -> None:
    # Another program's passing use of the GPU must not slow (or, through the decode chunk, change) every
    # later job: each job starts from its tier again.
    engine = small_engine(models_dir, memory="balanced")
    unet, vae = engine.pipeline.models.unet, engine.pipeline.models.vae
    fail_above(unet, "forward", 1)
    fail_above(vae, "decode", 4)
    restore_all(engine, 5)
    assert engine.details()["unet_calls"] == "1 window(s) per call, CFG halves apart" and engine.vae_chunk == 4
    lift(unet, "forward")
    lift(vae, "decode")
    decodes: list[int] = []
    fail_above(vae, "decode", 16, decodes)  # room for the reference's chunk; records the chunks used
    restore_all(engine, 5)
    assert engine.details()["unet_calls"] == "1 window(s) per call, CFG halves together"
    assert engine.vae_chunk == 16 and decodes == [5, 5], "pass 1's clip and pass 2's, each in one call"
    assert not any("decoded" in w for w in engine.warnings())


def test_a_vae_that_does_not_fit_one_frame_on_a_gpu_others_use_is_retried(models_dir: Path) -> None:
    engine = small_engine(models_dir, memory="balanced")
    engine.memory.held_by_others = lambda device: 3 * GIB
    fail_above(engine.pipeline.models.vae, "decode", 0)
    with pytest.raises(TransientError, match="other programs hold 3.0 GiB"):
        restore_all(engine, 5)


# -- the UNet: CFG halves apart, then chunked feed-forward, the same result ---------------------------------


def denoise(models, fallback: UNetFallback | None, frames: int = 20) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    lq = torch.randn(1, frames, 4, 4, 4, generator=generator)
    ids = torch.randn(1, 49, 32, generator=generator)
    settings = SamplerSettings(num_inference_steps=2, windows_per_batch=2)
    return denoise_latents(models, lq, lq[0, 0], ids, torch.tensor([1.0, 0, 0]), settings,
                           generator=generator, fallback=fallback)


def test_a_unet_out_of_memory_splits_windows_then_cfg_halves_then_chunks_the_feed_forward(models_dir: Path) -> None:
    torch.set_num_threads(1)
    models = load_diffusion_models(models_dir, "cpu", torch.float32)
    expected = denoise(models, None)
    clips, rows, steps = [], [], []
    fail_above(models.unet, "forward", 1, clips)  # one clip per call: one window, one CFG half
    for ff in models.unet.modules():
        if isinstance(ff, FeedForward):
            fail_above_rows(ff, 8, rows)  # 16 frames x 4 positions is too many; a frame at a time fits
    fallback = UNetFallback(on_shrink=steps.append)
    result = denoise(models, fallback)
    assert steps == ["one window per UNet call", "the two classifier-free guidance halves as two UNet calls",
                     "chunked feed-forward layers in the UNet"]
    assert clips[:3] == [4, 2, 1], "2 windows x 2 halves, then 1 window x 2 halves, then 1 half"
    assert max(rows[-10:]) <= 8
    # fp32 rounding of the UNet's output, amplified by guidance and the Euler step (measured 4.4e-5).
    assert (result - expected).abs().max() <= 1e-4 * expected.abs().max()


@pytest.mark.parametrize("tier, advice", [
    ("balanced", 'set [engine.svfr] memory = "low"'),
    ("low", 'even the "low" memory tier needs about 9.0 GiB'),
])
def test_a_unet_out_of_memory_at_the_smallest_calls_on_an_otherwise_empty_gpu_is_not_retried(
    models_dir: Path, tier: str, advice: str
) -> None:
    engine = small_engine(models_dir, memory=tier)
    engine.memory.held_by_others = lambda device: 0
    fail_above(engine.pipeline.models.unet, "forward", 0)
    with pytest.raises(OutOfGpuMemory, match="would fail the same way: it is not retried") as caught:
        restore_all(engine, 5)
    assert isinstance(caught.value, BadInputError), "failed for good, not retried"
    assert isinstance(caught.value, ResourceError), "recorded as a resource failure: the video is fine"
    message = str(caught.value)
    assert "The video itself is fine" in message and advice in message
    assert "close other programs that use the GPU (`nvidia-smi` lists them)" in message
    assert "then run `svfrd retry JOB`" in message


def test_gpu_memory_is_released_after_every_job_done_or_failed(models_dir: Path, monkeypatch) -> None:
    engine = small_engine(models_dir)
    released: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: released.append(1))
    restore_all(engine, 3)
    assert released, "released after a job that succeeded"
    released.clear()
    fail_above(engine.pipeline.models.unet, "forward", 0)
    with pytest.raises((TransientError, OutOfGpuMemory)):
        restore_all(engine, 3)
    assert released, "released after a job that failed"


# -- device and dtype --------------------------------------------------------------------------------------


def test_bf16_is_refused_on_gpus_without_native_bf16() -> None:
    cuda = torch.device("cuda:0")
    with pytest.raises(ConfigError, match=r"compute capability 7\.5.*dtype = \"fp16\""):
        check_bf16_native(cuda, "bf16", capability=lambda device: (7, 5))
    check_bf16_native(cuda, "bf16", capability=lambda device: (8, 0))
    check_bf16_native(cuda, "fp16", capability=lambda device: (7, 0))


def test_svfr_runs_on_the_cpu_only_with_device_cpu_and_fp32_set_explicitly(models_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match='device = "auto", but torch sees no CUDA GPU'):
        SvfrEngine(engine_config(models_dir).__class__(**{**engine_config(models_dir).__dict__, "device": "auto"}))
    with pytest.raises(ConfigError, match='needs dtype = "fp32"'):
        SvfrEngine(engine_config(models_dir).__class__(**{**engine_config(models_dir).__dict__, "dtype": "fp16"}))
    assert small_engine(models_dir).pipeline.models.device == torch.device("cpu")


def test_asking_for_cuda_without_a_gpu_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda:0")
    assert resolve_device("auto") == torch.device("cpu")


# -- memory tiers ------------------------------------------------------------------------------------------


def test_every_memory_tier_gives_reference_mode_output_within_its_tolerance(models_dir: Path) -> None:
    torch.set_num_threads(1)
    settings = SVFRSettings(steps=2, pass1_steps=2, mode="reference")
    reference = SVFRPipeline.from_folder(models_dir, torch.device("cpu"), torch.float32, FACE_MODEL,
                                         resolution=RESOLUTION, memory=FixedChunks(16))

    def run(pipeline: SVFRPipeline) -> np.ndarray:
        return np.stack(list(pipeline(face_crops(20), REQUEST.tasks, seed=1, settings=settings))).astype(int)

    expected = run(reference)
    for name, tolerance in TIER_TOLERANCE.items():
        tier = build_pipeline(models_dir, device="cpu", dtype=torch.float32, face_model=FACE_MODEL, memory=name,
                              resolution=RESOLUTION)
        difference = np.abs(run(tier) - expected).max()
        assert difference <= tolerance, f"{name}: {difference} levels from reference mode"


def test_auto_picks_the_tier_from_the_free_memory_at_job_start_and_the_report_names_it(models_dir: Path) -> None:
    free = {"bytes": 200 * GIB}
    engine = SvfrEngine(engine_config(models_dir, memory="auto"), resolution=RESOLUTION, face_model=FACE_MODEL,
                        free_memory=lambda device: free["bytes"])
    restore_all(engine, 3)
    assert engine.details()["memory_tier"] == "high"
    free["bytes"] = 6 * GIB
    restore_all(engine, 3)
    assert engine.details()["memory_tier"] == "low"
    assert engine.pipeline.memory.fallback.split_cfg


def test_peak_vram_estimates_order_the_tiers_and_meet_the_goals_at_512() -> None:
    low, balanced, high = (estimate_peak_vram_gib(name) for name in ("low", "balanced", "high"))
    assert low < balanced < high
    assert low <= 12 and balanced <= 20, "the issue's goals at 512x512"
    assert estimate_peak_vram_gib("balanced", dtype_bytes=4) > balanced
    assert choose_tier(None).name == "balanced", "no GPU to ask: the reference's way"
    assert choose_tier(int(high / 0.9 * GIB) + GIB).name == "high"
    assert choose_tier(int(balanced / 0.9 * GIB) + GIB).name == "balanced"
    assert choose_tier(1 * GIB).name == "low"


def test_the_low_tier_keeps_the_vae_and_arcface_off_the_gpu_between_uses() -> None:
    moves: list[str] = []

    class Module(torch.nn.Module):
        def to(self, *args, **kwargs):
            moves.append(str(args[0]))
            return self

    policy = ServiceMemory(TIERS["low"], torch.device("cuda:0"))
    vae, unet = Module(), Module()
    policy.evict = (unet,)
    with policy.borrow(vae):
        assert moves == ["cpu", "cuda:0"], "the UNet leaves, the VAE comes"
    assert moves == ["cpu", "cuda:0", "cpu", "cuda:0"]
    moves.clear()
    with ServiceMemory(TIERS["balanced"], torch.device("cuda:0")).borrow(vae):
        pass
    assert moves == [], "other tiers keep them resident"
