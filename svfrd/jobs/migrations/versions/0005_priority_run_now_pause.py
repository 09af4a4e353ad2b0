"""Job priority and run-now, and the service_state table that keeps the pause (docs/architecture.md, "Pause,
schedule, priority, notifications").

Revision ID: 0005_control
Revises: 0004
Create Date: 2026-12-12
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0005_control"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("run_now", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "service_state",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("value", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("service_state")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("run_now")
        batch.drop_column("priority")
