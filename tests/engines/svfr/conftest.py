"""Fixtures shared by the SVFR engine tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.tiny_svfr import write_tiny_svfr_models


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model set in the real folder layout, written once per test module."""
    return write_tiny_svfr_models(tmp_path_factory.mktemp("svfr-models"))
