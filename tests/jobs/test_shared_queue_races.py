"""Check-then-write steps that several hosts run on one database at the same instant (docs/architecture.md,
"Workers, claims and leases"): intake's "this file is no job's yet, queue it" and a plan's "these final names are
no other job's, record them". On PostgreSQL each is serialised by an advisory lock held by its transaction; the
race tests hold that transaction open in one thread, start the other host's in another, and see it wait."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from svfrd.domain import Task
from svfrd.jobs.database import open_database, upgrade_database
from svfrd.jobs.store import (
    PLANNING_LOCK_KEY,
    NameTaken,
    _locked_job,
    _serialise,
    _session,
    claim_next_job,
    enqueue_input_unless_owned,
    list_jobs,
    record_planned_results,
)
from tests.jobs.test_store import new_job

OWNING_STATES = ("queued", "running", "failed", "cancelled")
WAIT = 30.0  # seconds a thread may take before the test fails (never reached when it passes)


def queue_input(db, still_there=lambda: True, path="/in/a.mp4"):
    return enqueue_input_unless_owned(db, OWNING_STATES, still_there, inbox="/in", source_name="a.mp4",
                                      source_path=path, tasks={Task.BFR}, content_hash="c1")


def test_a_file_that_a_job_owns_or_that_is_gone_is_not_queued_again(db):
    job, earlier = queue_input(db)
    assert job.source_path == "/in/a.mp4" and earlier is None
    assert queue_input(db) is None, "the queued job owns the file"
    assert queue_input(db, still_there=lambda: False, path="/in/b.mp4") is None, "moved away meanwhile"
    assert [j.source_path for j in list_jobs(db)] == ["/in/a.mp4"]


@pytest.fixture
def pg(postgres_db_url):
    upgrade_database(postgres_db_url)
    db = open_database(postgres_db_url)
    yield db
    db.dispose()


def test_two_hosts_queueing_one_new_file_at_once_make_one_job(pg):
    inside, release = threading.Event(), threading.Event()

    def first_host_finds_it_there() -> bool:
        inside.set()  # past its check of the rows, its insert not yet committed
        assert release.wait(WAIT)
        return True

    outcomes: dict[str, object] = {}
    first = threading.Thread(target=lambda: outcomes.update(first=queue_input(pg, first_host_finds_it_there)))
    second = threading.Thread(target=lambda: outcomes.update(second=queue_input(pg)))
    first.start()
    assert inside.wait(WAIT)
    second.start()
    # The second host must wait for the first one's transaction; without the lock it would queue a second job.
    waits = _a_session_waits_for_a_lock_or(pg, second)
    release.set()
    first.join(WAIT), second.join(WAIT)
    assert waits, "the second host did not wait for the first one's check and insert"
    assert outcomes["first"] is not None and outcomes["second"] is None
    assert len(list_jobs(pg)) == 1


def test_two_hosts_planning_one_final_name_at_once_get_different_names(pg):
    first, second = new_job(pg, "a.mp4", "c1"), new_job(pg, "trip/a.mp4", "c2")
    claim_next_job(pg, 1, host="host-a")
    second_token = claim_next_job(pg, 2, host="host-b").claim_token
    outcome: list[object] = []

    def second_host_plans() -> None:
        try:
            outcome.append(record_planned_results(pg, second.id, output_path="/out/a.restored.mp4",
                                                  report_path="/out/a.report.json", frames=4,
                                                  claim_token=second_token))
        except NameTaken as err:
            outcome.append(err)

    planner = threading.Thread(target=second_host_plans)
    # The first host's plan, held open as record_planned_results holds it: the lock, then its names.
    with _session(pg) as session, session.begin():
        _serialise(session, PLANNING_LOCK_KEY)
        _locked_job(session, first.id).output_path = "/out/a.restored.mp4"
        session.flush()
        planner.start()
        waits = _a_session_waits_for_a_lock_or(pg, planner)
    planner.join(WAIT)
    assert waits, "the second plan did not wait for the first one"
    assert len(outcome) == 1 and isinstance(outcome[0], NameTaken), "the name was the first host's"


def _a_session_waits_for_a_lock_or(db, thread: threading.Thread) -> bool:
    """Poll the server (each query a round trip, no sleep) until a session waits for a lock: True; or until
    `thread` has finished without waiting: False."""
    query = text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
    for _ in range(20_000):
        with db.connect() as connection:
            if connection.execute(query).scalar():
                return True
        if not thread.is_alive():
            return False
    raise AssertionError("neither waited nor finished")
