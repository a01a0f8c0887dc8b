"""dataset versions: frozen task records, and the version fine-tunes and evaluations used

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "dataset_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=True),
        sa.Column("selection", _json(), nullable=False),
        sa.Column("held_out_share", sa.Float(), nullable=False),
        sa.Column("tasks", sa.Integer(), nullable=False),
        sa.Column("instances", sa.Integer(), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("counts", _json(), nullable=False),
        sa.Column("stored_bytes", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["dataset.id"],
            name="fk_dataset_version_dataset_id_dataset",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_dataset_version"),
    )
    op.create_index("ix_dataset_version_dataset", "dataset_version", ["dataset_id", "id"])
    op.create_table(
        "dataset_version_chunk",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("tasks", sa.Integer(), nullable=False),
        sa.Column("raw_bytes", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["dataset_version.id"],
            name="fk_dataset_version_chunk_version_id_dataset_version",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version_id", "position", name="pk_dataset_version_chunk"),
    )
    for table in ("finetune_job", "evaluation"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("dataset_version_id", sa.Integer(), nullable=True))
            batch.create_foreign_key(
                f"fk_{table}_dataset_version_id_dataset_version",
                "dataset_version",
                ["dataset_version_id"],
                ["id"],
                ondelete="SET NULL",
            )


def downgrade() -> None:
    for table in ("evaluation", "finetune_job"):
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"fk_{table}_dataset_version_id_dataset_version", "foreignkey")
            batch.drop_column("dataset_version_id")
    op.drop_table("dataset_version_chunk")
    op.drop_index("ix_dataset_version_dataset", table_name="dataset_version")
    op.drop_table("dataset_version")
