"""Sweeps: the search behind a group of trial runs (base run, space, method, objective), one row per group.

Revision ID: 0007_sweeps
Revises: 0006_val_selection
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_sweeps"
down_revision = "0006_val_selection"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("group_name", sa.String(200), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_sweeps"),
        sa.UniqueConstraint("group_name", name="uq_sweeps_group_name"),
    )


def downgrade() -> None:
    op.drop_table("sweeps")
