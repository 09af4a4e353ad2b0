"""End to end: the daemon survives what long-running services meet — kill -9, SIGTERM mid-job, a worker that
dies, an engine failing for a moment, a user cancelling the running job, and a second daemon started by mistake.
"""

from __future__ import annotations

import os
import signal
import time

from svfrd.cli import main
from tests.helpers.service import Daemon, ServiceFolder, write_face_clip

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
    assert done.attempts == 1  # the interrupted run counts as one failed attempt
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
        folder.drop(write_face_clip(tmp_path / "clip.mp4", tag=3, frames=8))
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
    folder = ServiceFolder(tmp_path / "svfrd", engine=SLOW)
    # One frame takes a minute without a progress report: the worker cannot notice the cancel by itself.
    with Daemon(folder, env={"SVFRD_TEST_SECONDS_PER_FRAME": "60"}) as daemon:
        folder.drop(write_face_clip(tmp_path / "stuck.mp4", tag=9, frames=2))
        stuck = daemon.wait_for_running_stage({"faces"})
        time.sleep(1.0)  # into the engine's long frame
        assert main(["--config", str(folder.config_path), "cancel", str(stuck.id)]) == 0
        daemon.wait_until("the job to be cancelled", lambda: folder.jobs()[0].state == "cancelled", timeout=40)
        assert "did not stop for the cancel within 15 s; killing it" in daemon.log()
        daemon.wait_until("a new worker", lambda: daemon.log().count("ready with the test-slow engine") == 2)
    assert folder.files("outbox") == []
    assert (folder.inbox / "stuck.mp4").is_file()
