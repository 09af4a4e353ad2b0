"""Job priority and run-now, and the service_state table that keeps the pause (docs/architecture.md, "Pause,
schedule, priority, notifications"). The claim-order index follows the queue's new order.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-12
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0006"
down_revision = "0005"
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
    # Claims take run-now jobs first, then by priority, then the oldest (store.QUEUE_ORDER): an index in that
    # order spares a sort of the whole queue on every claim.
    op.drop_index("ix_jobs_claim_order", table_name="jobs")
    op.create_index("ix_jobs_queue_order", "jobs",
                    ["state", sa.column("run_now").desc(), sa.column("priority").desc(), "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_queue_order", table_name="jobs")
    op.create_index("ix_jobs_claim_order", "jobs", ["state", "created_at", "id"])
    op.drop_table("service_state")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("run_now")
        batch.drop_column("priority")
