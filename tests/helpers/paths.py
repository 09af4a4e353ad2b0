"""Where the tests find the repository's own files, wherever the test module sits."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / "tests" / "fixtures"
FACE_MODEL = REPO_ROOT / "models" / "face_landmarker.task"
