"""`svfrd doctor` on a PostgreSQL job database: the connection, the server's version and the schema revision,
against a real throwaway server (tests/helpers/postgres.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from svfrd.config import load_config
from svfrd.jobs import database
from svfrd.jobs.database import head_revision, upgrade_database
from svfrd.ops import doctor
from tests.ops.test_doctor import write_site


def database_check(tmp_path: Path, url: str) -> doctor.Check:
    config = write_site(tmp_path, extra=f'database_url = "{url}"')
    return doctor.check_database(load_config(config))


def test_a_current_postgres_database_passes_with_its_server_version(tmp_path, postgres_db_url):
    upgrade_database(postgres_db_url)
    check = database_check(tmp_path, postgres_db_url)
    assert check.ok, check.detail
    assert "(PostgreSQL 1" in check.detail and f"schema at {head_revision(postgres_db_url)} (newest)" in check.detail


def test_a_postgres_database_behind_says_that_svfrd_run_upgrades_it(tmp_path, postgres_db_url):
    upgrade_database(postgres_db_url, "0001")
    check = database_check(tmp_path, postgres_db_url)
    assert (check.ok, check.required) == (False, False)
    assert "is at schema 0001" in check.detail and "`svfrd run` upgrades it" in check.fix


def test_an_unreachable_server_says_what_to_check(tmp_path):
    check = database_check(tmp_path, f"postgresql://svfrd@/svfrd?host={tmp_path / 'no-server'}")
    assert check.blocks_start
    assert check.detail.startswith("cannot open postgresql") and "PostgreSQL server runs" in check.fix


def test_a_missing_driver_is_a_failure_that_says_what_to_install(tmp_path, monkeypatch):
    def no_psycopg(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'psycopg'", name="psycopg")

    monkeypatch.setattr(database, "create_engine", no_psycopg)
    check = database_check(tmp_path, "postgresql://svfrd@db.example/svfrd")
    assert check.blocks_start and "pip install 'svfrd[postgres]'" in check.detail


@pytest.mark.parametrize(("shown", "number", "refused"), [("9.6.24", 90624, True), ("11.22", 110022, True),
                                                           ("12.0", 120000, False), ("17.2", 170002, False)])
def test_servers_older_than_postgresql_12_are_refused(shown, number, refused):
    problem = doctor.postgres_version_problem(shown, number)
    assert (problem is not None) == refused
    if refused:
        assert f"PostgreSQL {shown}" in problem and "12 or newer" in problem


def test_status_the_status_view_and_doctor_read_a_postgres_queue_in_read_only_sessions(tmp_path, postgres_db_url,
                                                                                       capsys):
    """What `svfrd status`, the status view and doctor show of a shared PostgreSQL queue: each running job's
    host, device and worker, read through the read-only sessions they use (a write there would fail)."""
    from svfrd.cli import main
    from svfrd.jobs.database import open_database, open_read_only
    from svfrd.jobs.store import claim_next_job, enqueue_job
    from svfrd.ops.status_view import read_snapshot

    upgrade_database(postgres_db_url)
    db = open_database(postgres_db_url)
    running = enqueue_job(db, inbox="/in", source_name="a.mp4", source_path="/in/a.mp4", tasks="0",
                          content_hash="a")
    enqueue_job(db, inbox="/in", source_name="b.mp4", source_path="/in/b.mp4", tasks="0", content_hash="b")
    claim_next_job(db, 4321, host="studio-2:/var/lib/svfrd", device="cuda:1")
    db.dispose()
    config = write_site(tmp_path, extra=f'database_url = "{postgres_db_url}"')

    assert main(["--config", str(config), "status"]) == 0
    out = capsys.readouterr().out
    assert "studio-2:/var/lib/svfrd" in out and "cuda:1" in out and "b.mp4" in out

    reader = open_read_only(postgres_db_url)
    try:
        snapshot = read_snapshot(reader)
    finally:
        reader.dispose()
    assert [job.id for job in snapshot.running] == [running.id] and len(snapshot.queued) == 1
    assert snapshot.running[0].claim_host == "studio-2:/var/lib/svfrd"

    workers = doctor.check_workers(load_config(config))
    assert workers.ok and f"job {running.id} on studio-2:/var/lib/svfrd, cuda:1, worker 4321" in workers.detail


def password_file_check(tmp_path: Path, url: str, stat_path=os.stat) -> list[doctor.Check]:
    return doctor.check_database_password_file(load_config(write_site(tmp_path, extra=f'database_url = "{url}"')),
                                               stat_path)


def test_a_missing_password_file_is_a_warning_that_says_how_to_make_it(tmp_path):
    [check] = password_file_check(tmp_path, "postgresql://svfrd@db.example/svfrd")
    assert (check.ok, check.required) == (False, False)
    assert str(tmp_path / "state" / "pgpass") in check.detail and "PGPASSFILE" in check.detail
    assert f"sudo install -m 0600 -o svfrd -g svfrd /dev/null {tmp_path / 'state' / 'pgpass'}" in check.fix


def test_a_password_file_others_may_read_is_a_warning_as_libpq_ignores_it(tmp_path):
    (tmp_path / "state").mkdir()
    password_file = tmp_path / "state" / "pgpass"
    password_file.write_text("db.example:5432:svfrd:svfrd:secret\n")
    password_file.chmod(0o640)
    [check] = password_file_check(tmp_path, "postgresql://svfrd@db.example/svfrd")
    assert (check.ok, check.required) == (False, False)
    assert "mode 0640" in check.detail and "ignores" in check.detail
    assert check.fix == f"chmod 0600 {password_file}"

    password_file.chmod(0o600)
    service_user_owns = lambda path: replace_owner(os.stat(path), 990)  # noqa: E731
    [check] = password_file_check(tmp_path, "postgresql://svfrd@db.example/svfrd", service_user_owns)
    assert check.ok and str(password_file) in check.detail

    root_owns = lambda path: replace_owner(os.stat(path), 0)  # noqa: E731
    [check] = password_file_check(tmp_path, "postgresql://svfrd@db.example/svfrd", root_owns)
    assert not check.ok and "root" in check.detail and check.fix == f"sudo chown svfrd:svfrd {password_file}"


def replace_owner(st: os.stat_result, uid: int) -> os.stat_result:
    fields = list(st)
    fields[stat.ST_UID] = uid
    return os.stat_result(fields)


@pytest.mark.parametrize("url", ["postgresql://svfrd:secret@db.example/svfrd", "sqlite:///state/jobs.db"])
def test_no_password_file_is_asked_for_when_the_url_needs_none(tmp_path, url):
    assert password_file_check(tmp_path, url) == []
