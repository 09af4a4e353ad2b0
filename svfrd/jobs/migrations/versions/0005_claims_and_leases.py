"""Who claimed a running job (host, device), the claim's token for fencing, and its lease
(docs/architecture.md, "Workers, claims and leases").

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-12
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("claim_host", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch.add_column(sa.Column("claim_device", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch.add_column(sa.Column("claim_token", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("plan_token", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
    # Every idle worker of every daemon claims the oldest queued job: an index in that order spares a sort.
    op.create_index("ix_jobs_claim_order", "jobs", ["state", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_claim_order", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("plan_token")
        batch.drop_column("lease_expires_at")
        batch.drop_column("claim_token")
        batch.drop_column("claim_device")
        batch.drop_column("claim_host")
