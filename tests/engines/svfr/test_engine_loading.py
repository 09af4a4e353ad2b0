"""The SVFR engine loads its models through the real loading code from the documented folder layout, and a
missing or wrong file is a clear error naming it, never a silently random network."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from svfrd.engines.svfr.engine import SvfrEngine
from svfrd.engines.svfr.identity import IResNet, load_identity_models
from svfrd.engines.svfr.loading import ARCFACE_WEIGHTS, ID_LINEAR_WEIGHTS, UNET_WEIGHTS, weights_problem
from svfrd.errors import ConfigError
from tests.helpers.tiny_svfr import engine_config, tiny_arcface, write_tiny_svfr_models


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_svfr_models(tmp_path_factory.mktemp("svfr-models"))


@pytest.fixture
def models_copy(tiny_models: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_models, tmp_path / "models"))


def test_the_engine_loads_the_tiny_model_folder_with_the_weights_from_the_files(tiny_models: Path) -> None:
    engine = SvfrEngine(engine_config(tiny_models), resolution=64)
    assert weights_problem(tiny_models) is None
    saved_unet = torch.load(tiny_models / UNET_WEIGHTS, weights_only=True)
    assert torch.equal(engine.pipeline.models.unet.conv_in.weight, saved_unet["conv_in.weight"])
    assert engine.pipeline.models.unet.conv_in.in_channels == 12
    saved_arcface = torch.load(tiny_models / ARCFACE_WEIGHTS, weights_only=True)
    arcface = engine.pipeline.identity.arcface
    assert torch.equal(arcface.layer4[0].conv2.weight, saved_arcface["layer4.0.conv2.weight"])
    assert torch.equal(arcface.bn2.running_var, saved_arcface["bn2.running_var"])
    assert not arcface.training and engine.pipeline.models.device == torch.device("cpu")


@pytest.mark.parametrize("relative", [ARCFACE_WEIGHTS, ID_LINEAR_WEIGHTS, UNET_WEIGHTS])
def test_a_missing_weights_file_is_an_error_naming_it_and_the_layout(models_copy: Path, relative: str) -> None:
    (models_copy / relative).unlink()
    with pytest.raises(ConfigError) as caught:
        SvfrEngine(engine_config(models_copy), resolution=64)
    message = str(caught.value)
    assert relative in message and "models/README.md" in message


def test_a_missing_arcface_file_never_falls_back_to_a_random_network(models_copy: Path) -> None:
    (models_copy / ARCFACE_WEIGHTS).unlink()
    with pytest.raises(ConfigError, match="insightface_glint360k.pth"):
        load_identity_models(models_copy, "cpu", torch.float32)


def test_an_arcface_file_with_wrong_shapes_is_refused_with_the_keys_that_differ(models_copy: Path) -> None:
    wrong = IResNet(layers=(1, 1, 1, 1), widths=(8, 8, 8, 16), stem_width=8, embedding_size=24).state_dict()
    wrong["layer2.0.conv1.weight"] = torch.zeros(8, 8, 1, 1)
    torch.save(wrong, models_copy / ARCFACE_WEIGHTS)
    with pytest.raises(ConfigError, match="layer2.0.conv1.weight"):
        load_identity_models(models_copy, "cpu", torch.float32)


def test_id_linear_must_fit_the_arcface_features(models_copy: Path) -> None:
    torch.save({"project1024.weight": torch.zeros(32, 64, 1, 1), "final_norm.weight": torch.ones(32),
                "final_norm.bias": torch.zeros(32)}, models_copy / ID_LINEAR_WEIGHTS)
    with pytest.raises(ConfigError, match="do not belong together"):
        load_identity_models(models_copy, "cpu", torch.float32)


def test_a_file_that_is_not_a_state_dict_is_refused(models_copy: Path) -> None:
    (models_copy / ID_LINEAR_WEIGHTS).write_bytes(b"<html>download quota exceeded</html>")
    with pytest.raises(ConfigError, match="id_linear.pth"):
        load_identity_models(models_copy, "cpu", torch.float32)


def test_the_identity_models_are_built_as_the_checkpoint_describes(tiny_models: Path) -> None:
    identity = load_identity_models(tiny_models, "cpu", torch.float32)
    expected = {key: tuple(t.shape) for key, t in tiny_arcface().state_dict().items()}
    assert {key: tuple(t.shape) for key, t in identity.arcface.state_dict().items()} == expected
    assert identity.token_width == 32


def test_id_tokens_must_be_as_wide_as_the_unet_attends(models_copy: Path) -> None:
    torch.save({"project1024.weight": torch.zeros(48, 16, 1, 1), "final_norm.weight": torch.ones(48),
                "final_norm.bias": torch.zeros(48)}, models_copy / ID_LINEAR_WEIGHTS)
    with pytest.raises(ConfigError, match="48-wide ID tokens"):
        SvfrEngine(engine_config(models_copy), resolution=64)
