"""Loading the SVFR diffusion models from a model folder of the real layout (tiny weights from the fixture)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from svfrd.engines.svfr.loading import (
    ARCFACE_WEIGHTS,
    ID_LINEAR_WEIGHTS,
    UNET_WEIGHTS,
    VAE_DIR,
    WeightsError,
    load_diffusion_models,
    weights_problem,
)
from svfrd.errors import ConfigError
from tests.helpers.parity_cases import PARITY_MODELS


@pytest.fixture
def models_copy(tmp_path: Path) -> Path:
    target = tmp_path / "models"
    shutil.copytree(PARITY_MODELS, target)
    return target


def test_the_unet_is_widened_to_12_channels_and_holds_exactly_the_weights_of_unet_pth():
    models = load_diffusion_models(PARITY_MODELS, "cpu", torch.float32)
    stored = torch.load(PARITY_MODELS / UNET_WEIGHTS, weights_only=True)

    config_on_disk = json.loads((PARITY_MODELS / "stable-video-diffusion-img2vid-xt/unet/config.json").read_text())
    assert config_on_disk["in_channels"] == 8
    assert models.unet.config.in_channels == 12
    assert models.unet.conv_in.weight.shape[1] == 12
    state = models.unet.state_dict()
    assert state.keys() == stored.keys()
    for key, tensor in stored.items():
        assert torch.equal(state[key], tensor.float()), key


def test_models_are_in_eval_mode_without_gradients_in_the_requested_dtype():
    models = load_diffusion_models(PARITY_MODELS, "cpu", torch.bfloat16)

    assert models.dtype == torch.bfloat16 and models.device == torch.device("cpu")
    for module in (models.unet, models.vae):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
    assert {p.dtype for p in models.unet.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in models.vae.decoder.parameters()} == {torch.bfloat16}
    # force_upcast in the VAE config: LQ frames are encoded in fp32, as in the reference.
    assert {p.dtype for p in models.vae.encoder.parameters()} == {torch.float32}
    assert models.scheduler_config["prediction_type"] == "v_prediction"


def test_a_vae_shipped_only_as_the_fp16_variant_loads(models_copy: Path):
    vae_dir = models_copy / VAE_DIR
    (vae_dir / "diffusion_pytorch_model.safetensors").rename(vae_dir / "diffusion_pytorch_model.fp16.safetensors")

    models = load_diffusion_models(models_copy, "cpu", torch.float32)

    assert models.vae.config.latent_channels == 4


def test_a_missing_unet_pth_is_a_config_error_naming_the_file_and_the_layout(models_copy: Path):
    (models_copy / UNET_WEIGHTS).unlink()

    with pytest.raises(WeightsError) as caught:
        load_diffusion_models(models_copy, "cpu", torch.float32)

    assert isinstance(caught.value, ConfigError)
    assert "face_restoration/unet.pth" in str(caught.value)
    assert "models/README.md" in str(caught.value)


def test_a_unet_pth_for_another_model_names_the_keys_that_do_not_fit(models_copy: Path):
    state = torch.load(models_copy / UNET_WEIGHTS, weights_only=True)
    state["conv_in.weight"] = state["conv_in.weight"][:, :8]  # SVD's own 8-channel UNet
    del state["conv_out.bias"]
    torch.save(state, models_copy / UNET_WEIGHTS)

    with pytest.raises(WeightsError) as caught:
        load_diffusion_models(models_copy, "cpu", torch.float32)

    message = str(caught.value)
    assert "unet.pth does not fit" in message
    assert "missing: conv_out.bias" in message
    assert "conv_in.weight (32, 8, 3, 3) (model wants (32, 12, 3, 3))" in message


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_an_unreadable_or_non_tensor_unet_pth_is_refused(models_copy: Path, content: bytes | None):
    path = models_copy / UNET_WEIGHTS
    if content is None:
        torch.save({"state_dict": {"nested": torch.zeros(1)}}, path)
    else:
        path.write_bytes(content)

    with pytest.raises(WeightsError, match="unet.pth"):
        load_diffusion_models(models_copy, "cpu", torch.float32)


def test_a_missing_vae_is_named(models_copy: Path):
    shutil.rmtree(models_copy / VAE_DIR)

    with pytest.raises(WeightsError, match="vae/config.json"):
        load_diffusion_models(models_copy, "cpu", torch.float32)


def test_weights_problem_lists_every_missing_engine_file(models_copy: Path, tmp_path: Path):
    problem = weights_problem(models_copy)
    assert problem is not None
    assert ID_LINEAR_WEIGHTS in problem and ARCFACE_WEIGHTS in problem
    assert UNET_WEIGHTS not in problem

    (models_copy / ID_LINEAR_WEIGHTS).write_bytes(b"x")
    (models_copy / ARCFACE_WEIGHTS).write_bytes(b"x")
    assert weights_problem(models_copy) is None

    assert "does not exist" in weights_problem(tmp_path / "nowhere")


def test_a_damaged_vae_file_is_a_weights_error_naming_the_folder(models_copy: Path):
    weights = models_copy / VAE_DIR / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])

    with pytest.raises(WeightsError, match="cannot load the VAE from .*vae"):
        load_diffusion_models(models_copy, "cpu", torch.float32)
