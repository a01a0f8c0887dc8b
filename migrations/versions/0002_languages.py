"""languages: each task's detected language; a dataset's language becomes an optional override

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 02:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("task") as batch:
        batch.add_column(
            sa.Column("language", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True)
        )
    with op.batch_alter_table("dataset") as batch:
        batch.alter_column(
            "language", existing_type=sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True
        )
    # Every dataset so far got `en` unless told otherwise, which rejected its Chinese tasks:
    # languages now come from the seeds, so the old default is dropped. (A dataset created with
    # an explicit language cannot be told apart; set it again with PATCH if it mattered.)
    op.execute("UPDATE dataset SET language = NULL WHERE language = 'en'")


def downgrade() -> None:
    op.execute("UPDATE dataset SET language = 'en' WHERE language IS NULL")
    with op.batch_alter_table("dataset") as batch:
        batch.alter_column(
            "language", existing_type=sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False
        )
    with op.batch_alter_table("task") as batch:
        batch.drop_column("language")
