"""Two real daemons, as on two workstations: each its own config and state folder, one PostgreSQL database, one
shared inbox and outbox (docs/architecture.md, "Workers, claims and leases").

- 20 videos give 20 outputs, each exactly once, whichever daemon scans or runs them;
- a daemon killed with SIGKILL mid-job: the other finishes that job once its lease has expired, not before;
- a daemon and its worker paused with SIGSTOP past the lease: the other takes the job over and publishes it, and
  the paused worker, continued, publishes nothing (fencing) and removes its own temporary files.

Leases are short here (3 s, heartbeat 1 s) so that a lost host's job comes back within seconds.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from svfrd.files.names import CLAIM_TAG_CHARS
from svfrd.jobs.model import Job, utcnow
from tests.helpers.engines import SLOW_SECONDS_ENV
from tests.helpers.service import Daemon, ServiceFolder, write_face_clip

SHORT_LEASE = {"lease": 3.0, "heartbeat": 1.0}
SLOW_ENGINE = "tests.helpers.engines:SlowEngine"
FRAMES = 8  # at 0.4 s each in the slow engine: a job restores for about 3 s


def two_hosts(tmp_path: Path, database: str, engine: str, service: dict | None = None):
    """Two installations sharing the first one's inbox, outbox, done and failed, each with its own state."""
    first = ServiceFolder(tmp_path / "host-a", engine=engine, database=database, service=dict(service or {}))
    second = ServiceFolder(tmp_path / "host-b", engine=engine, database=database, service=dict(service or {}),
                           shares_folders_of=first)
    return first, second


def start_both(first: ServiceFolder, second: ServiceFolder, env: dict[str, str] | None = None,
               own_process_group: bool = False) -> tuple[Daemon, Daemon]:
    daemons = tuple(Daemon(folder, env=env, own_process_group=own_process_group).start()
                    for folder in (first, second))
    for daemon in daemons:
        daemon.wait_until("its worker to be ready", lambda d=daemon: "ready with the" in d.log(), timeout=90)
    return daemons


def stop_all(*daemons: Daemon) -> list[int | None]:
    """SIGTERM each (continued first, should a test have left it paused); their exit codes."""
    codes = []
    for daemon in daemons:
        if daemon.own_process_group and daemon.process is not None and daemon.process.poll() is None:
            os.killpg(daemon.pid, signal.SIGCONT)
        codes.append(daemon.stop())
    return codes


def host_of(daemon: Daemon) -> str:
    """The daemon's `claim_host` ends with its state folder (svfrd.service.recovery.this_daemon)."""
    return str(daemon.folder.root / "state")


def claimed_by(job: Job, daemon: Daemon) -> bool:
    return job.claim_host is not None and job.claim_host.endswith(":" + host_of(daemon))


def results_in(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(".restored.mp4"))


def temps_of_attempt(outbox: Path, job_id: int, token: str) -> list[str]:
    """Temporary results of one attempt: their names carry the job and its claim token (svfrd.service.results)."""
    tag = f"job{job_id}-{token[:CLAIM_TAG_CHARS]}"
    return sorted(name for name in os.listdir(outbox) if tag in name)


def mid_restoration(daemon: Daemon, folder: ServiceFolder) -> Job:
    """Wait until a job is between its first restored frame and its last: the slow engine's frames are being
    encoded into the attempt's output segments ("encode"; the stages overlap, docs/architecture.md section 6;
    the segments lie in the claiming daemon's state folder, docs/architecture.md, "Resume")."""
    return daemon.wait_until("a job restoring", lambda: next(
        (j for j in folder.jobs() if j.state == "running" and j.stage in ("encode", "restore")
         and (j.frames_done or 0) >= 1), None), interval=0.05)


def job_row(folder: ServiceFolder, job_id: int) -> Job | None:
    return next((job for job in folder.jobs() if job.id == job_id), None)


def wait_for_row(daemon: Daemon, what: str, job_id: int, holds, timeout: float = 60.0) -> Job:
    """Wait (failing with `daemon`'s log) until the job's row satisfies `holds(row)`; the row."""

    def row_that_holds() -> Job | None:
        row = job_row(daemon.folder, job_id)
        return row if row is not None and holds(row) else None

    return daemon.wait_until(what, row_that_holds, timeout)


# ---------------------------------------------------------------------------------------------------------------
# 1. Throughput and exactly once.

VIDEOS = 20


def test_two_daemons_on_one_database_and_one_inbox_make_one_job_and_one_output_per_video(
        tmp_path, postgres_db_url):
    first, second = two_hosts(tmp_path, postgres_db_url, engine="classical")
    clips = [write_face_clip(tmp_path / f"clip{n:02d}.mp4", tag=n, frames=3) for n in range(VIDEOS)]
    a, b = start_both(first, second)
    try:
        started = time.monotonic()
        for clip in clips:
            first.drop(clip)

        def all_done() -> list[Job] | None:
            assert b.process.poll() is None, f"the second daemon exited\n{b.log()[-4000:]}"
            jobs = first.jobs()
            return jobs if len(jobs) >= VIDEOS and all(job.state == "done" for job in jobs) else None

        jobs = a.wait_until(f"{VIDEOS} jobs done", all_done, timeout=180)
        seconds = time.monotonic() - started
    finally:
        stop_all(a, b)

    jobs = first.jobs()
    names = [clip.name for clip in clips]
    assert sorted(job.source_name for job in jobs) == names, "one job per video, whichever daemon scanned it"
    assert all(job.state == "done" and job.attempts == 0 and job.service_interruptions == 0 for job in jobs)
    assert {host for job in jobs for host in (a, b) if claimed_by(job, host)} == {a, b}, "both daemons ran jobs"
    expected = [name.replace(".mp4", ".restored.mp4") for name in names]
    assert results_in(first.outbox) == expected, "each published once, under its own name (no clip-2)"
    assert sorted(os.listdir(first.inbox)) == [], "every input left the inbox"
    assert sorted(name for name in os.listdir(first.folder("done")) if name.endswith(".mp4")) == names
    assert os.listdir(first.folder("failed")) == []
    for daemon in (a, b):
        assert "Traceback" not in daemon.log(), daemon.log()[-4000:]
    per_minute = VIDEOS / seconds * 60
    report = (f"two daemons, PostgreSQL, classical engine on the CPU: {VIDEOS} videos of 3 frames at 160x160 in "
              f"{seconds:.1f} s = {per_minute:.1f} videos/min")
    print(report)
    (tmp_path / "throughput.txt").write_text(report + "\n")


