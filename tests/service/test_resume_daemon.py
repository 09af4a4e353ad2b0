"""End to end: a real daemon killed with SIGKILL during restoration and during output encoding resumes the
job from its checkpoints (STATE_DIR/checkpoints/job<ID>/), and the output equals an uninterrupted run's frame
for frame; a torn checkpoint is passed over; a crash between publication steps still completes once. The kill
points are found by waiting for checkpoint files, never by sleeping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from svfrd.config import load_config
from svfrd.domain import Task
from svfrd.engines.classical import ClassicalEngine
from svfrd.media.pipeline import PipelineJob, restore_video
from tests.helpers.paths import REPO_ROOT
from tests.helpers.service import Daemon, ServiceFolder, read_frames, write_face_clip

ENGINE = "tests.helpers.engines:SlowClassicalEngine"
FRAMES = 20
SEGMENT = {"segment_seconds": 0.2}  # 5 frames at 25 fps: 4 segments


def checkpoint_folder(folder: ServiceFolder, job_id: int = 1) -> Path:
    return folder.root / "state" / "checkpoints" / f"job{job_id}"


def finished_segments(folder: ServiceFolder) -> int:
    checkpoints = checkpoint_folder(folder)
    if not checkpoints.is_dir() or not list(checkpoints.glob("segments-*.ckpt")):
        return 0
    return len(list(checkpoints.glob("segment-*.mp4")))


def encoding_segment(folder: ServiceFolder, number: int) -> bool:
    """Segment `number` is being encoded: its partial file is there (the muxer buffers what it writes)."""
    return (checkpoint_folder(folder) / f".segment-{number:06d}.mp4.part").is_file()


def uninterrupted_frames(folder: ServiceFolder, clip: Path, tmp_path: Path) -> list[np.ndarray]:
    """The same job run once, without a stop, by the same pipeline and configuration."""
    config = load_config(folder.config_path)
    job = PipelineJob(source=clip, output=tmp_path / "uninterrupted.mp4", tasks=frozenset({Task.BFR}), seed=42,
                      mask_path=None, reference_path=None, options={}, faces=config.faces,
                      output_cfg=config.output, limits=config.limits, checkpoints=tmp_path / "uninterrupted")
    restore_video(job, ClassicalEngine(), lambda stage, done, total: None)
    return read_frames(job.output)


def test_killed_during_restoration_and_during_encoding_the_job_resumes_and_equals_an_uninterrupted_run(tmp_path):
    folder = ServiceFolder(tmp_path / "svfrd", engine=ENGINE, output=SEGMENT)
    clip = write_face_clip(tmp_path / "clip.mp4", tag=3, frames=FRAMES)
    slow = {"SVFRD_TEST_SECONDS_PER_FRAME": "0.3"}
    folder.drop(clip)

    # 1. During restoration: the engine is at work and one segment is finished.
    first = Daemon(folder, env=slow, own_process_group=True).start()
    try:
        first.wait_until("a finished segment", lambda: finished_segments(folder) >= 1)
        assert folder.jobs()[0].stage in {"restore", "encode"}
        first.kill_service()
    finally:
        first.stop()

    # 2. During output encoding: the next run is encoding a segment the first did not reach.
    second = Daemon(folder, log_name="second.log", env=slow, own_process_group=True).start()
    try:
        second.wait_until("a segment being encoded after the reused ones", lambda: encoding_segment(folder, 2))
        second.kill_service()
    finally:
        second.stop()

    with Daemon(folder, log_name="third.log", env={"SVFRD_TEST_SECONDS_PER_FRAME": "0"}) as third:
        (done,) = third.wait_for_jobs(1, {"done"})
    assert (done.attempts, done.service_interruptions) == (0, 2)
    report = json.loads((folder.outbox / "clip.report.json").read_text())
    assert report["resume"]["from_frame"] == 10 and report["resume"]["segments_reused"] == 2
    assert report["resume"]["face_pass_reused"] is True
    assert not checkpoint_folder(folder).exists()  # a job that ended takes its checkpoints with it
    expected = uninterrupted_frames(folder, clip, tmp_path)
    ours = read_frames(folder.outbox / "clip.restored.mp4")
    assert len(ours) == len(expected) == FRAMES
    assert all(np.array_equal(a, b) for a, b in zip(ours, expected))


def test_a_torn_checkpoint_is_passed_over_and_a_crash_between_publication_steps_still_completes_once(tmp_path):
    folder = ServiceFolder(tmp_path / "svfrd", engine=ENGINE, output=SEGMENT)
    clip = write_face_clip(tmp_path / "clip.mp4", tag=4, frames=FRAMES)
    folder.drop(clip)
    first = Daemon(folder, env={"SVFRD_TEST_SECONDS_PER_FRAME": "0.3"}, own_process_group=True).start()
    try:
        first.wait_until("two finished segments", lambda: finished_segments(folder) >= 2)
        first.kill_service()
    finally:
        first.stop()
    newest = sorted(checkpoint_folder(folder).glob("segments-*.ckpt"))[-1]
    os.truncate(newest, newest.stat().st_size - 20)  # torn, as a power cut mid-write leaves it

    # The restarted run resumes from the checkpoint before the torn one, and is killed between publishing its
    # first result file and the next (3. between publication steps).
    crashed = subprocess.run([sys.executable, "-m", "tests.helpers.crash_in_publication", str(folder.config_path)],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "SVFRD_TEST_SECONDS_PER_FRAME": "0"})
    assert crashed.returncode == -9, crashed.stderr[-3000:]
    assert "is not used" in crashed.stderr and newest.name in crashed.stderr
    assert checkpoint_folder(folder).is_dir()  # a crash is not the job's end

    with Daemon(folder, log_name="restart.log") as restarted:
        (done,) = restarted.wait_for_jobs(1, {"done"})
        restarted.wait_until("the ended job's checkpoints to go", lambda: not checkpoint_folder(folder).exists())
    assert folder.files("outbox") == ["clip.report.json", "clip.restored.mp4"]  # one set, no temporary file
    report = json.loads((folder.outbox / "clip.report.json").read_text())
    reused = report["resume"]["segments_reused"]
    assert report["resume"]["from_frame"] == 5 * reused and reused >= 1
    expected = uninterrupted_frames(folder, clip, tmp_path)
    ours = read_frames(folder.outbox / "clip.restored.mp4")
    assert len(ours) == len(expected) and all(np.array_equal(a, b) for a, b in zip(ours, expected))
