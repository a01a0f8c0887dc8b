"""held-out shares, evaluation sets, decontamination and evaluation jobs

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 07:30:00
"""

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:  # type: ignore[type-arg]
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _str(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def _key(instruction: str, instances: object) -> float:
    """app.models.holdout_key as it stands at this revision (a migration never imports app)."""
    first = ""
    if isinstance(instances, list) and instances and isinstance(instances[0], dict):
        first = str(instances[0].get("input", ""))
    text = f"{instruction.strip()}\n{first.strip()}".strip()
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:6]) / 2**48


def upgrade() -> None:
    with op.batch_alter_table("dataset") as batch:
        batch.add_column(
            sa.Column("held_out_share", sa.Float(), server_default="0", nullable=False)
        )
        batch.add_column(
            sa.Column("decontaminate_against", _json(), server_default="[]", nullable=False)
        )
        batch.add_column(
            sa.Column("decontamination_threshold", sa.Float(), server_default="0.7", nullable=False)
        )
        batch.add_column(
            sa.Column("decontamination_state", _json(), server_default="{}", nullable=False)
        )
    with op.batch_alter_table("task") as batch:
        batch.add_column(sa.Column("holdout_key", sa.Float(), nullable=True))
        batch.add_column(
            sa.Column("contaminated", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch.add_column(sa.Column("contamination", _json(), nullable=True))
    # Existing tasks get their key now; new ones get it on insert (app.models).
    conn = op.get_bind()
    task = sa.table(
        "task",
        sa.column("id", sa.Integer),
        sa.column("instruction", sa.Text),
        sa.column("instances", sa.JSON),
        sa.column("holdout_key", sa.Float),
    )
    rows = conn.execute(sa.select(task.c.id, task.c.instruction, task.c.instances)).all()
    if rows:
        conn.execute(
            sa.update(task).where(task.c.id == sa.bindparam("task_id")),
            [
                {"task_id": i, "holdout_key": _key(instruction or "", instances)}
                for i, instruction, instances in rows
            ],
        )
    op.create_table(
        "evaluation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("models", _json(), nullable=False),
        sa.Column("judge", _str(200), nullable=True),
        sa.Column("params", _json(), nullable=False),
        sa.Column("status", _str(16), nullable=False),
        sa.Column("tasks", sa.Integer(), nullable=False),
        sa.Column("progress", _json(), nullable=False),
        sa.Column("results", _json(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("worker_id", _str(200), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["dataset.id"],
            name=op.f("fk_evaluation_dataset_id_dataset"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluation")),
    )
    with op.batch_alter_table("evaluation") as batch:
        batch.create_index("ix_evaluation_status", ["status", "id"], unique=False)
    op.create_table(
        "evaluation_sample",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("evaluation_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=True),
        sa.Column("instruction", sa.Text(), nullable=False),
        sa.Column("input", sa.Text(), nullable=False),
        sa.Column("reference", sa.Text(), nullable=False),
        sa.Column("answers", _json(), nullable=False),
        sa.Column("pairwise", _json(), nullable=False),
        sa.ForeignKeyConstraint(
            ["evaluation_id"],
            ["evaluation.id"],
            name=op.f("fk_evaluation_sample_evaluation_id_evaluation"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluation_sample")),
        sa.UniqueConstraint("evaluation_id", "position", name="uq_evaluation_sample_position"),
    )
    op.create_table(
        "evaluation_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("evaluation_id", sa.Integer(), nullable=False),
        sa.Column("kind", _str(32), nullable=False),
        sa.Column("data", _json(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["evaluation_id"],
            ["evaluation.id"],
            name=op.f("fk_evaluation_event_evaluation_id_evaluation"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluation_event")),
    )
    with op.batch_alter_table("evaluation_event") as batch:
        batch.create_index("ix_evaluation_event_evaluation", ["evaluation_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_table("evaluation_event")
    op.drop_table("evaluation_sample")
    op.drop_table("evaluation")
    with op.batch_alter_table("task") as batch:
        batch.drop_column("contamination")
        batch.drop_column("contaminated")
        batch.drop_column("holdout_key")
    with op.batch_alter_table("dataset") as batch:
        batch.drop_column("decontamination_state")
        batch.drop_column("decontamination_threshold")
        batch.drop_column("decontaminate_against")
        batch.drop_column("held_out_share")
