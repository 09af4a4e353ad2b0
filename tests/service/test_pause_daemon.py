"""End to end: `svfrd pause`, `pause --after-current`, `resume` and `run-now` with a real daemon."""

from __future__ import annotations

import json
import os
import re

from svfrd.cli import main
from tests.helpers.engines import SLOW_SECONDS_ENV
from tests.helpers.service import Daemon, ServiceFolder, write_face_clip

SLOW = "tests.helpers.engines:SlowEngine"
MID_RESTORE = {"restore", "encode"}


def svfrd(folder: ServiceFolder, *args: str) -> None:
    assert main(["--config", str(folder.config_path), *args]) == 0


def test_pause_stops_the_running_job_frees_the_worker_survives_a_restart_and_resume_runs_it(tmp_path, capsys):
    folder = ServiceFolder(tmp_path / "svfrd", engine=SLOW)
    with Daemon(folder, env={"SVFRD_TEST_SECONDS_PER_FRAME": "0.5"}) as daemon:
        folder.drop(write_face_clip(tmp_path / "clip.mp4", tag=21, frames=8))
        running = daemon.wait_for_running_stage(MID_RESTORE)
        svfrd(folder, "pause")
        (queued,) = daemon.wait_for_jobs(1, {"queued"}, timeout=20)
        daemon.wait_until("the worker let go", lambda: "the worker exits so that the GPU is free" in daemon.log())
    # Back in the queue as it was: a pause is neither a failure nor a service interruption.
    assert (queued.id, queued.attempts, queued.service_interruptions) == (running.id, 0, 0)
    assert folder.files("outbox") == []

    with Daemon(folder, log_name="restart.log", env={"SVFRD_TEST_SECONDS_PER_FRAME": "0"}) as restarted:
        restarted.wait_until("the pause read at start-up", lambda: "paused: no job starts" in restarted.log())
        assert [job.state for job in folder.jobs()] == ["queued"]
        assert "worker process" not in restarted.log()  # paused: no worker (and no GPU memory) at all
        capsys.readouterr()
        svfrd(folder, "status")
        shown = capsys.readouterr().out
        assert "svfrd is paused" in shown
        svfrd(folder, "resume")
        (done,) = restarted.wait_for_jobs(1, {"done"})
    assert done.id == running.id and folder.files("outbox") == ["clip.report.json", "clip.restored.mp4"]


def test_pause_after_current_finishes_the_running_job_and_run_now_overrides_the_pause(tmp_path):
    folder = ServiceFolder(tmp_path / "svfrd", engine=SLOW)
    with Daemon(folder, env={"SVFRD_TEST_SECONDS_PER_FRAME": "0.3"}) as daemon:
        folder.drop(write_face_clip(tmp_path / "first.mp4", tag=22, frames=4))
        daemon.wait_for_running_stage(MID_RESTORE)
        svfrd(folder, "pause", "--after-current")
        folder.drop(write_face_clip(tmp_path / "second.mp4", tag=23, frames=4))
        first, second = daemon.wait_for_jobs(2, {"done", "queued"})
        daemon.wait_until("the pause", lambda: "paused after current: no job starts" in daemon.log())
        assert [job.state for job in folder.jobs()] == ["done", "queued"]
        svfrd(folder, "run-now", str(second.id))
        first, second = daemon.wait_for_jobs(2, {"done"})
    assert second.run_now and "a run-now job starts" in daemon.log()


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_with_two_workers_pause_stops_both_jobs_and_both_workers_and_resume_goes_on_from_their_checkpoints(
        tmp_path):
    # The classical engine (slowed) declares resume_context, so a resumed job restarts after its segments.
    folder = ServiceFolder(tmp_path / "svfrd", engine="tests.helpers.engines:SlowClassicalEngine",
                           devices=["cpu", "cpu"], output={"segment_seconds": 0.2})  # 5 frames a segment
    clips = [write_face_clip(tmp_path / f"clip{n}.mp4", tag=30 + n, frames=20) for n in range(2)]
    checkpoints = [folder.root / "state" / "checkpoints" / f"job{n}" for n in (1, 2)]
    with Daemon(folder, env={SLOW_SECONDS_ENV: "0.3"}) as daemon:
        daemon.wait_until("both workers to be ready", lambda: daemon.log().count("ready with the test-slow") == 2)
        for clip in clips:
            folder.drop(clip)
        daemon.wait_until("a finished segment of each job", lambda: all(
            list(path.glob("segments-*.ckpt")) for path in checkpoints), interval=0.1)
        workers = {job.worker_pid for job in folder.jobs()}
        assert len(workers) == 2 and None not in workers, "both jobs run at once, each on its own worker"

        svfrd(folder, "pause")
        stopped = daemon.wait_for_jobs(2, {"queued"}, timeout=30)
        daemon.wait_until("both workers to exit", lambda: all(process_gone(pid) for pid in workers))
        assert daemon.log().count("the worker exits so that the GPU is free") == 2
        assert all(path.is_dir() for path in checkpoints), "a paused job keeps its checkpoints"

        svfrd(folder, "resume")
        done = daemon.wait_for_jobs(2, {"done"}, timeout=120)
        daemon.wait_until("the ended jobs' checkpoints to go", lambda: not any(p.exists() for p in checkpoints))

    assert [(job.attempts, job.service_interruptions) for job in stopped + done] == [(0, 0)] * 4
    assert len(re.findall(r"worker process \d+ started on cpu", daemon.log())) == 4  # 2, and 2 fresh on resume
    for n in range(2):
        resume = json.loads((folder.outbox / f"clip{n}.report.json").read_text())["resume"]
        assert resume["segments_reused"] >= 1 and resume["from_frame"] == 5 * resume["segments_reused"]
