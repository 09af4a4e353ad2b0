"""Opening the job database and upgrading its schema.

SQLite is the default store, shared by the daemon, its worker process, the CLI and the status view. Every
connection gets WAL (readers never block the writer), a busy timeout (writers queue instead of failing),
`synchronous=FULL` (a finished job stays finished after a power cut) and foreign keys. Write transactions start
with `BEGIN IMMEDIATE` so two processes never both read-then-write and then fail on lock upgrade.

PostgreSQL is the store for several hosts sharing one queue (docs/architecture.md): `postgresql://` URLs open
with psycopg 3 (the `svfrd[postgres]` extra), a connection is tested before each use (a daemon outlives server
restarts and idle timeouts) and readers open their sessions read-only. Row locks (`SELECT ... FOR UPDATE`, and
`SKIP LOCKED` for claims) do there what BEGIN IMMEDIATE does for SQLite.

The schema belongs to Alembic (`migrations/`, shipped inside the package); `upgrade_database` runs it
programmatically with a configuration built here, so it works from any working directory and from a plain
(non-editable) install, with no alembic.ini. The same migrations run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

from svfrd.errors import ConfigError

BUSY_TIMEOUT_MS = 30_000

#: The one PostgreSQL driver svfrd supports (psycopg 3); a plain `postgresql://` URL is mapped to it.
POSTGRES_DRIVER = "psycopg"

#: Makes every transaction of a reader's connection read-only: the server refuses any write.
POSTGRES_READ_ONLY_OPTIONS = "-c default_transaction_read_only=on"

#: Filesystem types (as /proc/self/mountinfo names them) that other hosts can share. SQLite's WAL keeps its index
#: in shared memory that only processes of one host see, and file locks over these are unreliable: the database
#: corrupts (docs/architecture.md). PostgreSQL is the store for several hosts.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre", "gpfs", "beegfs",
    "fuse.sshfs", "sshfs", "fuse.glusterfs", "fuse.cephfs", "fuse.s3fs", "fuse.rclone", "fuse.gcsfuse",
})

POSTGRES_DRIVER_MISSING = (
    "database_url names a PostgreSQL database, but its driver (psycopg 3) is not installed; "
    "install it with: pip install 'svfrd[postgres]'"
)

#: The Alembic scripts ship inside the package, so a plain (non-editable) install can migrate.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def open_database(
    url: str, *, read_only: bool = False, filesystem_type: Callable[[Path], str | None] | None = None
) -> Engine:
    """An engine for `url`. For SQLite: refuses a file on a network filesystem, creates the file's folder, sets
    the pragmas on every connection and starts transactions with BEGIN IMMEDIATE (plain deferred BEGIN when
    `read_only`, for the status view). For PostgreSQL: psycopg 3, connections checked before use, and
    read-only sessions when `read_only`. `filesystem_type` replaces the mount table lookup (for tests)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return _open_postgres(parsed, read_only=read_only)
    refuse_sqlite_on_network_filesystem(url, filesystem_type or filesystem_type_of)
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        _prepare_sqlite_folder(url)
        _install_sqlite_hooks(engine, read_only=read_only)
    return engine


def postgres_url(url: str | URL) -> URL:
    """`url` with the psycopg 3 driver: a plain `postgresql://` would make SQLAlchemy look for psycopg2."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername=f"postgresql+{POSTGRES_DRIVER}")
    return parsed


def _open_postgres(url: URL, *, read_only: bool) -> Engine:
    connect_args = {"options": POSTGRES_READ_ONLY_OPTIONS} if read_only else {}
    try:
        # pre_ping: a daemon keeps its pool for days; a server restart must cost a reconnect, not a failed job.
        return create_engine(postgres_url(url), pool_pre_ping=True, connect_args=connect_args)
    except ModuleNotFoundError as err:
        if err.name in ("psycopg", "psycopg2"):
            raise ConfigError(POSTGRES_DRIVER_MISSING) from None
        raise


def refuse_sqlite_on_network_filesystem(url: str, filesystem_type: Callable[[Path], str | None]) -> None:
    """Raise ConfigError, with what to do instead, when `url` names a SQLite file on a network filesystem."""
    path = sqlite_file(url) or _sqlite_file_of_uri(url)
    if path is None:
        return
    kind = filesystem_type(path)
    if kind is None or kind.lower() not in NETWORK_FILESYSTEMS:
        return
    raise ConfigError(
        f"the job database {path} is on a network filesystem ({kind}). SQLite must not be shared that way: its "
        "write-ahead log works only for processes on one host, and over a network filesystem the database "
        "corrupts. Put [service] state_dir (or database_url) on a local disk of this host; to share one queue "
        "between several hosts, use a PostgreSQL server: database_url = \"postgresql://USER@HOST/DATABASE\" "
        "(README, \"Several machines: PostgreSQL\")"
    )


def _sqlite_file_of_uri(url: str) -> Path | None:
    """The file of a read-only `sqlite:///file:PATH?mode=ro&uri=true` URL (see `read_only_url`)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not (parsed.database or "").startswith("file:"):
        return None
    return Path(parsed.database.removeprefix("file:"))


