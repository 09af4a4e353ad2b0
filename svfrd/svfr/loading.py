"""Load the diffusion half of SVFR from a model folder.

Layout (documented for users in models/README.md):

    <models_dir>/stable-video-diffusion-img2vid-xt/unet/config.json        SVD-xt UNet config (weights unused)
    <models_dir>/stable-video-diffusion-img2vid-xt/vae/                    SVD-xt VAE (config + weights)
    <models_dir>/stable-video-diffusion-img2vid-xt/scheduler/scheduler_config.json
    <models_dir>/face_restoration/unet.pth                                 SVFR UNet, a plain state dict
    <models_dir>/face_restoration/id_linear.pth                            ID projector (svfrd.svfr.identity)
    <models_dir>/face_restoration/insightface_glint360k.pth                ArcFace iresnet100 (identity)

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

from svfrd.errors import ConfigError

BASE_MODEL_DIR = "stable-video-diffusion-img2vid-xt"
SVFR_DIR = "face_restoration"
UNET_CONFIG = f"{BASE_MODEL_DIR}/unet/config.json"
VAE_DIR = f"{BASE_MODEL_DIR}/vae"
SCHEDULER_CONFIG = f"{BASE_MODEL_DIR}/scheduler/scheduler_config.json"
UNET_WEIGHTS = f"{SVFR_DIR}/unet.pth"
ID_LINEAR_WEIGHTS = f"{SVFR_DIR}/id_linear.pth"
ARCFACE_WEIGHTS = f"{SVFR_DIR}/insightface_glint360k.pth"

# SVFR widens SVD's conv_in from 8 channels to 12: noisy latent, LQ latent, reference latent.
SVFR_UNET_IN_CHANNELS = 12
VAE_WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)
LAYOUT_HINT = "see models/README.md for the expected layout of the model folder and where to get each file"


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


def diffusion_weights_problem(models_dir: Path) -> str | None:
    """What is missing for `load_diffusion_models`, or None."""
    return _missing_files_message(Path(models_dir), [UNET_CONFIG, SCHEDULER_CONFIG, UNET_WEIGHTS], vae=True)


def weights_problem(models_dir: Path) -> str | None:
    """What is missing for the whole SVFR engine (diffusion and identity models), or None. Cheap: it only
    looks at files, so `create_engine("auto")` and `svfrd doctor` can call it."""
    required = [UNET_CONFIG, SCHEDULER_CONFIG, UNET_WEIGHTS, ID_LINEAR_WEIGHTS, ARCFACE_WEIGHTS]
    return _missing_files_message(Path(models_dir), required, vae=True)


def _missing_files_message(models_dir: Path, required: list[str], vae: bool) -> str | None:
    if not models_dir.is_dir():
        return f"the SVFR model folder {models_dir} does not exist; {LAYOUT_HINT}"
    missing = [name for name in required if not _is_nonempty_file(models_dir / name)]
    if vae:
        vae_dir = models_dir / VAE_DIR
        if not _is_nonempty_file(vae_dir / "config.json"):
            missing.append(f"{VAE_DIR}/config.json")
        if not any(_is_nonempty_file(vae_dir / name) for name in VAE_WEIGHT_NAMES):
            missing.append(f"{VAE_DIR}/diffusion_pytorch_model[.fp16].safetensors")
    if not missing:
        return None
    return f"missing or empty in the SVFR model folder {models_dir}: {', '.join(missing)}; {LAYOUT_HINT}"


def _is_nonempty_file(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


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
        # Encoding LQ frames in half precision overflows; the reference upcasts the VAE for it. Keeping the
        # small encoder in fp32 for good saves casting the whole VAE back and forth per job.
        vae.encoder.to(torch.float32)
        vae.quant_conv.to(torch.float32)
    return vae


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
