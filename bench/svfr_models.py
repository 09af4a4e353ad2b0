"""Random-weight SVFR model sets in the real folder layout (models/README.md), for benchmarks, the GPU check
and the tests: the engine reads them with its real loading code, no download needed.

- `write_tiny_svfr_models`: sizes chosen for CPU speed (the test suite's models): the VAE downsamples by 16 (5
  blocks of 32 channels, the smallest its GroupNorm allows), the UNet has two levels with attention only on
  the lower one, and the ArcFace is a 1-block-per-stage iresnet with narrow stages.
- `write_full_svfr_models`: the released architecture (SVD-xt UNet widened to 12 input channels, SVD-xt VAE,
  iresnet100, id_linear) with random weights: what `scripts/gpu-check` times on a GPU.
- `random_models`: the full-size UNet and VAE built in memory, without a folder (`bench/bench_svfr.py`).

The diffusers parts are written with `save_pretrained` / JSON like the SVD-xt download, the SVFR parts as
plain `torch.save`d state dicts like the released .pth files. The SVD-xt configs are the repository's copies
in tests/fixtures/svd-xt, read as data files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel

from svfrd.engines.svfr.engine import FACE_MODEL_FILE
from svfrd.engines.svfr.identity import IdProjection, IResNet
from svfrd.engines.svfr.loading import (
    ARCFACE_WEIGHTS,
    ID_LINEAR_WEIGHTS,
    SCHEDULER_CONFIG,
    SVFR_UNET_IN_CHANNELS,
    UNET_CONFIG,
    UNET_WEIGHTS,
    VAE_DIR,
    DiffusionModels,
    keep_encoder_in_fp32,
)

SVD_CONFIGS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "svd-xt"

TOKEN_WIDTH = 32
ARCFACE_WIDTH = 16

# SVD's UNet config shape, shrunk; in_channels 8 as SVD ships it (the loader widens conv_in to 12).
TINY_UNET_CONFIG = {
    "addition_time_embed_dim": 8,
    "block_out_channels": [32, 64],
    "cross_attention_dim": TOKEN_WIDTH,
    "down_block_types": ["DownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal"],
    "up_block_types": ["CrossAttnUpBlockSpatioTemporal", "UpBlockSpatioTemporal"],
    "in_channels": 8,
    "layers_per_block": 1,
    "num_attention_heads": [2, 4],
    "num_frames": 16,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 24,  # 3 task flags x addition_time_embed_dim
    "sample_size": 32,
    "transformer_layers_per_block": 1,
}

TINY_VAE_CONFIG = {
    "block_out_channels": [32, 32, 32, 32, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 5,
    "layers_per_block": 1,
    "latent_channels": 4,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "force_upcast": True,
}


def read_svd_config(part: str) -> dict:
    """SVD-xt's config of `part` ("unet", "vae" or "scheduler")."""
    name = "scheduler_config.json" if part == "scheduler" else "config.json"
    return json.loads((SVD_CONFIGS / part / name).read_text())


def svfr_unet_config() -> dict:
    """SVD-xt's UNet config with SVFR's 12 input channels, as the loader builds it."""
    return {**read_svd_config("unet"), "in_channels": SVFR_UNET_IN_CHANNELS}


def tiny_arcface() -> IResNet:
    return IResNet(layers=(1, 1, 1, 1), widths=(8, 8, 8, ARCFACE_WIDTH), stem_width=8, embedding_size=32)


def tiny_id_projection() -> IdProjection:
    return IdProjection(in_channels=ARCFACE_WIDTH, out_channels=TOKEN_WIDTH)


