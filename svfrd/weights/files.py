"""Which files the SVFR engine needs, and where each comes from (models/README.md tells users the same).

Two sources: the gated SVD-xt repository on the Hugging Face Hub, of which SVFR uses only three configs and
the VAE, and the SVFR authors' Google Drive folder with the three checkpoints. A mirror (`--from`) holds the
same layout as the model folder itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from svfrd.engines.svfr.model_folder import (
    ARCFACE_WEIGHTS,
    BASE_MODEL_DIR,
    ID_LINEAR_WEIGHTS,
    SCHEDULER_CONFIG,
    UNET_CONFIG,
    UNET_WEIGHTS,
    VAE_DIR,
)

HUB_REPO = "stabilityai/stable-video-diffusion-img2vid-xt"
HUB_REVISION = "main"
HUB_PAGE = f"https://huggingface.co/{HUB_REPO}"
DRIVE_FOLDER_ID = "1nzy9Vk-yA_DwXm1Pm4dyE2o0r7V6_5mn"
DRIVE_FOLDER_PAGE = f"https://drive.google.com/drive/folders/{DRIVE_FOLDER_ID}"
#: Where Drive answers; an environment override lets tests (and odd networks) point elsewhere.
DRIVE_ENDPOINT_ENV = "SVFRD_DRIVE_ENDPOINT"
DEFAULT_DRIVE_ENDPOINT = "https://drive.google.com"

VAE_CONFIG = f"{VAE_DIR}/config.json"
VAE_FP16_WEIGHTS = f"{VAE_DIR}/diffusion_pytorch_model.fp16.safetensors"
VAE_FULL_WEIGHTS = f"{VAE_DIR}/diffusion_pytorch_model.safetensors"

Source = Literal["hub", "drive"]
Kind = Literal["config", "safetensors", "checkpoint"]


@dataclass(frozen=True)
class ModelFile:
    path: str  # relative to the model folder
    source: Source
    kind: Kind

    @property
    def remote_name(self) -> str:
        """Its name in its source: the path inside the Hub repository, or the file name in the Drive folder."""
        if self.source == "hub":
            return self.path.removeprefix(f"{BASE_MODEL_DIR}/")
        return self.path.rsplit("/", 1)[-1]

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


#: What `svfrd fetch-models` downloads, in the order it does so: configs first (the checkpoints are checked
#: against the networks they describe), then the big files.
MODEL_FILES: tuple[ModelFile, ...] = (
    ModelFile(UNET_CONFIG, "hub", "config"),
    ModelFile(SCHEDULER_CONFIG, "hub", "config"),
    ModelFile(VAE_CONFIG, "hub", "config"),
    ModelFile(VAE_FP16_WEIGHTS, "hub", "safetensors"),
    ModelFile(ID_LINEAR_WEIGHTS, "drive", "checkpoint"),
    ModelFile(ARCFACE_WEIGHTS, "drive", "checkpoint"),
    ModelFile(UNET_WEIGHTS, "drive", "checkpoint"),
)


def drive_endpoint() -> str:
    return os.environ.get(DRIVE_ENDPOINT_ENV, DEFAULT_DRIVE_ENDPOINT).rstrip("/")


def human_size(size: int | float) -> str:
    """1.2 GB, 196 MB, 12 KB: decimal units, as download pages and file managers print them."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            value = size / scale
            return f"{value:.2f} {unit}" if value < 10 else f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{int(size)} bytes"
