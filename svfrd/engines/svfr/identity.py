"""SVFR's identity branch: ArcFace layer-4 features of the reference face, projected to 49 ID tokens.

The chain (docs/svfr.md §4): five face landmarks -> similarity warp onto the ArcFace template at 512
-> a crop of the warped face resized to 112x112 -> iresnet100 -> the (512, 7, 7) layer-4 map taken before `bn2`
-> `id_linear` (1x1 conv to 1024 + LayerNorm) -> (1, 49, 1024) tokens, the UNet's cross-attention context.

Both networks are defined here with the exact state-dict layout of the released checkpoints
(`face_restoration/insightface_glint360k.pth`, `face_restoration/id_linear.pth`), so they load with
`strict=True`. The loader builds the architecture a checkpoint describes (depth and widths), which is how the
tiny test models go through the same code; the released file describes iresnet100.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from svfrd.engines.svfr.loading import (
    ARCFACE_WEIGHTS,
    ID_LINEAR_WEIGHTS,
    LAYOUT_HINT,
    WeightsError,
    load_strictly,
    read_state_dict,
)

log = logging.getLogger(__name__)

IRESNET100_LAYERS = (3, 13, 30, 3)
IRESNET_WIDTHS = (64, 128, 256, 512)
ARCFACE_INPUT = 112
ALIGNED_SIZE = 512

CropName = Literal["reference", "corrected"]

# Rows and columns of the 512 aligned face that ArcFace sees (docs/svfr.md §4). The reference applies the 256-canvas
# box to the 512 canvas (forehead and left eye only); "corrected" is the same box scaled to 512.
ARCFACE_CROPS: dict[str, tuple[slice, slice]] = {
    "reference": (slice(0, 224), slice(16, 240)),
    "corrected": (slice(0, 448), slice(32, 480)),
}

# The ArcFace 5-point template on a 256 canvas (docs/svfr.md §4): left eye, right eye, nose, mouth left, mouth right.
TEMPLATE_256 = np.array(
    [
        [92.5892, 103.3926],
        [163.0636, 103.0028],
        [128.0504, 143.4732],
        [99.0986, 184.7310],
        [157.4598, 184.4082],
    ],
    dtype=np.float64,
)


# --------------------------------------------------------------------------------------------------------
# ArcFace iresnet (the insightface arcface_torch layout)


class IBasicBlock(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3 (stride) -> BN, plus the shortcut; no activation after the add."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes, eps=1e-5)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """ArcFace iresnet for 112x112 input. The defaults are iresnet100, the released checkpoint's network.

    `forward` returns (embedding, layer4 map before bn2); SVFR only uses the map.
    """

    def __init__(
        self,
        layers: tuple[int, ...] = IRESNET100_LAYERS,
        widths: tuple[int, ...] = IRESNET_WIDTHS,
        stem_width: int = 64,
        embedding_size: int = 512,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem_width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width, eps=1e-5)
        self.prelu = nn.PReLU(stem_width)
        inplanes = stem_width
        for index, (blocks, width) in enumerate(zip(layers, widths), start=1):
            stage = [IBasicBlock(inplanes, width, stride=2)]
            stage += [IBasicBlock(width, width) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*stage))
            inplanes = width
        self.stages = len(layers)
        side = ARCFACE_INPUT >> len(layers)
        self.bn2 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.dropout = nn.Dropout(p=0.0)
        self.fc = nn.Linear(inplanes * side * side, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.prelu(self.bn1(self.conv1(x)))
        for index in range(1, self.stages + 1):
            x = getattr(self, f"layer{index}")(x)
        layer4 = x
        embedding = self.features(self.fc(self.dropout(torch.flatten(self.bn2(x), 1))))
        return embedding, layer4


class IdProjection(nn.Module):
    """`id_linear`: (B, C, 7, 7) ArcFace map -> 1x1 conv -> (B, 49, D) tokens -> LayerNorm.

    The attribute name `project1024` is the checkpoint's key, whatever `out_channels` is."""

    def __init__(self, in_channels: int = 512, out_channels: int = 1024) -> None:
        super().__init__()
        self.project1024 = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.final_norm = nn.LayerNorm(out_channels, eps=1e-5)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        tokens = self.project1024(feature_map).flatten(2).transpose(1, 2)
        return self.final_norm(tokens)


# --------------------------------------------------------------------------------------------------------
# Loading


@dataclass
class IdentityModels:
    arcface: IResNet
    id_projection: IdProjection
    device: torch.device
    dtype: torch.dtype

    @property
    def token_width(self) -> int:
        return self.id_projection.project1024.out_channels


def identity_weight_paths(models_dir: Path) -> dict[str, Path]:
    return {"arcface": Path(models_dir) / ARCFACE_WEIGHTS, "id_linear": Path(models_dir) / ID_LINEAR_WEIGHTS}


