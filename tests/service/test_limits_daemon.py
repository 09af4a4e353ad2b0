"""A decompression-bomb video (about 100 KB, frames larger than 8K UHD) dropped into the inbox of a real
daemon fails as bad input from its header, without decoding a frame, and only that input: a good video
dropped beside it is restored."""

from __future__ import annotations

from tests.helpers.media_clips import write_decompression_bomb
from tests.helpers.service import Daemon, ServiceFolder, write_face_clip


def test_a_decompression_bomb_video_fails_as_bad_input_and_the_service_goes_on(tmp_path):
    folder = ServiceFolder(tmp_path / "svfrd")
    bomb = write_decompression_bomb(tmp_path / "bomb.mp4")
    with Daemon(folder) as daemon:
        folder.drop(bomb)
        folder.drop(write_face_clip(tmp_path / "good.mp4", tag=1))
        jobs = {job.source_name: job for job in daemon.wait_for_jobs(2, {"done", "failed"})}
    refused = jobs["bomb.mp4"]
    assert refused.state == "failed" and refused.error_kind == "bad_input" and refused.attempts == 0
    assert "bomb.mp4 has 8192x4320 pixels per frame (in its header)" in refused.error_message
    assert "over the limit of 33,177,600 pixels ([limits] max_frame_pixels" in refused.error_message
    assert refused.stage == "probe"  # the face pass, which decodes every frame, never started
    assert jobs["good.mp4"].state == "done"
    assert {"bomb.mp4", "bomb.error.txt"} <= set(folder.files("failed"))
    assert "good.restored.mp4" in folder.files("outbox")
