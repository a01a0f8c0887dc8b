"""judgements: ratings of tasks on the A-D scale of the Self-Instruct paper, and judgement jobs

A judgement job is a run of strategy `judgement`, so it needs no table of its own.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 07:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_str = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    op.create_table(
        "judgement",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("rating", _str(length=1), nullable=True),
        sa.Column("rationale", sa.Text(), nullable=False),
        sa.Column("judge_model", _str(length=200), nullable=False),
        sa.Column("prompt_version", _str(length=64), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["task.id"], name=op.f("fk_judgement_task_id_task"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["run.id"], name=op.f("fk_judgement_run_id_run"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_judgement")),
    )
    with op.batch_alter_table("judgement") as batch:
        batch.create_index("ix_judgement_task", ["task_id", "id"], unique=False)
        batch.create_index("ix_judgement_run_task", ["run_id", "task_id"], unique=False)
    with op.batch_alter_table("task") as batch:
        batch.add_column(sa.Column("rating", _str(length=1), nullable=True))
        batch.add_column(sa.Column("judgement_id", sa.Integer(), nullable=True))
        batch.create_index("ix_task_dataset_rating", ["dataset_id", "rating", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("task") as batch:
        batch.drop_index("ix_task_dataset_rating")
        batch.drop_column("judgement_id")
        batch.drop_column("rating")
    with op.batch_alter_table("judgement") as batch:
        batch.drop_index("ix_judgement_run_task")
        batch.drop_index("ix_judgement_task")
    op.drop_table("judgement")
