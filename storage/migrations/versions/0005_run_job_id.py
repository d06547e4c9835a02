"""Runs remember the cluster job that executes them (a Ray submission id), so a restarted dispatcher
reattaches to it instead of submitting the run again.

Revision ID: 0005_run_job_id
Revises: 0004_analysis_jobs
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_run_job_id"
down_revision = "0004_analysis_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(sa.Column("job_id", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("job_id")