def randomise_batch_norms(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Fresh BatchNorms are identities in eval mode; give them statistics like a trained network's."""
    for norm in module.modules():
        if isinstance(norm, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            count = norm.num_features
            norm.running_mean.copy_(0.1 * torch.randn(count, generator=generator))
            norm.running_var.copy_(1.0 + 0.2 * torch.rand(count, generator=generator))


def save_state_dict(module: torch.nn.Module, path: Path, dtype: torch.dtype | None = None) -> None:
    """A plain state dict like the released .pth files; `dtype` casts floating tensors (fp16 halves the
    3 GB of the full-size UNet, and the loader casts to the engine's dtype anyway)."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def stored(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach().to("cpu")
        return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor.clone()

    torch.save({key: stored(tensor) for key, tensor in module.state_dict().items()}, path)


def write_configs(folder: Path, unet_config: dict) -> None:
    """The UNet config as SVD ships it (8 input channels) and SVD-xt's scheduler config."""
    (folder / UNET_CONFIG).parent.mkdir(parents=True, exist_ok=True)
    (folder / UNET_CONFIG).write_text(json.dumps({"_class_name": "UNetSpatioTemporalConditionModel", **unet_config},
                                                 indent=2))
    (folder / SCHEDULER_CONFIG).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(SVD_CONFIGS / "scheduler" / "scheduler_config.json", folder / SCHEDULER_CONFIG)
    EulerDiscreteScheduler.from_config(json.loads((folder / SCHEDULER_CONFIG).read_text()))


def link_face_model(folder: Path, face_model: Path | None) -> None:
    """The engine looks for the face model beside the weights by default (the shipped config keeps it there)."""
    if face_model is not None:
        (folder / FACE_MODEL_FILE).symlink_to(Path(face_model).resolve())


def write_identity_models(
    folder: Path, make_arcface, make_id_projection, generator: torch.Generator, face_model: Path | None
) -> Path:
    """The identity branch's two weight files and the face model's link, the last part of both model sets.
    Takes constructors, not modules, so the global RNG is drawn in the same order as the files are written."""
    arcface = make_arcface()
    randomise_batch_norms(arcface, generator)
    save_state_dict(arcface, folder / ARCFACE_WEIGHTS)
    save_state_dict(make_id_projection(), folder / ID_LINEAR_WEIGHTS)
    link_face_model(folder, face_model)
    return folder


def write_tiny_svfr_models(folder: Path, seed: int = 0, face_model: Path | None = None) -> Path:
    """Write the tiny model set into `folder` (created) and return it. `face_model`, if given, is linked into
    the folder where the engine looks for it by default."""
    folder = Path(folder)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    write_configs(folder, TINY_UNET_CONFIG)
    AutoencoderKLTemporalDecoder(**TINY_VAE_CONFIG).save_pretrained(folder / VAE_DIR)
    unet = UNetSpatioTemporalConditionModel.from_config({**TINY_UNET_CONFIG, "in_channels": SVFR_UNET_IN_CHANNELS})
    save_state_dict(unet, folder / UNET_WEIGHTS)
    return write_identity_models(folder, tiny_arcface, tiny_id_projection, generator, face_model)


def write_full_svfr_models(
    folder: Path, seed: int = 0, face_model: Path | None = None, device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write the full-size architecture with random weights into `folder`, stored in `dtype` (3 GB in fp16).
    `device`: where the 1.5 G UNet parameters are initialised (a GPU does it in a second, a CPU in tens)."""
    folder = Path(folder)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    unet_config = {k: v for k, v in read_svd_config("unet").items() if not k.startswith("_")}
    write_configs(folder, unet_config)
    with torch.device(device):
        vae = AutoencoderKLTemporalDecoder.from_config(read_svd_config("vae"))
    vae.to(dtype=dtype).save_pretrained(folder / VAE_DIR)
    del vae
    with torch.device(device):
        unet = UNetSpatioTemporalConditionModel.from_config(svfr_unet_config())
    save_state_dict(unet, folder / UNET_WEIGHTS, dtype)
    del unet
    return write_identity_models(folder, IResNet, IdProjection, generator, face_model)


def random_models(device: torch.device, dtype: torch.dtype) -> DiffusionModels:
    """The full-size UNet and VAE with random weights, in memory, as the engine's loader leaves them."""
    with torch.device(device):
        unet = UNetSpatioTemporalConditionModel.from_config(svfr_unet_config())
        vae = AutoencoderKLTemporalDecoder.from_config(read_svd_config("vae"))
    unet = unet.to(device=device, dtype=dtype).eval().requires_grad_(False)
    vae = vae.to(device=device, dtype=dtype).eval().requires_grad_(False)
    keep_encoder_in_fp32(vae)  # force_upcast, as the engine's loader does
    return DiffusionModels(unet=unet, vae=vae, scheduler_config=read_svd_config("scheduler"), device=device,
                           dtype=dtype)
