"""End to end through the service: with tiny SVFR models configured (engine name "svfr"), a clip dropped into
the inbox is restored by the SVFR engine in a real `svfrd run` daemon, and the report names the engine.

The tiny models run at SVFR's real 512x512 crop size here (the daemon builds the engine from the config
alone), where the VAE's full-resolution layers cost about a second per frame on one core: so the clip is kept
to two frames, the steps to one per pass, and the worker may use both cores of a small test machine."""

from __future__ import annotations

import json
from pathlib import Path

import av
import pytest

from tests.helpers.media_clips import write_moving_face_clip
from tests.helpers.service import FACE_MODEL, Daemon, ServiceFolder
from tests.helpers.tiny_svfr import write_tiny_svfr_models

FRAMES = 2  # also a clip the reference cannot do (N <= 3 breaks its pass 1: docs/svfr.md §8)

pytestmark = pytest.mark.skipif(
    not FACE_MODEL.is_file(), reason="models/face_landmarker.task missing: run scripts/ensure-env"
)


def svfr_service(root: Path) -> ServiceFolder:
    models = write_tiny_svfr_models(root / "models", face_model=FACE_MODEL)
    folder = ServiceFolder(root, engine="svfr")
    with open(folder.config_path, "a") as config:
        config.write(
            "\n[engine.svfr]\n"
            f'models_dir = "{models}"\n'
            'mode = "improved"\nsteps = 1\npass1_steps = 1\n'
        )
    return folder


def test_a_dropped_clip_is_restored_by_the_svfr_engine_and_the_report_names_it(tmp_path: Path) -> None:
    folder = svfr_service(tmp_path / "svfrd")
    clip = write_moving_face_clip(tmp_path / "face.mp4", frames=FRAMES)
    with Daemon(folder, env={"OMP_NUM_THREADS": "2"}) as daemon:
        folder.drop(clip)
        (job,) = daemon.wait_for_jobs(1, {"done", "failed"}, timeout=240)
        assert job.state == "done", f"{job.error}\n{daemon.log()[-4000:]}"
    assert job.engine == "svfr"
    report = json.loads((folder.outbox / "face.report.json").read_text())
    assert report["engine"] == "svfr"
    assert report["frames"] == FRAMES
    with av.open(str(folder.outbox / "face.restored.mp4")) as restored:
        assert sum(1 for _ in restored.decode(video=0)) == FRAMES
    assert folder.files("done") == ["face.mp4"]
