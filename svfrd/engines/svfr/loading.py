"""Load the diffusion half of SVFR from a model folder.

The folder layout and the check for missing files are in `svfrd.engines.svfr.model_folder`.

The UNet is diffusers' stock `UNetSpatioTemporalConditionModel` built from the SVD-xt config with 12 input
channels; SVD's own UNet weights and its CLIP image encoder are never read (SVFR does not use them).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel

from svfrd.engines.svfr.model_folder import (  # noqa: F401  (re-exported: the layout is part of this module's API)
    ARCFACE_WEIGHTS,
    BASE_MODEL_DIR,
    ID_LINEAR_WEIGHTS,
    LAYOUT_HINT,
    SCHEDULER_CONFIG,
    SVFR_DIR,
    UNET_CONFIG,
    UNET_WEIGHTS,
    VAE_DIR,
    VAE_WEIGHT_NAMES,
    diffusion_weights_problem,
    weights_problem,
)
from svfrd.errors import ConfigError

# SVFR widens SVD's conv_in from 8 channels to 12: noisy latent, LQ latent, reference latent.
SVFR_UNET_IN_CHANNELS = 12


class WeightsError(ConfigError):
    """A model file is missing, unreadable or does not fit the model it is meant for."""


@dataclass
class DiffusionModels:
    """The resident diffusion models. `dtype` is the compute dtype of the UNet and the VAE decoder; the VAE
    encoder stays fp32 when the VAE config asks for it (`force_upcast`), as in the reference."""

    unet: UNetSpatioTemporalConditionModel
    vae: AutoencoderKLTemporalDecoder
    scheduler_config: dict[str, Any]
    device: torch.device
    dtype: torch.dtype


def load_diffusion_models(models_dir: Path, device: str | torch.device, dtype: torch.dtype) -> DiffusionModels:
    """Load the SVFR UNet, the SVD-xt VAE and the scheduler config, in eval mode without gradients.
    Raises WeightsError naming the file when anything is missing or does not fit."""
    models_dir = Path(models_dir)
    problem = diffusion_weights_problem(models_dir)
    if problem:
        raise WeightsError(problem)
    device = torch.device(device)
    unet = load_unet(models_dir, device, dtype)
    vae = load_vae(models_dir, device, dtype)
    scheduler_config = load_scheduler_config(models_dir)
    return DiffusionModels(unet=unet, vae=vae, scheduler_config=scheduler_config, device=device, dtype=dtype)


def load_unet(models_dir: Path, device: torch.device, dtype: torch.dtype) -> UNetSpatioTemporalConditionModel:
    config = dict(_read_json(models_dir / UNET_CONFIG))
    config["in_channels"] = SVFR_UNET_IN_CHANNELS
    # Built on the meta device: no memory and no random init for 1.5 G parameters that unet.pth replaces.
    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel.from_config(config)
    state_dict = read_state_dict(models_dir / UNET_WEIGHTS)
    # Cast tensor by tensor while the module adopts them: no second full copy of the weights in memory.
    state_dict = {key: tensor.to(device=device, dtype=dtype) for key, tensor in state_dict.items()}
    load_strictly(unet, state_dict, models_dir / UNET_WEIGHTS)
    return _ready_for_inference(unet)


def load_vae(models_dir: Path, device: torch.device, dtype: torch.dtype) -> AutoencoderKLTemporalDecoder:
    vae_dir = models_dir / VAE_DIR
    # SVD-xt ships the VAE as full and fp16 variants; either will do, the modules are cast below anyway.
    variant = None if any((vae_dir / n).is_file() for n in VAE_WEIGHT_NAMES if ".fp16." not in n) else "fp16"
    try:
        vae = AutoencoderKLTemporalDecoder.from_pretrained(
            vae_dir, variant=variant, torch_dtype=dtype, low_cpu_mem_usage=False
        )
    except Exception as err:  # diffusers and safetensors raise many kinds for a damaged folder
        raise WeightsError(f"cannot load the VAE from {vae_dir}: {err}; {LAYOUT_HINT}") from err
    vae = _ready_for_inference(vae.to(device))
    if vae.config.get("force_upcast", False):
        keep_encoder_in_fp32(vae)
    return vae


def keep_encoder_in_fp32(vae: AutoencoderKLTemporalDecoder) -> None:
    """Encoding LQ frames in half precision overflows; the reference upcasts the VAE for it. Keeping the
    small encoder in fp32 for good saves casting the whole VAE back and forth per job."""
    vae.encoder.to(torch.float32)
    vae.quant_conv.to(torch.float32)


def load_scheduler_config(models_dir: Path) -> dict[str, Any]:
    path = models_dir / SCHEDULER_CONFIG
    config = _read_json(path)
    try:
        EulerDiscreteScheduler.from_config(config)
    except (TypeError, ValueError) as err:
        raise WeightsError(f"{path} is not a valid Euler scheduler config: {err}; {LAYOUT_HINT}") from err
    return config


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint that is a plain dict of tensors, read without executing pickled code. Zip-format files
    (what torch.save writes) are memory-mapped, so the 3 GB UNet is not held twice while it is moved."""
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:  # torch raises many kinds for a corrupt or non-tensor pickle
        raise WeightsError(
            f"cannot read {path} as a plain tensor state dict ({type(err).__name__}: {err}); the file is damaged "
            f"or not the released checkpoint; {LAYOUT_HINT}"
        ) from err
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise WeightsError(f"{path} does not hold a plain state dict of tensors; {LAYOUT_HINT}")
    return state_dict


def load_strictly(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Every key present with the right shape, or a WeightsError that says which ones are not.

    The module adopts the given tensors as they are (`assign=True`, so it may be built on the meta device):
    cast the state dict, or the module afterwards, to the wanted device and dtype."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key} {tuple(state_dict[key].shape)} (model wants {tuple(expected[key].shape)})"
        for key in expected
        if key in state_dict and state_dict[key].shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        details = "; ".join(
            f"{label}: {_abbreviate(keys)}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched))
            if keys
        )
        raise WeightsError(f"{path} does not fit the model it is loaded into ({details}); {LAYOUT_HINT}")
    # assign=True adopts the loaded tensors as the parameters (the module was built on the meta device).
    module.load_state_dict(state_dict, strict=True, assign=True)
    left_on_meta = [name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left_on_meta:
        raise WeightsError(f"{path} left tensors uninitialised: {_abbreviate(left_on_meta)}")


def _ready_for_inference(module: torch.nn.Module) -> Any:
    module.eval()
    module.requires_grad_(False)
    return module


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise WeightsError(f"cannot read {path}: {err}; {LAYOUT_HINT}") from err


def _abbreviate(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} and {len(keys) - limit} more" if len(keys) > limit else shown
