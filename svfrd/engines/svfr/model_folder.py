"""The SVFR model folder: where each file lies, and what is missing. Only looks at files (no torch, no
diffusers), so `engine = "auto"` and `svfrd doctor` can ask without paying for the model libraries.

Layout (documented for users in models/README.md):

    <models_dir>/stable-video-diffusion-img2vid-xt/unet/config.json        SVD-xt UNet config (weights unused)
    <models_dir>/stable-video-diffusion-img2vid-xt/vae/                    SVD-xt VAE (config + weights)
    <models_dir>/stable-video-diffusion-img2vid-xt/scheduler/scheduler_config.json
    <models_dir>/face_restoration/unet.pth                                 SVFR UNet, a plain state dict
    <models_dir>/face_restoration/id_linear.pth                            ID projector (svfrd.engines.svfr.identity)
    <models_dir>/face_restoration/insightface_glint360k.pth                ArcFace iresnet100 (identity)
"""

from __future__ import annotations

from pathlib import Path

BASE_MODEL_DIR = "stable-video-diffusion-img2vid-xt"
SVFR_DIR = "face_restoration"
UNET_CONFIG = f"{BASE_MODEL_DIR}/unet/config.json"
VAE_DIR = f"{BASE_MODEL_DIR}/vae"
SCHEDULER_CONFIG = f"{BASE_MODEL_DIR}/scheduler/scheduler_config.json"
UNET_WEIGHTS = f"{SVFR_DIR}/unet.pth"
ID_LINEAR_WEIGHTS = f"{SVFR_DIR}/id_linear.pth"
ARCFACE_WEIGHTS = f"{SVFR_DIR}/insightface_glint360k.pth"
VAE_WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)
LAYOUT_HINT = "see models/README.md for the expected layout of the model folder and where to get each file"


#: What `load_diffusion_models` reads besides the VAE folder, and what the identity branch reads.
DIFFUSION_FILES = (UNET_CONFIG, SCHEDULER_CONFIG, UNET_WEIGHTS)
IDENTITY_FILES = (ID_LINEAR_WEIGHTS, ARCFACE_WEIGHTS)


def diffusion_weights_problem(models_dir: Path) -> str | None:
    """What is missing for `load_diffusion_models`, or None."""
    return _missing_files_message(Path(models_dir), DIFFUSION_FILES)


def weights_problem(models_dir: Path) -> str | None:
    """What is missing for the whole SVFR engine (diffusion and identity models), or None. Cheap: it only
    looks at files, so `create_engine("auto")` and `svfrd doctor` can call it."""
    return _missing_files_message(Path(models_dir), DIFFUSION_FILES + IDENTITY_FILES)


def _missing_files_message(models_dir: Path, required: tuple[str, ...]) -> str | None:
    """`required` files and the VAE folder's config and weights (either variant)."""
    if not models_dir.is_dir():
        return f"the SVFR model folder {models_dir} does not exist; {LAYOUT_HINT}"
    missing = [name for name in required if not _is_nonempty_file(models_dir / name)]
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
