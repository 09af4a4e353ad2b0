"""Alembic environment for svfrd.

Run programmatically by `svfrd.jobs.database.upgrade_database(url)`, which hands over an open connection; or from the
command line for development (`alembic -c alembic.ini revision --autogenerate -m "..."`), which uses the URL in
alembic.ini or $SVFRD_DATABASE_URL. `render_as_batch` lets ALTER TABLE work on SQLite (copy-and-move).
"""

from __future__ import annotations

import os

from alembic import context
from sqlmodel import SQLModel

import svfrd.jobs.model  # noqa: F401  (registers the tables on SQLModel.metadata)
from svfrd.jobs.database import open_database

target_metadata = SQLModel.metadata
config = context.config


def run_migrations(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def database_url() -> str:
    return (
        config.attributes.get("database_url")
        or os.environ.get("SVFRD_DATABASE_URL")
        or config.get_main_option("sqlalchemy.url")
    )


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    engine = open_database(database_url())
    try:
        with engine.begin() as own_connection:
            run_migrations(own_connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    context.configure(url=database_url(), target_metadata=target_metadata, render_as_batch=True,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_online()
