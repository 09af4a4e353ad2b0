"""create_engine: the configured engine, by name or import path, and "auto" falling back to classical."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from svfrd.config import EngineConfig, SvfrConfig
from svfrd.engines import create_engine
from svfrd.engines.classical import ClassicalEngine
from svfrd.engines.interface import Engine
from svfrd.errors import ConfigError
from tests.helpers.paths import REPO_ROOT


class PluggedEngine:
    """A minimal engine loaded by import path, as the service tests plug in theirs."""

    name = "plugged"
    option_names = frozenset()

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg

    def check(self, request):
        pass

    def restore(self, request, crops, progress):
        return iter(())

    def warnings(self):
        return []


class NotAnEngine:
    def __init__(self, cfg):
        pass


def engine_config(name: str, models_dir: Path, device: str = "auto") -> EngineConfig:
    svfr = SvfrConfig(models_dir=models_dir, mode="reference", steps=30, pass1_steps=50, guidance_scale=2.0,
                      vae_chunk=16, segment_frames=2000)
    return EngineConfig(name=name, device=device, dtype="fp16", svfr=svfr)


def test_classical_by_name(tmp_path):
    engine = create_engine(engine_config("classical", tmp_path))
    assert isinstance(engine, ClassicalEngine) and isinstance(engine, Engine)


def test_an_import_path_is_called_with_the_engine_config(tmp_path):
    cfg = engine_config("tests.engines.test_create_engine:PluggedEngine", tmp_path)
    engine = create_engine(cfg)
    assert isinstance(engine, PluggedEngine) and engine.cfg is cfg


@pytest.mark.parametrize(
    "name, message",
    [
        ("turbo", "is not an engine"),
        ("tests.no_such_module:Engine", "cannot import it"),
        ("tests.engines.test_create_engine:Missing", "cannot import it"),
        ("tests.engines.test_create_engine:NotAnEngine", "does not implement"),
    ],
)
def test_unknown_engines_are_config_errors(tmp_path, name, message):
    with pytest.raises(ConfigError, match=message):
        create_engine(engine_config(name, tmp_path))


def test_auto_without_weights_uses_classical_and_says_why(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="svfrd.engines"):
        engine = create_engine(engine_config("auto", tmp_path / "empty-models"))
    assert engine.name == "classical"
    assert "using classical" in caplog.text and "SVFR weights are not usable" in caplog.text
    assert f"`svfrd fetch-models --models-dir {tmp_path / 'empty-models'}` downloads and verifies them" in caplog.text


@pytest.mark.parametrize("name", ["classical", "auto"])
def test_without_weights_the_diffusion_stack_is_never_imported(tmp_path, name):
    code = (
        "import sys; from svfrd.engines import create_engine; "
        "from tests.engines.test_create_engine import engine_config; from pathlib import Path; "
        f"create_engine(engine_config({name!r}, Path({str(tmp_path)!r}))); "
        "print(sorted(m for m in ('diffusers', 'torch') if m in sys.modules))"
    )
    root = REPO_ROOT
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_auto_with_unverified_weights_uses_classical_and_says_to_verify(tmp_path, caplog):
    from svfrd.weights.verify import verify_models
    from tests.helpers.tiny_svfr import write_tiny_svfr_models

    models = write_tiny_svfr_models(tmp_path / "models")
    with caplog.at_level(logging.INFO, logger="svfrd.engines"):
        assert create_engine(engine_config("auto", models)).name == "classical"
    assert "have not been verified yet" in caplog.text and "svfrd verify-models" in caplog.text
    assert verify_models(models).ok
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="svfrd.engines"):
        assert create_engine(engine_config("auto", models, device="cpu")).name == "classical"
    assert "SVFR weights are not usable" not in caplog.text and "SVFR needs a CUDA GPU" in caplog.text
