"""A migrated job database in a temporary folder, for the store's tests."""

from __future__ import annotations

import pytest

from svfrd.jobs.database import open_database, upgrade_database


@pytest.fixture
def db_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'state' / 'svfrd.db'}"
    upgrade_database(url)
    return url


@pytest.fixture
def db(db_url):
    engine = open_database(db_url)
    yield engine
    engine.dispose()
