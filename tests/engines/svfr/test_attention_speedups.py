"""The ID cross-attention processor and the speed-up switches against the stock UNet and reference mode, on the
tiny models (the switches that only act on a GPU are checked for what they set, not for speed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNetSpatioTemporalConditionModel
from torch._dynamo.backends.registry import lookup_backend

from svfrd.domain import Task
from svfrd.engines.svfr.attention import ClipIdAttention, install_clip_id_attention
from svfrd.engines.svfr.engine import build_pipeline
from svfrd.engines.svfr.pipeline import FixedChunks, SVFRPipeline, SVFRSettings
from svfrd.engines.svfr.speedups import Speedups, apply_speedups, configure_backends
from svfrd.errors import ConfigError
from tests.helpers.paths import FACE_MODEL
from tests.helpers.tiny_svfr import TINY_UNET_CONFIG, face_crops

SETTINGS = SVFRSettings(steps=2, pass1_steps=2, mode="reference")


def unet_output(unet: torch.nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(4, 16, 12, 8, 8, generator=generator)
    tokens = torch.randn(4, 49, 32, generator=generator)
    tokens[:2] = 0  # the unconditional halves
    with torch.no_grad():
        return unet(sample, torch.tensor(500.0), encoder_hidden_states=tokens,
                    added_time_ids=torch.rand(4, 3, generator=generator), return_dict=False)[0]


def test_the_id_attention_projects_once_per_clip_and_equals_the_stock_processor() -> None:
    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel.from_config({**TINY_UNET_CONFIG, "in_channels": 12}).eval()
    stock = unet_output(unet)
    assert install_clip_id_attention(unet) == 4  # one per temporal block of the tiny UNet
    processors = [p for p in unet.attn_processors.values() if isinstance(p, ClipIdAttention)]
    projected: list[int] = []
    to_k = unet.down_blocks[1].attentions[0].temporal_transformer_blocks[0].attn2.to_k
    to_k.register_forward_hook(lambda module, args, out: projected.append(args[0].shape[0]))
    fixed = unet_output(unet)
    assert processors and all(p.clips == 4 for p in processors)
    assert projected == [4], "K projected for 4 clips, not 4 clips x h x w positions"
    torch.testing.assert_close(fixed, stock, rtol=0, atol=1e-5)


def run(pipeline: SVFRPipeline) -> np.ndarray:
    return np.stack(list(pipeline(face_crops(6), frozenset({Task.BFR}), seed=1, settings=SETTINGS))).astype(int)


@pytest.fixture(scope="module")
def reference_output(models_dir: Path) -> np.ndarray:
    torch.set_num_threads(1)
    return run(SVFRPipeline.from_folder(models_dir, torch.device("cpu"), torch.float32, FACE_MODEL, resolution=64,
                                        memory=FixedChunks(16)))


def test_channels_last_gives_reference_mode_output(models_dir, reference_output) -> None:
    pipeline = build_pipeline(models_dir, device="cpu", dtype=torch.float32, face_model=FACE_MODEL, resolution=64,
                              speedups=Speedups(channels_last=True))
    # Other convolution kernels round differently; through two steps and uint8 truncation: <= 2 levels (measured).
    assert np.abs(run(pipeline) - reference_output).max() <= 2


def test_the_compiled_unet_gives_the_eager_unets_output_and_keeps_its_cache_in_the_given_folder(
    models_dir, tmp_path
) -> None:
    # One UNet call of the pipeline's UNet (ID attention installed, as the engine builds it), not a pipeline run:
    # the pipeline only calls the UNet, and it would compile once per call shape (pass 1 and pass 2: 14 s here).
    # aot_eager: dynamo's graph capture and AOT autograd without a C++ build (inductor takes minutes on two
    # cores; measured once by hand, its tiny UNet output was within 2e-6 of eager).
    graphs: list[torch.fx.GraphModule] = []

    def counting_aot_eager(graph: torch.fx.GraphModule, inputs: list) -> object:
        graphs.append(graph)
        return lookup_backend("aot_eager")(graph, inputs)

    def unet(speedups: Speedups) -> torch.nn.Module:
        return build_pipeline(models_dir, device="cpu", dtype=torch.float32, face_model=FACE_MODEL, resolution=64,
                              speedups=speedups, compile_cache=tmp_path / "cache",
                              compile_backend=counting_aot_eager).models.unet  # type: ignore[arg-type]

    eager = unet_output(unet(Speedups()))
    compiled = unet_output(unet(Speedups(compile=True)))
    assert graphs, "the UNet ran through torch.compile"
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-5)
    assert (tmp_path / "cache").is_dir()


@pytest.fixture
def backend_flags():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark = False, False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = saved


def test_cuda_graphs_need_a_gpu_and_tf32_is_set_only_on_one(backend_flags) -> None:
    with pytest.raises(ConfigError, match="cuda_graphs = true needs a CUDA GPU"):
        apply_speedups(torch.nn.Linear(1, 1), Speedups(cuda_graphs=True), torch.device("cpu"))
    configure_backends(torch.device("cpu"), Speedups(tf32=True))
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.benchmark
    configure_backends(torch.device("cuda:0"), Speedups())
    assert torch.backends.cudnn.benchmark and not torch.backends.cuda.matmul.allow_tf32, "benchmark always on"
    configure_backends(torch.device("cuda:0"), Speedups(tf32=True))
    assert torch.backends.cuda.matmul.allow_tf32
