"""A migrated job database for the store's tests: each test runs on a SQLite file in a temporary folder and on
an empty PostgreSQL database of a throwaway server (tests/helpers/postgres.py)."""

from __future__ import annotations

import pytest

from svfrd.jobs.database import open_database, upgrade_database


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_db_url")
    else:
        url = f"sqlite:///{tmp_path / 'state' / 'svfrd.db'}"
    upgrade_database(url)
    return url


@pytest.fixture
def db(db_url):
    engine = open_database(db_url)
    yield engine
    engine.dispose()
