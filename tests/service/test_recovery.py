"""End to end: the daemon survives what long-running services meet — kill -9, SIGTERM mid-job, a worker that
dies, an engine failing for a moment, a user cancelling the running job, and a second daemon started by mistake.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

from svfrd.cli import main
from svfrd.domain import Task
from svfrd.errors import BadInputError
from svfrd.files.hashing import file_sha256
from svfrd.jobs.database import open_database, upgrade_database
from svfrd.jobs.model import Job
from svfrd.jobs.store import claim_next_job, enqueue_job, fail_job
from tests.helpers.paths import FACE_MODEL
from tests.helpers.service import Daemon, ServiceFolder, write_face_clip, write_mask

SLOW = "tests.helpers.engines:SlowEngine"
MID_RESTORE = {"restore", "encode"}


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_kill_9_during_a_job_then_restart_completes_it_once_without_losing_the_input(tmp_path):
    folder = ServiceFolder(tmp_path / "svfrd", engine=SLOW)
    clip = write_face_clip(tmp_path / "clip.mp4", tag=1, frames=8)
    daemon = Daemon(folder, env={"SVFRD_TEST_SECONDS_PER_FRAME": "0.4"}).start()
    try:
        folder.drop(clip)
        job = daemon.wait_for_running_stage(MID_RESTORE)
        daemon.kill()
        # The worker goes down with the daemon: no orphan can finish the job behind a new daemon's back.
        daemon.wait_until("the worker to die with the daemon", lambda: process_gone(job.worker_pid), timeout=10,
                          while_alive=False)
        assert (folder.inbox / "clip.mp4").read_bytes() == clip.read_bytes()
        assert not [n for n in folder.files("outbox") if not n.startswith(".")]
    finally:
        daemon.stop()

    with Daemon(folder, log_name="restart.log", env={"SVFRD_TEST_SECONDS_PER_FRAME": "0"}) as restarted:
        (done,) = restarted.wait_for_jobs(1, {"done"})
    assert done.id == job.id
    # A dead service is not the job's failure: counted apart, so kill -9 or a power loss uses up no attempt.
    assert (done.attempts, done.service_interruptions) == (0, 1)
    assert folder.files("outbox") == ["clip.report.json", "clip.restored.mp4"]  # one output, no temporary file
    assert folder.files("done") == ["clip.mp4"]
    assert folder.files("inbox") == []


def test_sigterm_during_a_job_exits_promptly_and_requeues_the_job_with_no_partial_output(tmp_path):
    folder = ServiceFolder(tmp_path / "svfrd", engine=SLOW)
    clip = write_face_clip(tmp_path / "clip.mp4", tag=2, frames=8)
    with Daemon(folder, env={"SVFRD_TEST_SECONDS_PER_FRAME": "0.5"}) as daemon:
        folder.drop(clip)
        running = daemon.wait_for_running_stage(MID_RESTORE)
        asked = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(timeout=20) == 0
        took = time.monotonic() - asked
    assert took < 10, f"stopping took {took:.1f} s"
    (job,) = folder.jobs()
    assert (job.id, job.state, job.attempts) == (running.id, "queued", 0)  # a clean stop costs no attempt
    assert folder.files("outbox") == []  # nothing half-written, not even a hidden temporary file
    assert (folder.inbox / "clip.mp4").read_bytes() == clip.read_bytes()
    assert "back in the queue" in daemon.log()

    with Daemon(folder, log_name="restart.log", env={"SVFRD_TEST_SECONDS_PER_FRAME": "0"}) as restarted:
        (done,) = restarted.wait_for_jobs(1, {"done"})
    assert done.id == job.id and folder.files("outbox") == ["clip.report.json", "clip.restored.mp4"]


def test_sigterm_with_on_stop_finish_completes_the_running_job_first(tmp_path):
    folder = ServiceFolder(tmp_path / "svfrd", engine=SLOW, service={"on_stop": "finish"})
    with Daemon(folder, env={"SVFRD_TEST_SECONDS_PER_FRAME": "0.3"}) as daemon:
        folder.drop(write_face_clip(tmp_path / "clip.mp4", tag=3, frames=4))
        daemon.wait_for_running_stage(MID_RESTORE)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(timeout=30) == 0
    (job,) = folder.jobs()
    assert job.state == "done"
    assert folder.files("outbox") == ["clip.report.json", "clip.restored.mp4"]


def test_a_worker_that_dies_is_restarted_and_its_job_retried(tmp_path):
    folder = ServiceFolder(tmp_path / "svfrd", engine="tests.helpers.engines:CrashOnceEngine")
    with Daemon(folder) as daemon:
        folder.drop(write_face_clip(tmp_path / "clip.mp4", tag=4))
        (job,) = daemon.wait_for_jobs(1, {"done"})
        assert daemon.process.poll() is None  # the daemon itself carried on
        log = daemon.log()
    assert (folder.root / "markers" / "crashed").exists()
    assert job.attempts == 1
    assert "the worker process died (signal 9, SIGKILL) while restoring clip.mp4; it was restarted" in log
    assert log.count("worker process") >= 2 and log.count("started") >= 2
    assert folder.files("outbox") == ["clip.report.json", "clip.restored.mp4"]


def test_a_transient_engine_error_is_retried_after_a_backoff(tmp_path):
    folder = ServiceFolder(tmp_path / "svfrd", engine="tests.helpers.engines:TransientOnceEngine")
    with Daemon(folder) as daemon:
        folder.drop(write_face_clip(tmp_path / "clip.mp4", tag=5))
        (job,) = daemon.wait_for_jobs(1, {"done"})
        log = daemon.log()
    assert job.attempts == 1 and job.error_message is None
    assert "will retry (attempt 1 of 3 failed): the test engine ran out of (pretend) GPU memory" in log


def test_cancelling_the_running_job_stops_it_and_the_service_carries_on(tmp_path):
    folder = ServiceFolder(tmp_path / "svfrd", engine=SLOW)
    with Daemon(folder, env={"SVFRD_TEST_SECONDS_PER_FRAME": "0.5"}) as daemon:
        folder.drop(write_face_clip(tmp_path / "long.mp4", tag=6, frames=40))
        running = daemon.wait_for_running_stage(MID_RESTORE)
        asked = time.monotonic()
        assert main(["--config", str(folder.config_path), "cancel", str(running.id)]) == 0
        daemon.wait_until("the job to be cancelled",
                          lambda: folder.jobs()[0].state == "cancelled", timeout=15)
        assert time.monotonic() - asked < 8
        assert [n for n in folder.files("outbox")] == []  # partial output removed
        assert (folder.inbox / "long.mp4").is_file()  # the input is left where it was

        folder.drop(write_face_clip(tmp_path / "next.mp4", tag=7, frames=2))
        jobs = daemon.wait_for_jobs(2, {"done", "cancelled"})
    assert [job.state for job in jobs] == ["cancelled", "done"]


def test_a_second_daemon_on_the_same_state_folder_refuses_to_start(tmp_path):
    folder = ServiceFolder(tmp_path / "svfrd")
    with Daemon(folder) as first:
        first.wait_until_serving()
        second = Daemon(folder, log_name="second.log").start()
        assert second.wait_exit(timeout=30) == 3
        assert first.process.poll() is None
    message = second.log()
    assert f"another svfrd daemon (pid={first.pid}" in message
    assert "is already using the state folder" in message


def test_a_full_disk_fails_the_job_as_transient_and_gives_up_after_max_attempts(tmp_path):
    folder = ServiceFolder(tmp_path / "svfrd", service={"min_free_space_mb": 10**9, "max_attempts": 2})
    with Daemon(folder) as daemon:
        folder.drop(write_face_clip(tmp_path / "clip.mp4", tag=8))
        (job,) = daemon.wait_for_jobs(1, {"failed"})
        assert "will retry (attempt 1 of 2 failed): disk full" in daemon.log()
    assert job.error_kind == "transient" and job.attempts == 2
    assert "[service] min_free_space_mb" in job.error_message and "gave up after 2 attempts" in job.error_message
    assert folder.files("failed") == ["clip.error.txt", "clip.mp4"]
    assert folder.files("outbox") == []


def test_an_engine_that_cannot_be_created_stops_the_daemon_with_the_reason(tmp_path):
    folder = ServiceFolder(tmp_path / "svfrd", engine="tests.helpers.engines:NoSuchEngine")
    daemon = Daemon(folder).start()
    assert daemon.wait_exit(timeout=30) == 2
    assert "the worker could not start: [engine] name = 'tests.helpers.engines:NoSuchEngine'" in daemon.log()
    assert "NoSuchEngine" in daemon.log()


def test_a_worker_deaf_to_a_cancel_is_killed_and_the_job_still_ends_cancelled(tmp_path):
    # The engine hangs in a frame without a progress report: the worker cannot notice the cancel by itself.
    folder = ServiceFolder(tmp_path / "svfrd", engine="tests.helpers.engines:StuckEngine",
                           service={"cancel_grace": 0.5})
    with Daemon(folder) as daemon:
        folder.drop(write_face_clip(tmp_path / "stuck.mp4", tag=9, frames=2))
        daemon.wait_until("the engine to hang", lambda: (folder.root / "markers" / "stuck").exists())
        (stuck,) = folder.jobs()
        assert main(["--config", str(folder.config_path), "cancel", str(stuck.id)]) == 0
        daemon.wait_until("the job to be cancelled", lambda: folder.jobs()[0].state == "cancelled", timeout=40)
        assert "did not stop for the cancel within 0.5 s ([service] cancel_grace); killing it" in daemon.log()
        daemon.wait_until("a new worker", lambda: daemon.log().count("ready with the test-stuck engine") == 2)
    assert folder.files("outbox") == []
    assert (folder.inbox / "stuck.mp4").is_file()


# ---------------------------------------------------------------------------------------------------------------
# The whole service killed (power loss), and a misconfigured service: never the input's fault.

SLOW_FRAMES = {"SVFRD_TEST_SECONDS_PER_FRAME": "0.4"}


def kill_service_mid_job(folder: ServiceFolder, log_name: str, killed_before: Job | None = None) -> Job:
    """Start the service, and SIGKILL the daemon and its worker together once the job is mid-restoration in
    this run (the row an earlier killed run left says "running" too, until the new daemon recovers it)."""

    def running_again() -> Job | None:
        jobs = folder.jobs()
        assert not [job.error_message for job in jobs if job.state == "failed"]
        return next((job for job in jobs if job.state == "running" and job.stage in MID_RESTORE
                     and (killed_before is None or job.started_at != killed_before.started_at)), None)

    daemon = Daemon(folder, log_name=log_name, env=SLOW_FRAMES, own_process_group=True).start()
    try:
        running = daemon.wait_until("the job to run", running_again)
        daemon.kill_service()
    finally:
        daemon.stop()
    return running


def test_killing_the_whole_service_mid_job_more_often_than_max_attempts_uses_up_no_attempt(tmp_path):
    folder = ServiceFolder(tmp_path / "svfrd", engine=SLOW, service={"max_attempts": 1})
    folder.drop(write_face_clip(tmp_path / "clip.mp4", tag=10, frames=8))
    killed = kill_service_mid_job(folder, "killed-1.log")
    kill_service_mid_job(folder, "killed-2.log", killed_before=killed)
    with Daemon(folder, log_name="clean.log", env={"SVFRD_TEST_SECONDS_PER_FRAME": "0"}) as daemon:
        (done,) = daemon.wait_for_jobs(1, {"done"})
    assert (done.attempts, done.service_interruptions) == (0, 2)
    report = json.loads(Path(done.report_path).read_text())
    assert report["attempts"] == {"job_failures": 0, "service_interruptions": 2}
    assert folder.files("outbox") == ["clip.report.json", "clip.restored.mp4"]
    assert folder.files("inbox") == []


def test_a_job_the_service_keeps_dying_under_fails_into_failed_with_its_sidecar_mask_and_error_file(tmp_path):
    folder = ServiceFolder(tmp_path / "svfrd", engine=SLOW, service={"max_service_interruptions": 1})
    folder.drop(write_face_clip(tmp_path / "clip.mp4", tag=11, frames=8),
                sidecar='tasks = ["bfr", "inpaint"]\nmask = "clip.mask.png"\n',
                extras={"clip.mask.png": write_mask(tmp_path / "mask.png")})
    kill_service_mid_job(folder, "killed.log")
    with Daemon(folder, log_name="restart.log") as daemon:
        daemon.wait_for_jobs(1, {"failed"})
        # The start-up recovery fails the row first, then files the inputs, writes the note and clears the
        # outbox's temporary files; only then does the daemon serve. Stop it after that.
        daemon.wait_until_serving()
    (job,) = folder.jobs()
    assert "the service stopped once while this job ran" in job.error_message
    assert f"svfrd retry {job.id}" in job.error_message
    assert folder.files("failed") == ["clip.error.txt", "clip.mask.png", "clip.mp4", "clip.toml"]
    assert job.error_message in (folder.folder("failed") / "clip.error.txt").read_text()
    assert Path(job.source_path) == folder.folder("failed") / "clip.mp4"
    assert folder.files("inbox") == [] and folder.files("outbox") == []


def test_a_failure_recorded_just_before_the_service_died_has_its_inputs_filed_at_the_next_start(tmp_path):
    # The crash window between recording a terminal failure and moving its inputs: the row says failed, the
    # video and its sidecar still lie in the inbox, no error file exists.
    folder = ServiceFolder(tmp_path / "svfrd")
    video = folder.drop(write_face_clip(tmp_path / "clip.mp4", tag=14), sidecar="tasks = [0]\n")
    upgrade_database(folder.database_url)
    db = open_database(folder.database_url)
    job = enqueue_job(db, inbox=str(folder.inbox), source_name="clip.mp4", source_path=str(video),
                      sidecar_path=str(folder.inbox / "clip.toml"), tasks={Task.BFR}, options={},
                      content_hash=file_sha256(video), max_attempts=3)
    claim_next_job(db, worker_pid=1)
    fail_job(db, job.id, BadInputError("no face was found in clip.mp4"), retry_backoff=0)
    db.dispose()

    with Daemon(folder) as daemon:
        daemon.wait_until_serving()
        daemon.wait_until("the inputs to be filed", lambda: "clip.error.txt" in folder.files("failed"), timeout=20)
    assert folder.files("inbox") == []
    assert folder.files("failed") == ["clip.error.txt", "clip.mp4", "clip.toml"]
    assert "no face was found in clip.mp4" in (folder.folder("failed") / "clip.error.txt").read_text()
    (row,) = folder.jobs()
    assert (row.id, row.state, Path(row.source_path)) == (job.id, "failed", folder.folder("failed") / "clip.mp4")


def test_a_missing_face_model_stops_the_service_before_it_takes_any_input(tmp_path):
    missing = tmp_path / "models" / "face_landmarker.task"
    folder = ServiceFolder(tmp_path / "svfrd", face_model=missing)
    folder.drop(write_face_clip(tmp_path / "clip.mp4", tag=12))
    daemon = Daemon(folder).start()
    assert daemon.wait_exit(timeout=30) == 2
    log = daemon.log()
    assert f"svfrd cannot start: the face model {missing} is missing; run `svfrd fetch-face-model" in log
    assert "set `[faces] model`" in log
    assert folder.files("inbox") == ["clip.mp4"]
    assert folder.files("failed") == []
    assert not [job for job in folder.jobs() if job.state == "failed"]


def test_a_face_model_deleted_under_the_running_service_stops_it_and_keeps_the_job_queued(tmp_path):
    model = tmp_path / "models" / "face_landmarker.task"
    model.parent.mkdir()
    shutil.copyfile(FACE_MODEL, model)
    folder = ServiceFolder(tmp_path / "svfrd", face_model=model)
    with Daemon(folder) as daemon:
        daemon.wait_until("the worker to be ready", lambda: "ready with the test-invert engine" in daemon.log())
        model.unlink()
        folder.drop(write_face_clip(tmp_path / "clip.mp4", tag=13))
        assert daemon.wait_exit(timeout=30) == 2
    (job,) = folder.jobs()
    assert (job.state, job.attempts) == ("queued", 0)
    assert f"the face model {model} is missing" in daemon.log() and "is back in the queue" in daemon.log()
    assert folder.files("inbox") == ["clip.mp4"] and folder.files("failed") == []
