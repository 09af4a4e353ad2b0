"""`svfrd doctor`: one line per check, what to do when one fails, and an exit code that says whether svfrd can
run. Run against temporary configs, a real SQLite database and the real face model file."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import create_engine, text

from svfrd.config import load_config
from svfrd.jobs.database import upgrade_database
from svfrd.ops import doctor
from tests.helpers.paths import FACE_MODEL, REPO_ROOT

REPO = REPO_ROOT
needs_face_model = pytest.mark.skipif(not FACE_MODEL.is_file(),
                                      reason="models/face_landmarker.task missing: run scripts/ensure-env")


def write_site(folder: Path, engine: str = "classical", device: str = "auto", extra: str = "",
               make_folders: bool = True, face_model: Path = FACE_MODEL) -> Path:
    """A config whose folders exist; the face model is the real one fetched by ensure-env."""
    if make_folders:
        for name in ("inbox", "outbox", "done", "failed", "state"):
            (folder / name).mkdir(parents=True, exist_ok=True)
    config = folder / "config.toml"
    config.write_text(f'[service]\nmin_free_space_mb = 1\n{extra}\n[[inbox]]\npath = "inbox"\n\n'
                      f'[faces]\nmodel = "{face_model}"\n\n[engine]\nname = "{engine}"\ndevice = "{device}"\n')
    return config


def doctor_output(config) -> tuple[int, dict[str, str]]:
    """Exit code, and each check's line by its name (the first line of that name)."""
    console = Console(record=True, width=400, file=io.StringIO(), color_system=None)
    code = doctor.run_doctor(config, console=console)
    lines: dict[str, str] = {}
    for line in console.export_text().splitlines():
        mark, _, rest = line.partition(" ")
        name, sep, _ = rest.partition(": ")
        if sep and mark in "✓✗!":
            lines.setdefault(name, line)
    return code, lines


@needs_face_model
def test_a_ready_site_passes_every_required_check(tmp_path: Path) -> None:
    config = write_site(tmp_path)
    upgrade_database(f"sqlite:///{tmp_path / 'state' / 'svfrd.db'}")
    code, lines = doctor_output(config)
    assert code == 0
    for name in ("config", "inbox", "outbox", "done folder", "failed folder", "state folder", "database",
                 "free space", "video codecs", "face model", "torch"):
        assert lines[name].startswith("✓"), lines[name]
    assert "schema at" in lines["database"] and "(newest)" in lines["database"]
    assert "libx264" in lines["video codecs"]
    assert "sha256 verified" in lines["face model"]
    # The classical engine needs neither SVFR weights nor a GPU: a warning, not a failure.
    assert lines["SVFR weights"].startswith("!") and "not needed by engine 'classical'" in lines["SVFR weights"]
    assert lines["GPU"][0] in "✓!"


@needs_face_model
def test_missing_folders_are_warnings_with_the_command_to_create_them(tmp_path: Path) -> None:
    code, lines = doctor_output(write_site(tmp_path, make_folders=False))
    assert code == 0
    assert lines["outbox"] == f"! outbox: {tmp_path / 'outbox'} does not exist yet → create it: mkdir -p " \
                              f"{tmp_path / 'outbox'}"
    assert "not created yet" in lines["database"]


@needs_face_model
def test_a_file_where_a_folder_belongs_blocks_start(tmp_path: Path) -> None:
    config = write_site(tmp_path)
    shutil.rmtree(tmp_path / "done")
    (tmp_path / "done").write_text("oops")
    (tmp_path / "failed").rmdir()
    (tmp_path / "blocker").write_text("")
    config.write_text(config.read_text().replace("[[inbox]]", '[output]\nfailed = "blocker/failed"\n\n[[inbox]]'))
    code, lines = doctor_output(config)
    assert code == 1
    assert lines["done folder"].startswith("✗") and "is not a folder" in lines["done folder"]
    assert lines["failed folder"].startswith("✗") and "is not writable" in lines["failed folder"]


def test_a_missing_or_wrong_face_model_says_how_to_fetch_it(tmp_path: Path) -> None:
    wrong = tmp_path / "face.task"
    wrong.write_bytes(b"not a model")
    code, lines = doctor_output(write_site(tmp_path, face_model=wrong))
    assert code == 1
    assert lines["face model"].startswith("✗") and "sha256 mismatch" in lines["face model"]
    assert f"svfrd fetch-face-model {wrong}" in lines["face model"]


@needs_face_model
def test_svfr_weights_are_required_only_when_the_engine_is_svfr(tmp_path: Path) -> None:
    code, lines = doctor_output(write_site(tmp_path, engine="svfr"))
    assert code == 1
    assert lines["SVFR weights"].startswith("✗") and "models/README.md" in lines["SVFR weights"]
    assert "→ `svfrd fetch-models --models-dir " in lines["SVFR weights"], "the folder named: a shell's config may differ"
    code, lines = doctor_output(write_site(tmp_path, engine="auto"))
    assert lines["SVFR weights"].startswith("!") and "uses the classical engine" in lines["SVFR weights"]
    assert code == (0 if lines["GPU"].startswith(("✓", "!")) else 1)


@needs_face_model
def test_complete_svfr_weights_pass(tmp_path: Path) -> None:
    from svfrd.weights.verify import verify_models
    from tests.helpers.tiny_svfr import write_tiny_svfr_models

    write_tiny_svfr_models(tmp_path / "models")
    assert verify_models(tmp_path / "models").ok
    config = write_site(tmp_path, extra='')
    config.write_text(config.read_text() + '\n[engine.svfr]\nmodels_dir = "models"\n')
    _, lines = doctor_output(config)
    assert lines["SVFR weights"].startswith("✓") and "7 files" in lines["SVFR weights"], lines["SVFR weights"]


