"""The schema is owned by Alembic: empty and old databases upgrade to a schema equal to the Job model."""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlmodel import SQLModel

import svfrd.jobs.model  # noqa: F401  (registers the jobs table)
from svfrd.jobs.database import current_revision, head_revision, open_database, upgrade_database
from svfrd.jobs.store import claim_next_job, get_job

FIRST_REVISION = "0001"


def schema_differences(url: str) -> list:
    engine = open_database(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, SQLModel.metadata)
    finally:
        engine.dispose()


def test_an_empty_database_is_created_at_head_in_a_new_state_folder(tmp_path):
    url = f"sqlite:///{tmp_path / 'new' / 'state' / 'svfrd.db'}"
    assert current_revision(url) is None
    upgrade_database(url)
    assert current_revision(url) == head_revision(url) != FIRST_REVISION
    assert schema_differences(url) == []


def test_upgrading_twice_changes_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 'svfrd.db'}"
    upgrade_database(url)
    upgrade_database(url)
    assert current_revision(url) == head_revision(url)


def test_migrations_run_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    upgrade_database("sqlite:///relative.db")
    assert (tmp_path / "relative.db").is_file()
    assert os.getcwd() == str(tmp_path)


def test_a_first_revision_database_with_a_job_upgrades_and_the_job_survives(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade_database(url, FIRST_REVISION)
    engine = open_database(url)
    columns = {c["name"] for c in inspect(engine).get_columns("jobs")}
    assert "cancel_requested" not in columns and "frames_done" not in columns
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO jobs (state, inbox, source_name, source_path, tasks, options_json, seed, content_hash,"
                " dedupe_key, attempts, max_attempts, created_at, updated_at) VALUES ('queued', '/in', 'old.mp4',"
                " '/in/old.mp4', '0', '{}', 77, 'abc', 'key', 1, 3, :t, :t)"
            ),
            {"t": created.replace(tzinfo=None)},
        )
    engine.dispose()

    upgrade_database(url)
    assert current_revision(url) == head_revision(url)
    assert schema_differences(url) == []
    engine = open_database(url)
    job = get_job(engine, 1)
    assert (job.source_name, job.attempts, job.created_at) == ("old.mp4", 1, created)
    assert job.cancel_requested is False and job.frames_done == 0 and job.stage is None
    assert claim_next_job(engine, worker_pid=7).id == 1, "the old job is still runnable"
    engine.dispose()


def test_connections_use_wal_full_sync_and_a_busy_timeout(tmp_path):
    url = f"sqlite:///{tmp_path / 'svfrd.db'}"
    upgrade_database(url)
    engine = open_database(url)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_write_transactions_take_the_write_lock_at_begin(tmp_path):
    """BEGIN IMMEDIATE: a second writer waits at BEGIN instead of failing later on lock upgrade."""
    path = tmp_path / "svfrd.db"
    upgrade_database(f"sqlite:///{path}")
    engine = open_database(f"sqlite:///{path}")
    other = sqlite3.connect(path, timeout=0.05, isolation_level=None)
    with engine.begin() as holder:
        holder.exec_driver_sql("SELECT count(*) FROM jobs").scalar()  # only a read, yet the lock is held
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
    other.execute("BEGIN IMMEDIATE")  # free again once the transaction ended
    other.execute("ROLLBACK")
    other.close()
    engine.dispose()
