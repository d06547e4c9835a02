"""Alembic environment: runs migrations on the connection that storage.migrate hands over."""

from alembic import context

config = context.config
if context.is_offline_mode():
    raise RuntimeError("workbench migrations run online only, through storage.migrate.upgrade_database")

context.configure(
    connection=config.attributes["connection"],
    target_metadata=config.attributes["target_metadata"],
    version_table=config.attributes["version_table"],
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
