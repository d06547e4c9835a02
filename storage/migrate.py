"""Schema migrations with Alembic, run from code (no alembic.ini).

`upgrade_database(url)` brings any workbench database to the newest revision;
`open_store` calls it on every start, so a database made by an older release
opens in a newer one with its runs intact.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError

from storage.engine import (
    create_store_engine,
    describe_url,
    foreign_key_violations,
    lock_for_migration,
    writer_engine,
)
from storage.schema import VERSION_TABLE, Base
from workbench.errors import StoreError

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at storage/migrations, optionally bound to an open connection."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    config.attributes["target_metadata"] = Base.metadata
    config.attributes["version_table"] = VERSION_TABLE
    return config


def head_revision() -> str:
    """The newest schema revision this code knows."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    """The revision a database is at, or None for an empty database."""
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def upgrade_database(url: str | URL, revision: str = "head") -> None:
    """Migrate the database at `url` to `revision` (default: newest), doing nothing if it is there.

    Runs in one transaction holding the write lock, so two processes starting
    at once do not both migrate, and a failed step leaves the old schema.
    """
    scripts = ScriptDirectory.from_config(alembic_config())
    target = scripts.get_current_head() if revision == "head" else revision
    engine = create_store_engine(url, foreign_keys=False)
    try:
        _upgrade(engine, scripts, target)
    except OperationalError as exc:
        raise StoreError(f"cannot open database {describe_url(url)}: {exc.orig}") from exc
    finally:
        engine.dispose()


def _upgrade(engine: Engine, scripts: ScriptDirectory, target: str) -> None:
    url = describe_url(engine.url)
    with engine.connect() as connection:
        if current_revision(connection) == target:
            return
    with writer_engine(engine).begin() as connection:
        lock_for_migration(connection)
        found = current_revision(connection)
        if found is not None:
            _check_known(scripts, found, url)
        if found == target:
            return
        logger.info("migrating database %s from revision %s to %s", url, found, target)
        command.upgrade(alembic_config(connection), target)
        broken = foreign_key_violations(connection)
        if broken:
            raise StoreError(
                f"migrating {url} to revision {target} would break {len(broken)} references "
                f"(first: {broken[0]}); the database was left unchanged"
            )


def _check_known(scripts: ScriptDirectory, revision: str, url: str) -> None:
    try:
        scripts.get_revision(revision)
    except CommandError as exc:
        raise StoreError(
            f"database {url} has schema revision {revision!r}, which this version of workbench "
            f"does not know (newest known: {scripts.get_current_head()}); "
            "upgrade workbench or pass --db with another database"
        ) from exc
