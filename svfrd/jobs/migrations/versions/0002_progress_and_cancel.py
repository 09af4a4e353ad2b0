"""Progress reporting (stage, frames, ETA) and cancellation of a running job.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Server defaults fill the rows that already exist; new rows get their values from the application.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("stage", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch.add_column(sa.Column("frames_done", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("frames_total", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("eta_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for column in ("eta_seconds", "frames_total", "frames_done", "stage", "cancel_requested"):
            batch.drop_column(column)