# ---------------------------------------------------------------------------------------------------------------
# 2. A host dies: its job waits for the lease, then runs elsewhere.


def test_a_job_of_a_killed_daemon_is_finished_by_the_other_once_its_lease_expired_and_not_before(
        tmp_path, postgres_db_url):
    first, second = two_hosts(tmp_path, postgres_db_url, engine=SLOW_ENGINE, service=SHORT_LEASE)
    clip = write_face_clip(tmp_path / "clip.mp4", frames=FRAMES)
    a, b = start_both(first, second, env={SLOW_SECONDS_ENV: "0.4"}, own_process_group=True)
    try:
        first.drop(clip)
        job = mid_restoration(a, first)
        victim, survivor = (a, b) if claimed_by(job, a) else (b, a)
        victim.kill_service()  # the daemon and its worker at once, as a power loss
        dead = job_row(first, job.id)
        assert dead.state == "running" and claimed_by(dead, victim), "nothing changed the row at the kill"

        # Every read that ended before the lease's end must show the job still held by the dead daemon.
        reads: list[tuple[Job, object]] = []

        def taken_over() -> Job | None:
            row = job_row(first, job.id)
            reads.append((row, utcnow()))
            return row if row.state == "running" and not claimed_by(row, victim) else None

        survivor.wait_until("the job to go to the surviving daemon", taken_over, timeout=30, interval=0.1)
        done = wait_for_row(survivor, "the job to finish", job.id, lambda row: row.state == "done")
    finally:
        stop_all(a, b)

    before_the_end = [row for row, read_by in reads if read_by < dead.lease_expires_at]
    assert before_the_end, "the kill came well before the lease's end (lease 3 s, renewed every second)"
    assert all(row.state == "running" and row.claim_token == dead.claim_token for row in before_the_end)
    assert done.started_at >= dead.lease_expires_at, "claimed again only after the lease expired"
    assert claimed_by(done, survivor) and done.service_interruptions == 1
    assert results_in(first.outbox) == ["clip.restored.mp4"], "published once"
    assert [name for name in os.listdir(first.outbox) if name.startswith(".")] == [], "the dead attempt's temps too"
    assert os.listdir(first.inbox) == [] and os.listdir(first.folder("done")) == ["clip.mp4"]
    assert f"job {job.id}: back in the queue: its lease expired" in survivor.log()


# ---------------------------------------------------------------------------------------------------------------
# 3. A paused host comes back after its job was taken over: fencing.


def test_a_paused_worker_whose_lease_expired_publishes_nothing_when_continued(tmp_path, postgres_db_url):
    first, second = two_hosts(tmp_path, postgres_db_url, engine=SLOW_ENGINE, service=SHORT_LEASE)
    clip = write_face_clip(tmp_path / "clip.mp4", frames=FRAMES)
    a, b = start_both(first, second, env={SLOW_SECONDS_ENV: "0.4"}, own_process_group=True)
    try:
        first.drop(clip)
        job = mid_restoration(a, first)
        paused, other = (a, b) if claimed_by(job, a) else (b, a)
        os.killpg(paused.pid, signal.SIGSTOP)  # the daemon and its worker: no heartbeat renews the lease

        wait_for_row(other, "the other daemon to finish the job", job.id,
                     lambda row: row.state == "done" and claimed_by(row, other))
        assert results_in(first.outbox) == ["clip.restored.mp4"]

        # The worker wakes first (its daemon still asleep, so nothing kills it for it): it must find out itself.
        os.kill(job.worker_pid, signal.SIGCONT)
        paused.wait_until("the continued worker to give up", lambda: f"job {job.id}: stopped without publishing"
                          in paused.log(), timeout=30, while_alive=False)
        os.kill(paused.pid, signal.SIGCONT)
    finally:
        codes = stop_all(a, b)

    assert codes == [0, 0], "both daemons stopped cleanly: the paused one went on after the lost claim"
    assert results_in(first.outbox) == ["clip.restored.mp4"], "the stale worker published nothing"
    assert temps_of_attempt(first.outbox, job.id, job.claim_token) == [], "its temporary files are removed"
    assert [name for name in os.listdir(first.outbox) if name.startswith(".")] == []
    assert job_row(first, job.id).state == "done" and claimed_by(job_row(first, job.id), other)
    log = paused.log()
    assert f"job {job.id}: stopped without publishing: job {job.id} is no longer this worker's: its lease" in log
    assert "unexpected error" not in log and "Traceback" not in log, "a lost claim is no error of the job's"
    assert os.listdir(first.folder("done")) == ["clip.mp4"]
