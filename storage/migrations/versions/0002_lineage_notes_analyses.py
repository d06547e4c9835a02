"""Notes, tags and parent run (fine-tune / resume lineage) on runs; analyses table.

Revision ID: 0002_lineage_notes_analyses
Revises: 0001_initial
Create Date: 2025-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_lineage_notes_analyses"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(sa.Column("notes", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("tags", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("parent_run_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_runs_parent_run_id_runs", "runs", ["parent_run_id"], ["id"], ondelete="SET NULL")
        batch.create_index("ix_runs_parent_run_id", ["parent_run_id"])

    op.create_table(
        "analyses",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_analyses"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_analyses_run_id_runs", ondelete="CASCADE"),
    )
    op.create_index("ix_analyses_run_id", "analyses", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_analyses_run_id", table_name="analyses")
    op.drop_table("analyses")
    with op.batch_alter_table("runs", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_index("ix_runs_parent_run_id")
        batch.drop_constraint("fk_runs_parent_run_id_runs", type_="foreignkey")
        batch.drop_column("parent_run_id")
        batch.drop_column("tags")
        batch.drop_column("notes")
