"""Suite-wide settings. Area fixtures live in each area's test files and in tests/helpers/."""

import os

# Two cores are shared by the whole suite; keep each library from spawning a thread per core.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

# A throwaway PostgreSQL server (session) and an empty database per test: tests/helpers/postgres.py.
from tests.helpers.postgres import postgres_cluster, postgres_db_url  # noqa: E402, F401
