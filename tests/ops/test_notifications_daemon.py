"""End to end: a real daemon POSTs [notify] url when a job ends."""

from __future__ import annotations

from svfrd.config import toml_repr
from tests.helpers.service import Daemon, ServiceFolder, write_face_clip
from tests.ops.test_notifications import LoopbackServer


def test_a_job_end_triggers_the_post(tmp_path):
    folder = ServiceFolder(tmp_path / "svfrd")
    with LoopbackServer() as server:
        with folder.config_path.open("a") as config:
            config.write(f"\n[notify]\nurl = {toml_repr(server.url)}\n")
        with Daemon(folder) as daemon:
            folder.drop(write_face_clip(tmp_path / "clip.mp4", tag=31))
            (job,) = daemon.wait_for_jobs(1, {"done"})
            assert server.requests.acquire(timeout=30), daemon.log()[-3000:]
    (body,) = server.bodies
    assert (body["id"], body["state"], body["error"]) == (job.id, "done", None)
    assert body["source"] == str(folder.folder("done") / "clip.mp4")
    assert [p.rsplit("/", 1)[1] for p in body["outputs"]] == ["clip.restored.mp4", "clip.report.json"]
