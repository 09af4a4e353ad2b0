"""A plain (non-editable) install: the wheel carries the migrations, and `svfrd run` from any folder creates and
migrates the job database with no alembic.ini and no repository around it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import inspect

from svfrd.jobs.database import current_revision, head_revision, open_read_only, read_only_url
from tests.helpers.paths import REPO_ROOT
from tests.helpers.service import Daemon, ServiceFolder

#: What `pip install .` builds the wheel from; copying it keeps the build's own files out of the repository.
PROJECT_FILES = ("pyproject.toml", "README.md", "svfrd")


def pip(*args: str, cwd: Path) -> None:
    """pip of this interpreter, offline: everything needed is on this machine."""
    done = subprocess.run([sys.executable, "-m", "pip", *args, "--no-deps", "--no-index", "--quiet"], cwd=cwd,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"pip {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project built into a wheel and installed with `pip install --target`: a folder that, put first on
    PYTHONPATH, is the only svfrd Python can import."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    source.mkdir()
    for name in PROJECT_FILES:
        original = REPO_ROOT / name
        if original.is_dir():
            shutil.copytree(original, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(original, source / name)
    pip("wheel", "--no-build-isolation", "--wheel-dir", str(root / "wheels"), str(source), cwd=root)
    (wheel,) = (root / "wheels").glob("svfrd-*.whl")
    assert "svfrd/jobs/migrations/env.py" in zipfile.ZipFile(wheel).namelist()
    pip("install", "--target", str(root / "site"), str(wheel), cwd=root)
    return root / "site"


def test_a_plain_install_creates_and_migrates_the_database_from_any_folder(installed, tmp_path):
    folder = ServiceFolder(tmp_path / "service", engine="classical")
    elsewhere = tmp_path / "elsewhere"  # neither the repository nor the service folder
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(installed)}
    imported = subprocess.run([sys.executable, "-c", "import svfrd; print(svfrd.__file__)"], cwd=elsewhere,
                              env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert Path(imported.stdout.strip()) == installed / "svfrd" / "__init__.py", imported.stderr

    url = folder.database_url
    database = folder.root / "state" / "svfrd.db"
    head = head_revision(url)
    with Daemon(folder, env=env, cwd=elsewhere) as daemon:
        daemon.wait_until("the database at its newest schema",
                          lambda: database.exists() and current_revision(read_only_url(url)) == head, timeout=60)
        daemon.wait_until_serving()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(30) == 0, daemon.log()

    assert "Running upgrade  -> 0001" in daemon.log()
    reader = open_read_only(url)
    try:
        assert "jobs" in inspect(reader).get_table_names()
    finally:
        reader.dispose()
    assert not (elsewhere / "state").exists() and list(elsewhere.iterdir()) == []