def filesystem_type_of(path: Path, mountinfo: str | None = None) -> str | None:
    """The type of the filesystem holding `path` (or, before it exists, its nearest existing folder), as the
    kernel's mount table names it: "ext4", "nfs4", "fuse.sshfs". None where there is no /proc (not Linux)."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    target = _resolved(path.absolute())
    found: tuple[int, str] | None = None
    for mount_point, kind in _mounts(mountinfo):
        if mount_point == target or mount_point in target.parents:
            # The deepest mount point holds the file; of stacked mounts on one point the last one listed shows.
            if found is None or len(mount_point.parts) >= found[0]:
                found = (len(mount_point.parts), kind)
    return found[1] if found else None


def _resolved(path: Path) -> Path:
    """`path` with the links of its existing part resolved (a state folder may not be made yet)."""
    existing, missing = path, []
    while not existing.exists() and existing != existing.parent:
        existing, missing = existing.parent, [existing.name, *missing]
    return existing.resolve().joinpath(*missing)


def _mounts(mountinfo: str):
    """(mount point, filesystem type) per line of /proc/self/mountinfo: field 5 is the mount point (spaces
    written as \\040), and the type is the first field after the " - " separator."""
    for line in mountinfo.splitlines():
        before, separator, after = line.partition(" - ")
        fields = before.split()
        if not separator or len(fields) < 5 or not after.split():
            continue
        mount_point = re.sub(r"\\([0-7]{3})", lambda escape: chr(int(escape.group(1), 8)), fields[4])
        yield Path(mount_point), after.split()[0]


def _prepare_sqlite_folder(url: str) -> None:
    path = sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite database named by its path; None for other databases, `:memory:` and `file:` URIs."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database.startswith(("file:", ":")):
        return None
    return Path(parsed.database)


def missing_database_file(url: str) -> Path | None:
    """The SQLite file `url` names if it does not exist yet (the service never ran); None when it exists or
    the database is not a SQLite file. Readers use it to say "no jobs yet" instead of creating the file."""
    path = sqlite_file(url)
    return path if path is not None and not path.exists() else None


def read_only_url(url: str) -> str:
    """The same database opened read-only: a SQLite file through a `file:` URI with `mode=ro` (this process can
    then never create, lock for writing or migrate it); other databases as they are."""
    path = sqlite_file(url)
    if path is None:
        return url
    return f"sqlite:///file:{path.absolute()}?mode=ro&uri=true"


def open_read_only(url: str) -> Engine:
    """For readers that must never change the database: the status view, `svfrd status`, doctor."""
    return open_database(read_only_url(url), read_only=True)


def postgres_server_version(url: str) -> tuple[str, int] | None:
    """(version as the server prints it, as a number: 150018 for 15.18) for a PostgreSQL `url`; None for
    SQLite. Opens a read-only connection."""
    if make_url(url).get_backend_name() != "postgresql":
        return None
    engine = open_read_only(url)
    try:
        with engine.connect() as connection:
            shown = connection.exec_driver_sql("SHOW server_version").scalar()
            number = connection.exec_driver_sql("SHOW server_version_num").scalar()
        return str(shown).split()[0], int(number)
    finally:
        engine.dispose()


def database_error_reason(err: BaseException) -> str:
    """The driver's own message, first line: SQLAlchemy's wrapper adds the SQL and a help link."""
    return str(getattr(err, "orig", None) or err).splitlines()[0]


def _install_sqlite_hooks(engine: Engine, *, read_only: bool) -> None:
    begin = "BEGIN" if read_only else "BEGIN IMMEDIATE"

    @event.listens_for(engine, "connect")
    def set_pragmas(dbapi_connection, _record) -> None:
        # Take transaction control away from the sqlite3 module so that our BEGIN below is the only one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if not read_only:
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def begin_transaction(connection) -> None:
        connection.exec_driver_sql(begin)


def alembic_config(url: str):
    """An Alembic Config that needs no alembic.ini and works from any working directory."""
    from alembic.config import Config as AlembicConfig

    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise RuntimeError(
            f"the database migrations folder {MIGRATIONS_DIR} is missing; "
            "reinstall svfrd (pip install --force-reinstall svfrd)"
        )
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = url
    return config


def migration_scripts(url: str):
    """This svfrd's Alembic migrations (an alembic ScriptDirectory)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(url))


def head_revision(url: str) -> str | None:
    """The newest schema revision this svfrd knows."""
    return migration_scripts(url).get_current_head()


def known_revisions(url: str) -> set[str]:
    """Every schema revision this svfrd knows; a database at another one was written by a newer svfrd."""
    return {rev.revision for rev in migration_scripts(url).walk_revisions()}


def upgrade_database(url: str, revision: str = "head") -> None:
    """Bring the schema at `url` to `revision` (creating it if the database is empty). Safe to run on every
    start-up: it does nothing when the schema is current."""
    from alembic import command

    engine = open_database(url)
    try:
        with engine.begin() as connection:
            _wait_for_other_upgrades(connection)
            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


#: A PostgreSQL advisory lock key of svfrd's own ("svfr" in ASCII), held by the transaction that migrates.
MIGRATION_LOCK_KEY = 0x73766672


def _wait_for_other_upgrades(connection) -> None:
    """Several hosts may start at once on an empty PostgreSQL database: one migrates while the others wait for
    it, then find the schema current. (SQLite: BEGIN IMMEDIATE already serialises them.)"""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")


def current_revision(url: str) -> str | None:
    """The Alembic revision the database is at (None for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    engine = open_database(url, read_only=True)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
