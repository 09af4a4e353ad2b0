"""`[engine] devices = ["cpu", "cpu"]`: a real daemon with two worker processes runs two jobs at once, and a
worker killed mid-job costs only its own job (retried), never the other worker's."""

from __future__ import annotations

import os
import signal

from tests.helpers.engines import SLOW_SECONDS_ENV
from tests.helpers.service import Daemon, ServiceFolder, write_face_clip

FRAMES = 6


def test_two_cpu_workers_run_two_jobs_at_once_and_a_killed_worker_costs_only_its_own_job(tmp_path):
    folder = ServiceFolder(tmp_path / "svfrd", engine="tests.helpers.engines:SlowEngine", devices=["cpu", "cpu"])
    clips = [write_face_clip(tmp_path / f"clip{n}.mp4", tag=n, frames=FRAMES) for n in range(2)]
    with Daemon(folder, env={SLOW_SECONDS_ENV: "0.7"}) as daemon:
        daemon.wait_until("both workers to be ready", lambda: daemon.log().count("ready with the test-slow") == 2)
        for clip in clips:
            folder.drop(clip)

        def both_restoring():
            running = [job for job in folder.jobs() if job.state == "running" and job.stage == "restore"]
            return running if len(running) == 2 else None

        # One read of the table sees both jobs running, each under its own worker and claim: they overlap.
        victim, other = daemon.wait_until("two jobs restoring at once", both_restoring, interval=0.1)
        assert victim.worker_pid != other.worker_pid and victim.claim_token != other.claim_token
        assert victim.claim_device == other.claim_device == "cpu" and victim.claim_host == other.claim_host

        os.kill(victim.worker_pid, signal.SIGKILL)
        jobs = {job.id: job for job in daemon.wait_for_jobs(2, {"done"}, timeout=120)}

    assert jobs[victim.id].attempts == 1, "retried after its worker died"
    assert jobs[other.id].attempts == 0, "the other job never noticed"
    log = daemon.log()
    assert f"job {victim.id}: the worker process died (signal 9, SIGKILL)" in log
    assert f"job {other.id}: the worker process died" not in log
    assert sorted(name for name in folder.files("outbox") if name.endswith(".restored.mp4")) == [
        "clip0.restored.mp4", "clip1.restored.mp4"]
