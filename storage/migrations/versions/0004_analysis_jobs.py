"""Analyses are jobs: status, owner, heartbeat, progress, cancel flag and error on each row.

Existing rows were stored finished, so they become `completed`.

Revision ID: 0004_analysis_jobs
Revises: 0003_metric_ids_never_reused
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_analysis_jobs"
down_revision = "0003_metric_ids_never_reused"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("analyses") as batch:
        batch.add_column(sa.Column("status", sa.String(16), nullable=False, server_default="completed"))
        batch.add_column(sa.Column("worker_id", sa.String(200), nullable=True))
        batch.add_column(sa.Column("started_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("progress", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("error_message", sa.Text(), nullable=True))
        batch.add_column(sa.Column("traceback", sa.Text(), nullable=True))
        batch.alter_column("result", existing_type=sa.JSON(), nullable=True)
        batch.create_index("ix_analyses_status", ["status"])


def downgrade() -> None:
    with op.batch_alter_table("analyses") as batch:
        batch.drop_index("ix_analyses_status")
        batch.alter_column("result", existing_type=sa.JSON(), nullable=False)
        for column in ("traceback", "error_message", "cancel_requested", "progress", "heartbeat_at", "finished_at",
                       "started_at", "worker_id", "status"):
            batch.drop_column(column)
