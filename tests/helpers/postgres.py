"""A throwaway PostgreSQL server for the tests: one cluster per test session, one fresh database per test.

The cluster lives in a temporary folder and listens only on a unix socket in that folder (no TCP port, so
parallel sessions never collide). initdb refuses to run as root, and CI runs the suite as root: then the server
runs as the unprivileged system user `svfrd-pgtest` (created if missing) through `runuser`. The test process
itself connects as the database superuser `postgres` over the socket (trust authentication, only local).

Fixtures (registered in tests/conftest.py):
- `postgres_cluster` (session): the running `PostgresCluster`;
- `postgres_db_url` (function): the URL of an empty database made for this test, dropped after it.

When PostgreSQL or psycopg is missing the fixtures skip with what to install; scripts/run-tests installs
Debian's `postgresql` as root where initdb is missing.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

#: The unprivileged user that runs the server when the tests run as root (initdb refuses root).
SERVER_USER = "svfrd-pgtest"

#: Durability is worthless for a throwaway cluster; these make it start and commit quickly and keep it small.
FAST_SERVER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "100",
}


def find_postgres_bin() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres: from PATH, else Debian's /usr/lib/postgresql/N/bin
    (newest first; Debian keeps the server binaries off PATH)."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_of_bin_dir, reverse=True)
    candidates += [Path(folder) for folder in versions]
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _version_of_bin_dir(folder: str) -> int:
    name = Path(folder).parent.name
    return int(name) if name.isdigit() else 0


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _ensure_server_user() -> None:
    if subprocess.run(["id", "-u", SERVER_USER], capture_output=True).returncode == 0:
        return
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
        check=True,
        capture_output=True,
    )


@dataclass
class PostgresCluster:
    """A PostgreSQL cluster in `root` (data/ and the socket folder), run by `bin_dir`'s binaries."""

    bin_dir: Path
    root: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL for `database` over the unix socket (the plain scheme: svfrd maps it to psycopg)."""
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    def start(self) -> None:
        self._run_as_server_user(
            [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "-A", "trust",
             "-E", "UTF8", "--locale=C", "--no-sync"]
        )
        options = " ".join(f"-c {name}={value}" for name, value in FAST_SERVER_SETTINGS.items())
        self._run_as_server_user(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60",
             "-o", f"-k {self.socket_dir} -h '' {options}", "start"]
        )

    def stop(self) -> None:
        # Immediate: the data is thrown away, so there is nothing to flush.
        self._run_as_server_user(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"], check=False
        )

    def execute(self, sql: str) -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE cannot run inside one)."""
        import psycopg

        with psycopg.connect(host=str(self.socket_dir), user="postgres", dbname="postgres", autocommit=True) as conn:
            conn.execute(sql)

    def _run_as_server_user(self, command: list[str], *, check: bool = True) -> None:
        if _running_as_root():
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True)
        if check and result.returncode != 0:
            log = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
            raise RuntimeError(
                f"the test PostgreSQL server failed: {' '.join(command)} exited {result.returncode}\n"
                f"{result.stdout}{result.stderr}{log}"
            )


def start_throwaway_cluster() -> PostgresCluster:
    """A started cluster in a new folder under the system temp folder (not pytest's tmp_path: that is private
    to root, and the server user must be able to enter it)."""
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; scripts/run-tests does it as root)")
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[test]')")
    root = Path(tempfile.mkdtemp(prefix="svfrd-pg-"))
    if _running_as_root():
        _ensure_server_user()
        shutil.chown(root, user=SERVER_USER, group=SERVER_USER)
    cluster = PostgresCluster(bin_dir=bin_dir, root=root)
    try:
        cluster.start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return cluster


@pytest.fixture(scope="session")
def postgres_cluster():
    cluster = start_throwaway_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


_database_numbers = itertools.count(1)


@pytest.fixture
def postgres_db_url(postgres_cluster):
    """The URL of an empty database of its own for one test (no schema: call upgrade_database first)."""
    name = f"test_{next(_database_numbers)}"
    postgres_cluster.execute(f"CREATE DATABASE {name}")
    yield postgres_cluster.url(name)
    # FORCE: a test that failed may leave a connection open (PostgreSQL 13+).
    postgres_cluster.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
