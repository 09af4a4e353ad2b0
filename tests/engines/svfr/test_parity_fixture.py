"""`svfrd parity` reproduces the reference SVFR sampler on the shipped fixture, and says so when it does not."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from svfrd.engines.svfr.loading import load_diffusion_models
from svfrd.engines.svfr.parity import PARITY_TOLERANCE, compare_case, run_parity
from tests.helpers.parity_cases import PARITY_CASES, PARITY_MODELS


@pytest.fixture(scope="module")
def parity_models():
    return load_diffusion_models(PARITY_MODELS, "cpu", torch.float32)


def test_fixture_has_the_wrap_around_and_the_short_clip_case():
    assert [case.name for case in PARITY_CASES] == ["case-a", "case-c"]


@pytest.mark.parametrize("case_dir", PARITY_CASES, ids=lambda path: path.name)
def test_every_case_matches_the_reference_within_1e_4(parity_models, case_dir):
    result = compare_case(parity_models, case_dir)

    assert PARITY_TOLERANCE == 1e-4
    assert result.latents_diff <= 1e-4
    assert result.frames_diff <= 1e-4
    assert result.ok


def test_the_command_prints_one_line_per_case_and_exits_0(capsys):
    # Every case's numbers are checked above; the short case (run twice) is enough to see what the command prints.
    short = PARITY_CASES[-1]
    assert run_parity(PARITY_MODELS, [short, short]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert line.startswith(f"{short.name}: max |Δ| latents ")
        assert line.endswith(": ok")


def test_a_case_whose_expected_output_differs_fails_with_exit_1(tmp_path: Path, capsys):
    case = tmp_path / "case-tampered"
    shutil.copytree(PARITY_CASES[-1], case)
    expected = torch.load(case / "expected.pt", weights_only=True)
    expected["latents"][0, 0, 0, 0, 0] += 1e-3
    torch.save(expected, case / "expected.pt")

    assert run_parity(PARITY_MODELS, [case]) == 1

    out = capsys.readouterr().out
    assert "case-tampered: max |Δ| latents 0.001" in out
    assert "FAILED" in out


def test_a_case_that_cannot_run_fails_with_the_reason(tmp_path: Path, capsys):
    empty_case = tmp_path / "case-empty"
    empty_case.mkdir()

    assert run_parity(PARITY_MODELS, [PARITY_CASES[-1], empty_case]) == 1

    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(": ok")
    assert out[1] == f"case-empty: FAILED, cannot run the case: {empty_case / 'inputs.pt'} does not exist"


def test_a_model_folder_without_the_unet_weights_fails_naming_the_file(tmp_path: Path, capsys):
    models = tmp_path / "models"
    shutil.copytree(PARITY_MODELS, models)
    (models / "face_restoration" / "unet.pth").unlink()

    assert run_parity(models, PARITY_CASES) == 1

    out = capsys.readouterr().out
    assert "cannot load the models" in out
    assert "face_restoration/unet.pth" in out
