"""The job database on PostgreSQL: the driver, the migrations from an empty database, read-only readers and row
locks, against a real throwaway server (tests/helpers/postgres.py)."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text
from sqlalchemy.exc import InternalError

from svfrd.errors import ConfigError
from svfrd.jobs import database
from svfrd.jobs.database import (
    current_revision,
    head_revision,
    open_database,
    open_read_only,
    postgres_url,
    upgrade_database,
)
from svfrd.jobs.store import _locked_job, _session, enqueue_job, get_job, request_cancel
from tests.jobs.test_migrations_upgrade import schema_differences


def new_job(db, name: str = "a.mp4"):
    return enqueue_job(db, inbox="/in", source_name=name, source_path=f"/in/{name}", tasks={0}, content_hash=name)


def test_a_plain_postgresql_url_opens_with_psycopg_3():
    assert postgres_url("postgresql://svfrd@db.example/svfrd").drivername == "postgresql+psycopg"
    assert postgres_url("postgresql+psycopg://svfrd@db.example/svfrd").drivername == "postgresql+psycopg"
    engine = open_database("postgresql://svfrd@db.example/svfrd")
    assert engine.dialect.driver == "psycopg"
    engine.dispose()


def test_a_missing_driver_says_which_extra_to_install(monkeypatch):
    def no_psycopg(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'psycopg'", name="psycopg")

    monkeypatch.setattr(database, "create_engine", no_psycopg)
    with pytest.raises(ConfigError, match=r"pip install 'svfrd\[postgres\]'"):
        open_database("postgresql://svfrd@db.example/svfrd")


def test_migrations_bring_an_empty_database_to_head_and_match_the_model(postgres_db_url):
    assert current_revision(postgres_db_url) is None
    upgrade_database(postgres_db_url)
    upgrade_database(postgres_db_url)  # a second start-up changes nothing
    assert current_revision(postgres_db_url) == head_revision(postgres_db_url)
    assert schema_differences(postgres_db_url) == []


def test_readers_cannot_write(postgres_db_url):
    upgrade_database(postgres_db_url)
    writer = open_database(postgres_db_url)
    job = new_job(writer)
    reader = open_read_only(postgres_db_url)
    try:
        assert get_job(reader, job.id).source_name == "a.mp4"
        with pytest.raises(InternalError, match="read-only transaction"):
            request_cancel(reader, job.id)
    finally:
        reader.dispose()
        writer.dispose()


def test_a_locked_job_waits_for_the_other_writer_to_commit(postgres_db_url):
    """Two read-modify-writes of one row never interleave: the second reads the row only after the first
    committed (SELECT ... FOR UPDATE), so no change is lost."""
    upgrade_database(postgres_db_url)
    db = open_database(postgres_db_url)
    job = new_job(db)
    second_read: list = []
    try:
        with _session(db) as session, session.begin():
            _locked_job(session, job.id).stage = "first"
            reader = threading.Thread(target=lambda: second_read.append(_read_stage_locked(db, job.id)))
            reader.start()
            # The other transaction is blocked on our row lock: the server shows it waiting for a lock.
            _wait_until_a_session_waits_for_a_lock(db)
        reader.join(timeout=30)
        assert second_read == ["first"]
    finally:
        db.dispose()


def _read_stage_locked(db, job_id: int) -> str | None:
    with _session(db) as session, session.begin():
        return _locked_job(session, job_id).stage


def _wait_until_a_session_waits_for_a_lock(db) -> None:
    """Poll pg_stat_activity (no sleep: each query is a round trip to the server) until a session waits."""
    query = text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
    for _ in range(10_000):
        with db.connect() as connection:
            if connection.execute(query).scalar():
                return
    raise AssertionError("the second transaction never waited for the row lock")


def test_rows_keep_utc_times_whatever_the_server_time_zone(postgres_db_url):
    upgrade_database(postgres_db_url)
    db = open_database(postgres_db_url)
    try:
        with db.begin() as connection:
            database_name = connection.execute(text("SELECT current_database()")).scalar()
            connection.execute(text(f"ALTER DATABASE {database_name} SET timezone = 'America/New_York'"))
        db.dispose()  # new connections take the database's time zone
        job = new_job(db)
        with db.connect() as connection:
            assert connection.execute(text("SHOW timezone")).scalar() == "America/New_York"
        assert get_job(db, job.id).created_at == job.created_at
    finally:
        db.dispose()


def test_daemons_starting_at_once_on_an_empty_database_migrate_it_once(postgres_db_url):
    """Several hosts started together: each runs the migrations on start; one migrates, the others wait."""
    errors: list[BaseException] = []

    def start_up() -> None:
        try:
            upgrade_database(postgres_db_url)
        except BaseException as err:  # noqa: BLE001  (reported by the assertion below)
            errors.append(err)

    starters = [threading.Thread(target=start_up) for _ in range(4)]
    for starter in starters:
        starter.start()
    for starter in starters:
        starter.join(timeout=60)
    assert errors == []
    assert current_revision(postgres_db_url) == head_revision(postgres_db_url)
