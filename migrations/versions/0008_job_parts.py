"""parts of a job, each held on a lease of its own

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 18:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _str(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    op.create_table(
        "job_part",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", _str(16), nullable=False),
        sa.Column("job_id", _str(64), nullable=False),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("status", _str(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("worker_id", _str(200), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_epoch", sa.Integer(), nullable=False),
        sa.Column("lost_count", sa.Integer(), nullable=False),
        sa.Column("progressed", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kind", "job_id", "part", name="uq_job_part"),
    )
    op.create_index("ix_job_part_status", "job_part", ["status", "id"])


def downgrade() -> None:
    op.drop_index("ix_job_part_status", table_name="job_part")
    op.drop_table("job_part")
