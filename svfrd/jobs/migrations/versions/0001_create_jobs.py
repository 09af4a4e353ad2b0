"""Create the jobs table (first release: no progress columns, no cancellation).

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

text = sqlmodel.sql.sqltypes.AutoString
timestamp = sqlmodel.sql.sqltypes.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("state", text(), nullable=False),
        sa.Column("inbox", text(), nullable=False),
        sa.Column("source_name", text(), nullable=False),
        sa.Column("source_path", text(), nullable=False),
        sa.Column("sidecar_path", text(), nullable=True),
        sa.Column("mask_path", text(), nullable=True),
        sa.Column("reference_path", text(), nullable=True),
        sa.Column("tasks", text(), nullable=False),
        sa.Column("options_json", text(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("content_hash", text(), nullable=False),
        sa.Column("dedupe_key", text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("not_before", timestamp(), nullable=True),
        sa.Column("worker_pid", sa.Integer(), nullable=True),
        sa.Column("created_at", timestamp(), nullable=False),
        sa.Column("started_at", timestamp(), nullable=True),
        sa.Column("finished_at", timestamp(), nullable=True),
        sa.Column("updated_at", timestamp(), nullable=False),
        sa.Column("engine", text(), nullable=True),
        sa.Column("output_path", text(), nullable=True),
        sa.Column("report_path", text(), nullable=True),
        sa.Column("error_kind", text(), nullable=True),
        sa.Column("error_message", text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_jobs_state", "jobs", ["state"])
    op.create_index("ix_jobs_content_hash", "jobs", ["content_hash"])
    op.create_index("ix_jobs_dedupe_key", "jobs", ["dedupe_key"])


def downgrade() -> None:
    op.drop_table("jobs")
