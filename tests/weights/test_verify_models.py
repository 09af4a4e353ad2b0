"""svfrd verify-models: a tiny model folder in the real layout verifies clean; damaged files are each rejected
with their name and what is wrong; the lock makes later runs cheap and `--full` re-reads."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from svfrd.engines.svfr.model_folder import ARCFACE_WEIGHTS, ID_LINEAR_WEIGHTS, UNET_CONFIG, UNET_WEIGHTS
from svfrd.weights.files import VAE_FULL_WEIGHTS
from svfrd.weights.lock import LOCK_NAME, read_lock, unverified_reason
from svfrd.weights.verify import verify_models
from tests.helpers.tiny_svfr import write_tiny_svfr_models


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return write_tiny_svfr_models(tmp_path_factory.mktemp("pristine") / "models")


@pytest.fixture
def models(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "models"))


def only_problem(models: Path) -> str:
    report = verify_models(models)
    assert len(report.problems) == 1, [f.problem for f in report.problems]
    return report.problems[0].problem


def rewrite_state(path: Path, change) -> None:
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


def test_a_tiny_folder_in_the_real_layout_verifies_clean_and_is_locked(models: Path) -> None:
    report = verify_models(models)
    assert report.ok, [f.problem for f in report.problems]
    assert [f.path for f in report.findings if f.path.endswith((".pth", ".safetensors"))] == [
        VAE_FULL_WEIGHTS, ID_LINEAR_WEIGHTS, ARCFACE_WEIGHTS, UNET_WEIGHTS]
    entries = read_lock(models)
    assert set(entries) == {f.path for f in report.findings}
    assert entries[UNET_WEIGHTS]["size"] == (models / UNET_WEIGHTS).stat().st_size
    assert len(entries[UNET_WEIGHTS]["sha256"]) == 64 and "424 tensors" in entries[UNET_WEIGHTS]["checked"]
    assert unverified_reason(models) is None
    again = verify_models(models)  # nothing changed: nothing is read
    assert again.ok and all(f.skipped for f in again.findings)


def test_a_truncated_unet_is_rejected_with_its_size(models: Path) -> None:
    data = (models / UNET_WEIGHTS).read_bytes()
    (models / UNET_WEIGHTS).write_bytes(data[: len(data) // 3])
    problem = only_problem(models)
    assert problem.startswith("face_restoration/unet.pth is truncated: 2.51 MB of at least 3.7")


def test_a_verified_file_truncated_later_is_measured_against_its_verified_size(models: Path) -> None:
    assert verify_models(models).ok
    data = (models / UNET_WEIGHTS).read_bytes()
    (models / UNET_WEIGHTS).write_bytes(data[: len(data) * 2 // 3])
    assert "changed since it was verified" in unverified_reason(models)
    assert only_problem(models) == "face_restoration/unet.pth is truncated: 5.02 MB of 7.52 MB"


def test_a_truncated_vae_is_rejected_with_the_size_its_header_declares(models: Path) -> None:
    path = models / VAE_FULL_WEIGHTS
    data = path.read_bytes()
    path.write_bytes(data[:1_200_000])
    assert only_problem(models) == f"{VAE_FULL_WEIGHTS} is truncated: 1.20 MB of 2.01 MB"


def test_corrupted_tensor_bytes_fail_their_record_checksum(models: Path) -> None:
    path = models / UNET_WEIGHTS
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # inside a tensor record; the zip index is intact
    path.write_bytes(bytes(data))
    problem = only_problem(models)
    assert problem.startswith("face_restoration/unet.pth is corrupted: the record") and "checksum" in problem


def test_a_corrupted_safetensors_header_is_rejected(models: Path) -> None:
    path = models / VAE_FULL_WEIGHTS
    data = bytearray(path.read_bytes())
    data[10:20] = b"\xff" * 10
    path.write_bytes(bytes(data))
    assert only_problem(models).startswith(f"{VAE_FULL_WEIGHTS} is corrupted: its safetensors header does not parse")


def test_a_unet_with_8_input_channels_is_the_wrong_architecture(models: Path) -> None:
    rewrite_state(models / UNET_WEIGHTS, lambda s: s.update({"conv_in.weight": s["conv_in.weight"][:, :8]}))
    problem = only_problem(models)
    assert problem.startswith("face_restoration/unet.pth does not fit the network (wrong shape: conv_in.weight "
                              "(32, 8, 3, 3) (the network wants (32, 12, 3, 3))")


def test_a_missing_key_is_named(models: Path) -> None:
    rewrite_state(models / UNET_WEIGHTS, lambda s: s.pop("conv_out.bias"))
    assert only_problem(models) == "face_restoration/unet.pth has 423 of the 424 expected keys; missing: conv_out.bias"


def test_an_extra_key_is_named(models: Path) -> None:
    rewrite_state(models / ID_LINEAR_WEIGHTS, lambda s: s.update({"project1024.extra": torch.zeros(2)}))
    assert only_problem(models) == ("face_restoration/id_linear.pth has 1 keys the network does not have: "
                                    "project1024.extra")


def test_a_missing_file_is_named(models: Path) -> None:
    (models / ARCFACE_WEIGHTS).unlink()
    assert only_problem(models).startswith("face_restoration/insightface_glint360k.pth is missing from")


def test_an_id_projection_that_does_not_fit_the_unet_is_rejected(models: Path) -> None:
    config = json.loads((models / UNET_CONFIG).read_text())
    config["cross_attention_dim"] = 64
    (models / UNET_CONFIG).write_text(json.dumps(config))
    report = verify_models(models)
    problems = {f.path: f.problem for f in report.problems}
    assert "makes 32-wide ID tokens, but the UNet" in problems[ID_LINEAR_WEIGHTS]


def test_full_rehashes_and_finds_a_change_that_kept_size_and_time(models: Path) -> None:
    assert verify_models(models).ok
    path = models / UNET_WEIGHTS
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-30] ^= 0xFF  # in the zip's trailing records: the quick path cannot see it
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert unverified_reason(models) is None and verify_models(models).ok  # size and mtime unchanged
    report = verify_models(models, full=True)
    assert not report.ok and report.problems[0].path == UNET_WEIGHTS
    assert UNET_WEIGHTS not in read_lock(models)  # the lock keeps only what verified
    assert (models / LOCK_NAME).is_file()
