"""The service's private copies of a job's mask and reference image, read once at intake
(docs/architecture.md, "Paths from an inbox").

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("mask_copy", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch.add_column(sa.Column("reference_copy", sqlmodel.sql.sqltypes.AutoString(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("reference_copy")
        batch.drop_column("mask_copy")
