"""The supervisor acts on the worker's typed messages (they cross a pipe, so they must pickle), and the worker's
JobFinished says truthfully how the job ended."""

from __future__ import annotations

import pickle

import pytest

from svfrd.config import load_config
from svfrd.files.hashing import file_sha256
from svfrd.jobs.database import open_database, upgrade_database
from svfrd.jobs.store import claim_next_job, enqueue_job, get_job
from svfrd.service.messages import (
    JobFinished,
    Outcome,
    RunJob,
    Stop,
    WorkerReady,
    WorkerStartFailed,
)
from svfrd.service.supervisor import EXIT_CONFIG, EXIT_FAILURE, Supervisor
from svfrd.service.worker import JobRunner
from tests.helpers.clock import FakeClock
from tests.helpers.engines import InvertingEngine


@pytest.fixture
def supervisor(tmp_path):
    (tmp_path / "config.toml").write_text('[[inbox]]\npath = "inbox"\n')
    config = load_config(tmp_path / "config.toml")
    upgrade_database(config.service.database_url)
    db = open_database(config.service.database_url)
    supervisor = Supervisor(config, db, clock=FakeClock())
    yield supervisor
    supervisor.wakeup.close()
    db.dispose()


@pytest.mark.parametrize("message", [RunJob(3), Stop(), WorkerReady("classical"), WorkerStartFailed("x", True),
                                     JobFinished(3, Outcome.RETRY)])
def test_messages_survive_the_pipe(message):
    assert pickle.loads(pickle.dumps(message)) == message


def test_a_ready_worker_is_idle_for_jobs_and_resets_the_startup_death_count(supervisor):
    supervisor.worker.startup_deaths = 2
    supervisor._on_worker_message(WorkerReady("classical"))
    assert supervisor.worker.ready and supervisor.worker.engine_name == "classical"
    assert supervisor.worker.startup_deaths == 0 and supervisor.exit_code is None


@pytest.mark.parametrize(("config_problem", "exit_code"), [(True, EXIT_CONFIG), (False, EXIT_FAILURE)])
def test_a_worker_that_cannot_start_stops_the_daemon(supervisor, config_problem, exit_code):
    supervisor._on_worker_message(WorkerStartFailed("the worker could not start: no GPU", config_problem))
    assert supervisor.exit_code == exit_code


def test_a_finished_job_frees_the_worker_and_a_config_error_stops_the_daemon_with_exit_code_2(supervisor):
    supervisor.worker.job = object()
    supervisor._on_worker_message(JobFinished(1, Outcome.FAILED))
    assert supervisor.worker.job is None and supervisor.exit_code is None
    supervisor.worker.job = object()
    supervisor._on_worker_message(JobFinished(1, Outcome.CONFIG_ERROR, "the face model is missing"))
    assert supervisor.worker.job is None and supervisor.exit_code == EXIT_CONFIG


def test_a_job_whose_video_was_replaced_before_it_ran_is_reported_superseded_not_done(supervisor, caplog):
    config, db = supervisor.config, supervisor.db
    video = config.inboxes[0].path / "clip.mp4"
    video.parent.mkdir(parents=True)
    video.write_bytes(b"the first content")
    job = enqueue_job(db, inbox=str(video.parent), source_name="clip.mp4", source_path=str(video), tasks="0",
                      content_hash=file_sha256(video))
    claim_next_job(db, worker_pid=1)
    video.write_bytes(b"other content, written while the job waited")

    with caplog.at_level("INFO"):
        finished = JobRunner(config, db, InvertingEngine(config.engine)).run(job.id)

    assert finished.outcome == Outcome.SUPERSEDED and get_job(db, job.id).state == "cancelled"
    assert "superseded: clip.mp4 was replaced with different content" in caplog.text


class Pipe:
    """The worker's end of the pipe, recording what it sends."""

    def __init__(self):
        self.sent = []

    def send(self, message):
        self.sent.append(message)


@pytest.mark.parametrize(("error", "worker_goes_on"), [
    (RuntimeError("CUDA error: an illegal memory access was encountered"), False),
    (RuntimeError("something else went wrong"), True),
])
def test_a_fatal_gpu_error_retries_the_job_in_a_fresh_worker(tmp_path, monkeypatch, error, worker_goes_on):
    import svfrd.media.pipeline
    from svfrd.service.worker import run_message
    from tests.helpers.paths import FACE_MODEL

    (tmp_path / "config.toml").write_text(f'[[inbox]]\npath = "inbox"\n[faces]\nmodel = "{FACE_MODEL}"\n')
    config = load_config(tmp_path / "config.toml")
    upgrade_database(config.service.database_url)
    db = open_database(config.service.database_url)
    video = config.inboxes[0].path / "clip.mp4"
    video.parent.mkdir(parents=True)
    video.write_bytes(b"content")
    job = enqueue_job(db, inbox=str(video.parent), source_name="clip.mp4", source_path=str(video), tasks="0",
                      content_hash=file_sha256(video))
    claim_next_job(db, worker_pid=1)

    def broken_gpu(*args, **kwargs):
        raise error

    monkeypatch.setattr(svfrd.media.pipeline, "restore_video", broken_gpu)
    pipe = Pipe()
    goes_on = run_message(pipe, JobRunner(config, db, InvertingEngine(config.engine)), RunJob(job.id))

    assert pipe.sent == [JobFinished(job.id, Outcome.RETRY)], "the job is settled before the worker exits"
    assert get_job(db, job.id).state == "queued"
    assert goes_on is worker_goes_on
