"""runs across several workers (shards) and fine-tunes across several nodes; task indexes for
a dataset's pages and for what changed since a clock

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("run") as batch:
        batch.add_column(sa.Column("shards", sa.Integer(), server_default="1", nullable=False))
    with op.batch_alter_table("finetune_job") as batch:
        batch.add_column(sa.Column("nodes", sa.Integer(), server_default="1", nullable=False))
    with op.batch_alter_table("job_part") as batch:
        batch.add_column(sa.Column("state", _json(), server_default="{}", nullable=False))
    with op.batch_alter_table("task") as batch:
        batch.create_index("ix_task_dataset_id", ["dataset_id", "id"], unique=False)
        batch.create_index("ix_task_dataset_updated", ["dataset_id", "updated_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("task") as batch:
        batch.drop_index("ix_task_dataset_updated")
        batch.drop_index("ix_task_dataset_id")
    with op.batch_alter_table("job_part") as batch:
        batch.drop_column("state")
    with op.batch_alter_table("finetune_job") as batch:
        batch.drop_column("nodes")
    with op.batch_alter_table("run") as batch:
        batch.drop_column("shards")
