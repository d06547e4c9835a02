"""Metric ids are never reused: SQLite AUTOINCREMENT on metrics.

Without it SQLite hands out the id of deleted rows again, and a resumed run's re-logged rows
could fall behind a chart's "rows after id K" cursor. PostgreSQL sequences never hand out an id
twice, and rebuilding the table there would restart its sequence below the copied ids: nothing to do.

Revision ID: 0003_metric_ids_never_reused
Revises: 0002_lineage_notes_analyses
Create Date: 2026-11-26
"""

from alembic import op

revision = "0003_metric_ids_never_reused"
down_revision = "0002_lineage_notes_analyses"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    with op.batch_alter_table("metrics", recreate="always", table_kwargs={"sqlite_autoincrement": True}):
        pass


def downgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    with op.batch_alter_table("metrics", recreate="always"):
        pass
