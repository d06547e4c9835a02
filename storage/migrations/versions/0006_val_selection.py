"""Runs with a validation split keep their best validation error and the test error at that evaluation, so the
best checkpoint and the reported error are chosen on validation, not on test.

Revision ID: 0006_val_selection
Revises: 0005_run_job_id
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_val_selection"
down_revision = "0005_run_job_id"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(sa.Column("best_val_error", sa.Float(), nullable=True))
        batch.add_column(sa.Column("test_error_at_best", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("test_error_at_best")
        batch.drop_column("best_val_error")
