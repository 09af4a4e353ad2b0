"""The networks we build have exactly the state-dict keys and shapes the released SVFR checkpoints hold.

The manifests (tests/fixtures/manifests/) list every key and shape the reference classes produce; matching them
is what makes `load_state_dict(..., strict=True)` of unet.pth, id_linear.pth and insightface_glint360k.pth work.
Everything is built on the `meta` device, so the full-size models cost no memory.
"""

from __future__ import annotations

import json

import torch
from diffusers import UNetSpatioTemporalConditionModel

from svfrd.engines.svfr.identity import IdProjection, IResNet
from tests.helpers.paths import FIXTURES


def manifest(name: str) -> dict[str, list[int]]:
    return {key: shape for key, shape in json.loads((FIXTURES / "manifests" / name).read_text())}


def key_shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {key: list(tensor.shape) for key, tensor in module.state_dict().items()}


def assert_same_keys(built: dict[str, list[int]], expected: dict[str, list[int]]) -> None:
    missing = sorted(set(expected) - set(built))
    unexpected = sorted(set(built) - set(expected))
    assert not missing and not unexpected, f"missing {missing[:5]}, unexpected {unexpected[:5]}"
    mismatched = {k: (built[k], expected[k]) for k in expected if built[k] != expected[k]}
    assert not mismatched, f"shape mismatches (built, expected): {dict(list(mismatched.items())[:5])}"


def test_arcface_iresnet100_has_the_released_checkpoint_keys() -> None:
    with torch.device("meta"):
        arcface = IResNet()
    expected = manifest("arcface_iresnet100_keys.json")
    assert len(expected) == 925
    assert_same_keys(key_shapes(arcface), expected)
    parameters = sum(p.numel() for p in arcface.parameters())
    assert parameters == 65_156_160


def test_id_linear_has_the_released_checkpoint_keys() -> None:
    with torch.device("meta"):
        projection = IdProjection()
    assert_same_keys(key_shapes(projection), manifest("id_linear_keys.json"))


def test_stock_unet_from_the_svd_xt_config_with_12_input_channels_has_the_unet_pth_keys() -> None:
    config = json.loads((FIXTURES / "svd-xt" / "unet" / "config.json").read_text())
    assert config["in_channels"] == 8, "the fixture is SVD-xt's own config; SVFR widens it"
    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel.from_config({**config, "in_channels": 12})
    expected = manifest("unet_svfr_keys.json")
    assert len(expected) == 1428
    assert_same_keys(key_shapes(unet), expected)


def test_id_tokens_are_49_tokens_of_the_unet_cross_attention_width() -> None:
    with torch.device("meta"):
        arcface = IResNet().eval()
        projection = IdProjection()
        _, layer4 = arcface(torch.empty(1, 3, 112, 112))
        tokens = projection(layer4)
    assert tuple(layer4.shape) == (1, 512, 7, 7)
    config = json.loads((FIXTURES / "svd-xt" / "unet" / "config.json").read_text())
    assert tuple(tokens.shape) == (1, 49, config["cross_attention_dim"])
