"""The sampler parity fixture shipped in tests/fixtures/parity (tiny random weights in the real layout, and
the reference sampler's outputs for them). See its README for the format."""

from __future__ import annotations

import torch

from tests.helpers.paths import FIXTURES

PARITY_DIR = FIXTURES / "parity"
PARITY_MODELS = PARITY_DIR / "models"
PARITY_CASES = sorted(path for path in PARITY_DIR.glob("case-*") if path.is_dir())


def load_case(name: str) -> tuple[dict, dict]:
    """(inputs, expected) of one case, e.g. "case-a"."""
    case = PARITY_DIR / name
    return (
        torch.load(case / "inputs.pt", weights_only=True),
        torch.load(case / "expected.pt", weights_only=True),
    )
