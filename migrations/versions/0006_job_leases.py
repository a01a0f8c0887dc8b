"""one lease for every kind of job: an epoch (fencing token), lost holders, progress

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 18:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("run", "evaluation", "finetune_job")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column("lease_epoch", sa.Integer(), server_default="0", nullable=False)
            )
            batch.add_column(
                sa.Column("lost_count", sa.Integer(), server_default="0", nullable=False)
            )
            batch.add_column(
                sa.Column("progressed", sa.Boolean(), server_default=sa.false(), nullable=False)
            )
    # Fine-tune jobs counted their claims in progress["attempts"]; the count of lost holders is
    # now a column of every job kind. Claims of running jobs are not losses (yet).
    conn = op.get_bind()
    job = sa.table(
        "finetune_job",
        sa.column("id", sa.String),
        sa.column("status", sa.String),
        sa.column("progress", sa.JSON),
        sa.column("lost_count", sa.Integer),
    )
    for job_id, status, progress in conn.execute(sa.select(job.c.id, job.c.status, job.c.progress)):
        claims = int((progress or {}).get("attempts", 0)) if isinstance(progress, dict) else 0
        lost = max(0, claims - (1 if status == "running" else 0))
        if lost:
            conn.execute(sa.update(job).where(job.c.id == job_id).values(lost_count=lost))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("progressed")
            batch.drop_column("lost_count")
            batch.drop_column("lease_epoch")
