"""models/manifest.lock.json: what `svfrd verify-models` found good, and the cheap question whether it still
holds. Only looks at file sizes and times (no torch), so `svfrd doctor` and `engine = "auto"` can ask it.

The lock maps each verified file (relative to the model folder) to its size, mtime, sha256 and what was
checked. A file counts as verified while its size and mtime are those recorded; `svfrd verify-models --full`
re-hashes them all.
"""

from __future__ import annotations

import json
import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from svfrd.engines.svfr.model_folder import weights_problem
from svfrd.files.atomic import write_replacing
from svfrd.weights.files import MODEL_FILES, VAE_FP16_WEIGHTS, VAE_FULL_WEIGHTS, human_size

LOCK_NAME = "manifest.lock.json"
LOCK_VERSION = 1


def lock_path(models_dir: Path) -> Path:
    return Path(models_dir) / LOCK_NAME


def vae_weights_file(models_dir: Path) -> str:
    """The VAE weights the loader reads: the full-precision file when there is one, else the fp16 variant
    (svfrd.engines.svfr.loading.load_vae chooses the same way)."""
    return VAE_FULL_WEIGHTS if (Path(models_dir) / VAE_FULL_WEIGHTS).is_file() else VAE_FP16_WEIGHTS


def files_to_verify(models_dir: Path) -> list[str]:
    """Every file the SVFR engine reads, relative to the model folder."""
    return [vae_weights_file(models_dir) if f.path == VAE_FP16_WEIGHTS else f.path for f in MODEL_FILES]


def read_lock(models_dir: Path) -> dict[str, Any] | None:
    """The lock's entries by file, or None when there is no readable lock."""
    try:
        data = json.loads(lock_path(models_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != LOCK_VERSION or not isinstance(data.get("files"), dict):
        return None
    return data["files"]


def write_lock(models_dir: Path, entries: dict[str, dict[str, Any]]) -> Path:
    """Atomically: a reader (the daemon's auto choice) sees the old lock or the new one, never half."""
    path = lock_path(models_dir)
    content = {"version": LOCK_VERSION, "written_by": "svfrd verify-models", "files": dict(sorted(entries.items()))}
    write_replacing(path, json.dumps(content, indent=2) + "\n")
    return path


def file_stamp(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def unchanged(models_dir: Path, name: str, entry: dict[str, Any] | None) -> bool:
    """The file is still the one the lock entry describes (same size, same mtime)."""
    if not entry:
        return False
    try:
        stamp = file_stamp(Path(models_dir) / name)
    except OSError:
        return False
    return stamp["size"] == entry.get("size") and stamp["mtime_ns"] == entry.get("mtime_ns")


def unverified_reason(models_dir: Path) -> str | None:
    """Why the SVFR weights in `models_dir` are not known good, or None when every file is as verified."""
    models_dir = Path(models_dir)
    problem = weights_problem(models_dir)
    if problem:
        return f"{problem}; `{fetch_command(models_dir)}` downloads and verifies them"
    entries = read_lock(models_dir)
    verify = f"svfrd verify-models {shlex.quote(str(models_dir))}"
    if entries is None:
        return f"the weights in {models_dir} have not been verified yet: run `{verify}` (it writes {LOCK_NAME})"
    for name in files_to_verify(models_dir):
        if name not in entries:
            return f"{name} in {models_dir} is not verified: run `{verify}`"
        if not unchanged(models_dir, name, entries[name]):
            return f"{name} in {models_dir} changed since it was verified (size or time differ): run `{verify}`"
    return None


def fetch_command(models_dir: Path) -> str:
    """The command that fills `models_dir`, named explicitly: the shell's config may not be the service's."""
    return f"svfrd fetch-models --models-dir {shlex.quote(str(models_dir))}"


def verified_summary(models_dir: Path) -> str:
    entries = read_lock(models_dir) or {}
    total = sum(int(e.get("size", 0)) for e in entries.values())
    return f"{len(entries)} files ({human_size(total)}) verified, unchanged since ({LOCK_NAME})"


def now_text() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()

