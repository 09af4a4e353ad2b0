"""A tiny, randomly initialised SVFR model set in the real folder layout (models/README.md).

The diffusers parts are written with `save_pretrained` / JSON like the SVD-xt download, the SVFR parts as
plain `torch.save`d state dicts like the released .pth files, so the engine reads them with its real loading
code. Sizes are chosen for CPU speed: the VAE downsamples by 16 (5 blocks of 32 channels, the smallest its
GroupNorm allows), the UNet has two levels with attention only on the lower one, and the ArcFace is a
1-block-per-stage iresnet with narrow stages.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel

from svfrd.config import EngineConfig, SvfrConfig
from svfrd.domain import CROP_SIZE
from svfrd.engines.interface import FaceCrop
from svfrd.engines.svfr.engine import FACE_MODEL_FILE
from svfrd.engines.svfr.identity import IdProjection, IResNet
from svfrd.engines.svfr.loading import (
    ARCFACE_WEIGHTS,
    ID_LINEAR_WEIGHTS,
    SCHEDULER_CONFIG,
    UNET_CONFIG,
    UNET_WEIGHTS,
    VAE_DIR,
)
from tests.helpers.media_clips import astronaut
from tests.helpers.paths import FIXTURES

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


def write_tiny_svfr_models(folder: Path, seed: int = 0, face_model: Path | None = None) -> Path:
    """Write the tiny model set into `folder` (created) and return it. `face_model`, if given, is linked into
    the folder where the engine looks for it by default (the shipped config keeps it beside the weights)."""
    folder = Path(folder)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    (folder / UNET_CONFIG).parent.mkdir(parents=True, exist_ok=True)
    unet_config = {"_class_name": "UNetSpatioTemporalConditionModel", **TINY_UNET_CONFIG}
    (folder / UNET_CONFIG).write_text(json.dumps(unet_config, indent=2))

    (folder / SCHEDULER_CONFIG).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURES / "svd-xt" / "scheduler" / "scheduler_config.json", folder / SCHEDULER_CONFIG)
    EulerDiscreteScheduler.from_config(json.loads((folder / SCHEDULER_CONFIG).read_text()))

    AutoencoderKLTemporalDecoder(**TINY_VAE_CONFIG).save_pretrained(folder / VAE_DIR)

    unet = UNetSpatioTemporalConditionModel.from_config({**TINY_UNET_CONFIG, "in_channels": 12})
    save_state_dict(unet, folder / UNET_WEIGHTS)

    arcface = tiny_arcface()
    randomise_batch_norms(arcface, generator)
    save_state_dict(arcface, folder / ARCFACE_WEIGHTS)
    save_state_dict(tiny_id_projection(), folder / ID_LINEAR_WEIGHTS)
    if face_model is not None:
        (folder / FACE_MODEL_FILE).symlink_to(Path(face_model).resolve())
    return folder


def save_state_dict(module: torch.nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({key: tensor.detach().clone() for key, tensor in module.state_dict().items()}, path)


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
