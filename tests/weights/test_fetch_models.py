"""svfrd fetch-models against a loopback server standing in for the Hub, Drive and a mirror
(tests.helpers.model_server): nothing here leaves the machine."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from svfrd.engines.svfr.model_folder import ID_LINEAR_WEIGHTS, UNET_CONFIG, UNET_WEIGHTS
from svfrd.weights.fetch import fetch_models, staging_path
from svfrd.weights.files import DRIVE_ENDPOINT_ENV, MODEL_FILES, VAE_FP16_WEIGHTS
from svfrd.weights.lock import LOCK_NAME, read_lock, unverified_reason
from svfrd.weights.verify import verify_models
from tests.helpers.model_server import Behaviour, running_model_server
from tests.helpers.paths import REPO_ROOT
from tests.helpers.tiny_svfr import write_tiny_svfr_models

ALL_FILES = {f.path for f in MODEL_FILES}


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Path:
    """The folder the loopback hosts serve, with its own lock (a mirror may carry one)."""
    folder = write_tiny_svfr_models(tmp_path_factory.mktemp("served") / "models")
    (folder / VAE_FP16_WEIGHTS).write_bytes((folder / "stable-video-diffusion-img2vid-xt/vae/"
                                             "diffusion_pytorch_model.safetensors").read_bytes())
    (folder / "stable-video-diffusion-img2vid-xt/vae/diffusion_pytorch_model.safetensors").unlink()
    assert verify_models(folder).ok
    return folder


@pytest.fixture(autouse=True)
def no_stored_token(monkeypatch):
    """The machine's own Hugging Face login must not leak into the tests."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)


def fetch(server, models: Path, monkeypatch, **kwargs) -> tuple[bool, str]:
    monkeypatch.setenv(DRIVE_ENDPOINT_ENV, server.url)
    out = io.StringIO()
    ok = fetch_models(models, hub_endpoint=server.url, console=Console(file=out, width=200), **kwargs)
    return ok, out.getvalue()


def test_a_good_download_is_verified_locked_and_skipped_next_time(served, tmp_path, monkeypatch) -> None:
    models = tmp_path / "models"
    with running_model_server(served) as server:
        ok, out = fetch(server, models, monkeypatch, token="hf_test")
        assert ok, out
        assert set(read_lock(models)) == ALL_FILES and unverified_reason(models) is None
        assert not list(models.rglob("*.download")) and not list(models.rglob("*.part"))
        assert (models / UNET_WEIGHTS).read_bytes() == (served / UNET_WEIGHTS).read_bytes()
        hub_gets = [r for r in server.gets("/") if "resolve" in r.path]
        assert hub_gets and all(r.headers.get("authorization") == "Bearer hf_test" for r in hub_gets)
        cdn_gets = server.gets("/cdn/")
        assert cdn_gets and not any("authorization" in r.headers for r in cdn_gets), "the token stays with the Hub"
        before = len(server.requests)
        ok, out = fetch(server, models, monkeypatch, token="hf_test")
        assert ok and len(server.requests) == before, "verified files are not fetched again"
        assert out.count("verified earlier, unchanged") == len(MODEL_FILES)


def test_a_redirect_from_the_hub_to_another_host_never_carries_the_token(served, tmp_path, monkeypatch) -> None:
    with running_model_server(served, Behaviour(redirect_git_gets=True)) as server:
        ok, out = fetch(server, tmp_path / "models", monkeypatch, token="hf_test")
        assert ok, out
        redirected = [r for r in server.gets("/cdn/") if r.path.endswith(".json")]
        assert len(redirected) == 3, "the three configs came through the redirect"
        assert not any("authorization" in r.headers for r in redirected), "the token stays with the Hub"


def test_a_staged_file_longer_than_the_sources_is_fetched_afresh(served, tmp_path, monkeypatch) -> None:
    # Left by another version of the file: resuming it can never end at the declared size.
    models = tmp_path / "models"
    staged = staging_path(models / VAE_FP16_WEIGHTS)
    staged.parent.mkdir(parents=True)
    staged.write_bytes((served / VAE_FP16_WEIGHTS).read_bytes() + b"an older, longer version")
    with running_model_server(served) as server:
        ok, out = fetch(server, models, monkeypatch, token="hf_test")
    assert ok, out
    assert (models / VAE_FP16_WEIGHTS).read_bytes() == (served / VAE_FP16_WEIGHTS).read_bytes()
    assert not staged.exists()


@pytest.mark.parametrize("token, status, says", [
    (None, 401, "is gated and no Hugging Face token was given"),
    ("hf_not_accepted", 403, "has not accepted its licence"),
])
def test_a_gated_repository_says_what_to_do(served, tmp_path, monkeypatch, token, status, says) -> None:
    with running_model_server(served, Behaviour(gated=True)) as server:
        ok, out = fetch(server, tmp_path / "models", monkeypatch, token=token)
    assert not ok
    flat = " ".join(out.split())
    assert says in flat and "https://huggingface.co/stabilityai/stable-video-diffusion-img2vid-xt" in flat
    assert "The Hub said: Access to model stabilityai/stable-video-diffusion-img2vid-xt is restricted" in flat
    assert "hf download stabilityai/stable-video-diffusion-img2vid-xt" in flat  # the manual steps
    heads = [r for r in server.requests if r.method == "HEAD"]
    assert len(heads) == 1, "one refusal is enough: the other Hub files are not asked for"
    models = tmp_path / "models"
    assert (models / ID_LINEAR_WEIGHTS).is_file(), "Drive's files still come"
    assert f"{UNET_WEIGHTS}: cannot check it without {UNET_CONFIG}" in flat
    assert not (models / UNET_WEIGHTS).exists() and (models / "face_restoration/.unet.pth.download").is_file()


