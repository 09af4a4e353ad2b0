"""The supervisor renews the leases of its running jobs every [service] heartbeat (not the busy worker: a long
GPU kernel cannot starve the renewal) and requeues the jobs of any daemon whose leases expired. Fake clock."""

from __future__ import annotations

from datetime import timedelta

import pytest

from svfrd.config import load_config
from svfrd.jobs.database import open_database, upgrade_database
from svfrd.jobs.store import claim_next_job, enqueue_job, get_job
from svfrd.service.supervisor import Supervisor
from tests.helpers.clock import FakeClock


@pytest.fixture
def supervisor(tmp_path):
    (tmp_path / "config.toml").write_text('[service]\nlease = 30\nheartbeat = 10\n[[inbox]]\npath = "inbox"\n'
                                          '[engine]\ndevices = ["cpu", "cpu"]\n')
    config = load_config(tmp_path / "config.toml")
    upgrade_database(config.service.database_url)
    db = open_database(config.service.database_url)
    supervisor = Supervisor(config, db, clock=FakeClock())
    yield supervisor
    supervisor.wakeup.close()
    db.dispose()


def queue(db, name):
    return enqueue_job(db, inbox="/in", source_name=name, source_path=f"/in/{name}", tasks="0", content_hash=name)


def test_one_worker_per_device_each_named_by_its_device(supervisor):
    assert [worker.device for worker in supervisor.workers] == ["cpu", "cpu"]
    assert all(worker.config.engine.device == "cpu" for worker in supervisor.workers)


def test_the_heartbeat_renews_this_daemons_leases_and_another_daemons_expired_job_goes_back(supervisor):
    clock, db = supervisor.clock, supervisor.db
    mine, theirs = queue(db, "a.mp4"), queue(db, "b.mp4")
    supervisor.worker.job = claim_next_job(db, 1, now=clock.now(), host=supervisor.host, lease_seconds=30)
    claim_next_job(db, 2, now=clock.now(), host="elsewhere:/state", lease_seconds=30)

    for _ in range(6):  # a minute of heartbeats: every 10 s, on the clock
        assert supervisor.heartbeat.due() and supervisor.lease_check.due()
        supervisor._renew_leases()
        supervisor._requeue_expired_leases()
        assert not supervisor.heartbeat.due()
        assert supervisor._seconds_to_sleep() <= 10.0
        clock.advance(10.0)

    assert get_job(db, mine.id).state == "running", "renewed, never expired"
    assert get_job(db, mine.id).lease_expires_at == clock.now() - timedelta(seconds=10) + timedelta(seconds=30)
    back = get_job(db, theirs.id)
    assert back.state == "queued" and back.service_interruptions == 1, "the silent daemon's job went back"


def test_a_daemon_that_finds_its_lease_lost_stops_that_worker_without_recording_anything(supervisor, caplog):
    clock, db = supervisor.clock, supervisor.db
    job = queue(db, "a.mp4")
    supervisor.worker.job = claim_next_job(db, 1, now=clock.now(), host=supervisor.host, lease_seconds=30)
    clock.advance(31.0)  # this daemon was away longer than the lease: another daemon requeued and took the job
    supervisor._requeue_expired_leases()
    newer = claim_next_job(db, 2, now=clock.now(), host="elsewhere:/state", lease_seconds=30)
    killed, deaths = [], []
    supervisor.worker.kill = lambda: killed.append(True)
    supervisor._on_worker_death = lambda worker: deaths.append(worker)

    with caplog.at_level("WARNING"):
        supervisor._renew_leases()

    assert killed and deaths == [supervisor.worker]
    assert "this daemon lost the job's lease" in caplog.text
    assert get_job(db, job.id).claim_token == newer.claim_token, "the newer claim is untouched"