def load_identity_models(models_dir: Path, device: torch.device | str, dtype: torch.dtype) -> IdentityModels:
    """Load ArcFace and id_linear strictly from `models_dir/face_restoration/` (layout in models/README.md).

    A missing or mismatching file raises `WeightsError` (a `ConfigError`) naming it: the reference silently
    kept a randomly initialised ArcFace when its file was missing, which quietly ruins every result."""
    paths = identity_weight_paths(models_dir)
    for path in paths.values():
        if not path.is_file():
            raise WeightsError(f"SVFR weights file missing: {path}; {LAYOUT_HINT}")
    arcface_state = read_state_dict(paths["arcface"])
    projection_state = read_state_dict(paths["id_linear"])

    # Built on the meta device and filled by the checkpoint: no random init of 65 M parameters to discard.
    with torch.device("meta"):
        arcface = build_arcface_for(arcface_state, paths["arcface"])
        projection = build_projection_for(projection_state, paths["id_linear"])
    load_strictly(arcface, arcface_state, paths["arcface"])
    load_strictly(projection, projection_state, paths["id_linear"])

    arcface_width = arcface.bn2.num_features
    if projection.project1024.in_channels != arcface_width:
        raise WeightsError(
            f"{paths['id_linear']} expects {projection.project1024.in_channels}-channel ArcFace features, but "
            f"{paths['arcface']} produces {arcface_width}: the two files do not belong together; {LAYOUT_HINT}"
        )
    device = torch.device(device)
    arcface = arcface.to(device=device, dtype=dtype).eval().requires_grad_(False)
    projection = projection.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return IdentityModels(arcface=arcface, id_projection=projection, device=device, dtype=dtype)


def build_arcface_for(state: dict[str, torch.Tensor], path: Path) -> IResNet:
    """The iresnet whose depth and widths the checkpoint's keys and shapes describe."""
    try:
        blocks = [blocks_in_stage(state, stage) for stage in range(1, 5)]
        widths = tuple(int(state[f"layer{stage}.0.conv1.weight"].shape[0]) for stage in range(1, 5))
        arcface = IResNet(
            layers=tuple(blocks),
            widths=widths,
            stem_width=int(state["conv1.weight"].shape[0]),
            embedding_size=int(state["fc.weight"].shape[0]),
        )
    except (KeyError, ValueError) as err:
        raise WeightsError(f"{path} is not an ArcFace iresnet checkpoint (missing {err}); {LAYOUT_HINT}") from err
    if tuple(blocks) != IRESNET100_LAYERS:
        log.warning("%s holds an iresnet with %s blocks per stage, not iresnet100 %s", path, blocks, IRESNET100_LAYERS)
    return arcface


def blocks_in_stage(state: dict[str, torch.Tensor], stage: int) -> int:
    pattern = re.compile(rf"^layer{stage}\.(\d+)\.")
    indices = {int(m.group(1)) for key in state if (m := pattern.match(key))}
    if not indices:
        raise ValueError(f"layer{stage} blocks")
    return max(indices) + 1


def build_projection_for(state: dict[str, torch.Tensor], path: Path) -> IdProjection:
    weight = state.get("project1024.weight")
    if weight is None or weight.ndim != 4:
        raise WeightsError(f"{path} is not an id_linear checkpoint (no project1024.weight); {LAYOUT_HINT}")
    return IdProjection(in_channels=int(weight.shape[1]), out_channels=int(weight.shape[0]))


# --------------------------------------------------------------------------------------------------------
# Alignment and tokens


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The least-squares similarity (rotation, uniform scale, translation; no reflection) mapping `source`
    points onto `target` points, as a 2x3 matrix [[a, -b, tx], [b, a, ty]] (docs/svfr.md §4)."""
    source = np.asarray(source, dtype=np.float64).reshape(-1, 2)
    target = np.asarray(target, dtype=np.float64).reshape(-1, 2)
    rows = []
    for x, y in source:
        rows.append([x, -y, 1.0, 0.0])
        rows.append([y, x, 0.0, 1.0])
    solution, *_ = np.linalg.lstsq(np.array(rows), target.reshape(-1), rcond=None)
    a, b, tx, ty = solution
    return np.array([[a, -b, tx], [b, a, ty]], dtype=np.float64)


def align_face(image_rgb: np.ndarray, landmarks5: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """Warp the face so its eyes, nose and mouth corners land on the ArcFace template scaled to `size`.

    landmarks5: (5, 2) x, y in `image_rgb` pixels, in template order (left eye, right eye, nose, mouth left,
    mouth right; image left/right)."""
    template = TEMPLATE_256 * (size / 256.0)
    matrix = similarity_transform(landmarks5, template)
    return cv2.warpAffine(
        image_rgb, matrix, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


def arcface_input(
    aligned_face_512: np.ndarray, crop: CropName, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """(1, 3, 112, 112) in [-1, 1]: the chosen crop of the aligned 512 face, bilinearly resized.

    Normalised in fp32 and then cast, and resized in the model dtype, in the reference's order."""
    if aligned_face_512.shape != (ALIGNED_SIZE, ALIGNED_SIZE, 3) or aligned_face_512.dtype != np.uint8:
        raise ValueError(
            f"expected a (512, 512, 3) uint8 aligned face, got {aligned_face_512.shape} {aligned_face_512.dtype}"
        )
    rows, cols = ARCFACE_CROPS[crop]
    pixels = torch.from_numpy(np.ascontiguousarray(aligned_face_512)).permute(2, 0, 1)[None].to(device)
    pixels = ((pixels.to(torch.float32) / 255.0 - 0.5) / 0.5).to(dtype)
    size = (ARCFACE_INPUT, ARCFACE_INPUT)
    return F.interpolate(pixels[:, :, rows, cols], size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def id_tokens_for_face(
    identity: IdentityModels, face_rgb_uint8_512: np.ndarray, crop: CropName = "reference"
) -> torch.Tensor:
    """The (1, 49, C) ID tokens for an aligned 512 face (see `align_face`)."""
    pixels = arcface_input(face_rgb_uint8_512, crop, identity.device, identity.dtype)
    _, layer4 = identity.arcface(pixels)
    return identity.id_projection(layer4)