def test_a_transfer_cut_mid_file_resumes_where_it_stopped(served, tmp_path, monkeypatch) -> None:
    models = tmp_path / "models"
    with running_model_server(served, Behaviour(cut_transfers=1)) as server:
        ok, out = fetch(server, models, monkeypatch, token="hf_test")
        assert ok, out
        first = server.requests[1]  # HEAD, then the cut GET
        retry = server.requests[2]
    size = (served / UNET_CONFIG).stat().st_size
    assert first.method == retry.method == "GET" and "range" not in first.headers
    assert retry.headers["range"] == f"bytes={size // 2}-"
    assert "resuming at" in out
    assert (models / UNET_CONFIG).read_bytes() == (served / UNET_CONFIG).read_bytes()


def test_a_file_whose_checksum_does_not_match_is_deleted_and_named(served, tmp_path, monkeypatch) -> None:
    models = tmp_path / "models"
    behaviour = Behaviour(wrong_sha256_for="vae/diffusion_pytorch_model.fp16.safetensors")
    with running_model_server(served, behaviour) as server:
        ok, out = fetch(server, models, monkeypatch, token="hf_test")
    flat = " ".join(out.split())
    assert not ok and f"{VAE_FP16_WEIGHTS}: checksum mismatch: the source declares sha256" in flat
    assert not (models / VAE_FP16_WEIGHTS).exists() and not list(models.rglob("*.download"))
    assert set(read_lock(models)) == ALL_FILES - {VAE_FP16_WEIGHTS}


@pytest.mark.parametrize("behaviour, says", [
    (Behaviour(drive_listing_status=429), "Google Drive refused to list the SVFR folder (HTTP 429"),
    (Behaviour(drive_sends_quota_page=True), "Google Drive sent a web page instead of the file"),
])
def test_drive_refusing_prints_the_manual_steps(served, tmp_path, monkeypatch, behaviour, says) -> None:
    models = tmp_path / "models"
    with running_model_server(served, behaviour) as server:
        ok, out = fetch(server, models, monkeypatch, token="hf_test")
    flat = " ".join(out.split())
    assert not ok and says in flat
    assert "To fetch the SVFR checkpoints by hand: open https://drive.google.com/drive/folders/" in flat
    assert not (models / UNET_WEIGHTS).exists() and not list(models.rglob("*.download"))
    assert (models / VAE_FP16_WEIGHTS).is_file(), "the Hub's files still come"


def test_from_a_local_folder(served, tmp_path, monkeypatch) -> None:
    models = tmp_path / "models"
    with running_model_server(served) as server:  # answers nothing it is not asked: proves no host is used
        ok, out = fetch(server, models, monkeypatch, mirror=str(served))
        assert ok, out and not server.requests
    assert set(read_lock(models)) == ALL_FILES


def test_from_a_loopback_url_checks_the_mirrors_own_lock(served, tmp_path, monkeypatch) -> None:
    mirror = Path(shutil.copytree(served, tmp_path / "mirror"))
    data = bytearray((mirror / UNET_WEIGHTS).read_bytes())
    data[len(data) // 2] ^= 0xFF  # the mirror's copy no longer matches the sha256 in its lock
    (mirror / UNET_WEIGHTS).write_bytes(bytes(data))
    models = tmp_path / "models"
    with running_model_server(mirror) as server:
        ok, out = fetch(server, models, monkeypatch, mirror=f"{server.url}/mirror")
        assert any(r.path == f"/mirror/{LOCK_NAME}" for r in server.requests)
    flat = " ".join(out.split())
    assert not ok and f"{UNET_WEIGHTS}: checksum mismatch" in flat
    assert set(read_lock(models)) == ALL_FILES - {UNET_WEIGHTS}


def test_the_cli_fetches_from_the_hub_named_by_hf_endpoint(served, tmp_path) -> None:
    """The real command in its own process: huggingface_hub reads HF_ENDPOINT when it is imported."""
    models = tmp_path / "models"
    with running_model_server(served) as server:
        env = {**os.environ, "HF_ENDPOINT": server.url, DRIVE_ENDPOINT_ENV: server.url, "HF_TOKEN": "hf_cli",
               "HF_HOME": str(tmp_path / "hf-home"), "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "140"}
        run = subprocess.run([sys.executable, "-m", "svfrd", "fetch-models", "--models-dir", str(models)],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        resolved = [r for r in server.gets("/") if "resolve" in r.path]
        assert resolved and all(r.headers.get("authorization") == "Bearer hf_cli" for r in resolved)
    print(run.stdout)
    assert "all SVFR weights in" in run.stdout and set(read_lock(models)) == ALL_FILES



def test_the_verify_models_command_reports_each_file(served, capsys) -> None:
    from svfrd.cli import main

    assert main(["verify-models", str(served)]) == 0
    out = capsys.readouterr().out
    assert out.count("✓") == len(MODEL_FILES) and "7 files verified" in out