@needs_face_model
def test_svfr_weights_present_but_not_verified_are_a_warning_naming_verify_models(tmp_path: Path) -> None:
    from tests.helpers.tiny_svfr import write_tiny_svfr_models

    write_tiny_svfr_models(tmp_path / "models")
    config = write_site(tmp_path, extra='')
    config.write_text(config.read_text() + '\n[engine.svfr]\nmodels_dir = "models"\n')
    _, lines = doctor_output(config)
    assert lines["SVFR weights"].startswith("!"), lines["SVFR weights"]
    assert "not been verified" in lines["SVFR weights"] and "svfrd verify-models" in lines["SVFR weights"]


@needs_face_model
def test_a_cuda_device_on_a_cpu_only_torch_blocks_start(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    code, lines = doctor_output(write_site(tmp_path, device="cuda"))
    assert code == 1
    assert lines["GPU"].startswith("✗") and "nvidia-smi" in lines["GPU"]
    if torch.version.cuda is None:
        assert lines["torch"].startswith("✗") and "CPU-only build" in lines["torch"]


@needs_face_model
def test_too_little_free_space_blocks_start(tmp_path: Path) -> None:
    config = write_site(tmp_path)
    config.write_text(config.read_text().replace("min_free_space_mb = 1", "min_free_space_mb = 1000000000"))
    code, lines = doctor_output(config)
    assert code == 1
    assert lines["free space"].startswith("✗") and "min_free_space_mb" in lines["free space"]


@needs_face_model
def test_database_schema_behind_is_a_warning_and_unknown_is_an_error(tmp_path: Path) -> None:
    config = write_site(tmp_path)
    url = f"sqlite:///{tmp_path / 'state' / 'svfrd.db'}"
    upgrade_database(url, "0001")
    code, lines = doctor_output(config)
    assert code == 0
    assert lines["database"].startswith("!") and "is at schema 0001" in lines["database"]
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    engine.dispose()
    code, lines = doctor_output(config)
    assert code == 1
    assert lines["database"].startswith("✗") and "upgrade svfrd" in lines["database"]


@needs_face_model
def test_the_doctor_never_writes_the_database(tmp_path: Path) -> None:
    config = write_site(tmp_path)
    url = f"sqlite:///{tmp_path / 'state' / 'svfrd.db'}"
    upgrade_database(url, "0001")
    doctor_output(config)
    from svfrd.jobs.database import current_revision

    assert current_revision(url) == "0001"


def test_an_invalid_config_is_reported_as_the_first_check(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[[inbox]]\npath = "inbox"\n[engine]\nname = "fast"\n')
    code, lines = doctor_output(config)
    assert code == 2
    assert lines["config"].startswith("✗") and 'name = "fast"' in lines["config"]


@needs_face_model
def test_a_check_that_crashes_is_reported_and_the_rest_still_run(tmp_path: Path, monkeypatch) -> None:
    def broken() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(doctor, "check_codecs", broken)
    code, lines = doctor_output(write_site(tmp_path))
    assert code == 1
    assert lines["video codecs"].startswith("✗") and "boom" in lines["video codecs"]
    assert lines["face model"].startswith("✓")


def test_codec_lookup_tells_missing_from_present() -> None:
    import av

    assert doctor.has_codec(av, "libx264", "w") and doctor.has_codec(av, "h264", "r")
    assert not doctor.has_codec(av, "no-such-codec", "w")


def test_a_state_folder_open_to_everyone_is_a_warning_with_the_chmod(tmp_path: Path) -> None:
    """Issue 16: a state folder made before svfrd created it 0750 still shows the database to every user."""
    write_site(tmp_path)
    config = load_config(tmp_path / "config.toml")
    (tmp_path / "state").chmod(0o755)
    check = next(c for c in doctor.folder_checks(config) if c.name == "state folder access")
    assert not check.ok and not check.required and check.fix == f"chmod o-rwx {tmp_path / 'state'}"
    assert "mode 0755" in check.detail
    (tmp_path / "state").chmod(0o750)
    check = next(c for c in doctor.folder_checks(config) if c.name == "state folder access")
    assert check.ok and "mode 0750" in check.detail


@needs_face_model
def test_doctor_lists_the_workers_and_where_each_running_job_runs(tmp_path: Path) -> None:
    from svfrd.jobs.database import open_database
    from svfrd.jobs.store import claim_next_job, enqueue_job

    config = write_site(tmp_path, device="cpu")
    config.write_text(config.read_text() + 'devices = ["cpu", "cpu"]\n')  # [engine] is the last table
    url = f"sqlite:///{tmp_path / 'state' / 'svfrd.db'}"
    upgrade_database(url)
    db = open_database(url)
    job = enqueue_job(db, inbox="/in", source_name="a.mp4", source_path="/in/a.mp4", tasks="0", content_hash="c")
    claim_next_job(db, 4321, host="studio-2:/var/lib/svfrd", device="cuda:1")
    db.dispose()
    _, lines = doctor_output(config)
    assert lines["workers"] == (f"✓ workers: 2 worker(s) here, on cpu, cpu; job {job.id} on "
                                "studio-2:/var/lib/svfrd, cuda:1, worker 4321")
