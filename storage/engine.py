"""Engine setup: the only place with database-specific code.

For SQLite this module
- refuses a file that is not a workbench database before anything touches it,
- sets the PRAGMAs on every new connection (WAL, busy timeout, foreign keys,
  synchronous NORMAL),
- takes over BEGIN from the sqlite3 driver so that write transactions start
  with ``BEGIN IMMEDIATE`` (writers queue on the busy timeout instead of failing
  when a read lock cannot be upgraded) and reads use a plain deferred BEGIN
  (in WAL mode a reader never waits for a writer).

Any other URL (PostgreSQL through psycopg 3) gets a plain engine; migrations there take an advisory lock.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Connection, Engine, Insert, create_engine, event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from storage.schema import VERSION_TABLE
from workbench.errors import StoreError

logger = logging.getLogger(__name__)

SQLITE_HEADER = b"SQLite format 3\x00"
BUSY_TIMEOUT_MS = 30_000
# Any constant shared by all workbench processes: the key of the PostgreSQL advisory lock migrations hold.
MIGRATION_LOCK_KEY = 0x776F726B62656E63
WRITE_OPTION = "workbench_write"
PASS_ANOTHER_DB = "move it away or pass --db (or WORKBENCH_DATABASE_URL) with another path"


def sqlite_path(url: str | URL) -> Path:
    """The file of a SQLite URL; in-memory databases are refused (workers need a shared file)."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise StoreError(
            f"database URL {url!s} is not a SQLite file; "
            "use sqlite:////absolute/path/workbench.db so workers and the UI share it"
        )
    return Path(database).expanduser().resolve()


def check_sqlite_file(path: Path) -> None:
    """Raise StoreError unless `path` is missing, empty, or a SQLite file with a workbench schema.

    The file is only read, through a read-only connection, so a refused file is
    left exactly as it was.
    """
    if path.is_dir():
        raise StoreError(f"{path} is a folder, not a workbench database; {PASS_ANOTHER_DB}")
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        raise StoreError(f"{path} is not a workbench database (file is not a SQLite database); {PASS_ANOTHER_DB}")
    try:
        reader = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            tables = [row[0] for row in reader.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        finally:
            reader.close()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a usable workbench database (SQLite says: {exc}); {PASS_ANOTHER_DB}") from exc
    if tables and VERSION_TABLE not in tables:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise StoreError(
            f"{path} is a SQLite database of another program (tables: {shown}) "
            f"and not a workbench database; {PASS_ANOTHER_DB}"
        )


def describe_url(url: str | URL) -> str:
    """The URL as it may be shown to the user (password hidden)."""
    return make_url(url).render_as_string(hide_password=True)


def create_store_engine(url: str | URL, *, foreign_keys: bool = True) -> Engine:
    """Create the engine for a database URL, checking and configuring SQLite files.

    `foreign_keys=False` is for migrations only: SQLite rebuilds a table to
    alter it, and dropping the old copy must not cascade into child tables.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(
            f"{url!r} is not a database URL; pass --db like sqlite:////path/to/workbench.db "
            "or postgresql+psycopg://user@host/workbench"
        ) from exc
    if parsed.get_backend_name() != "sqlite":
        try:
            return create_engine(parsed, pool_pre_ping=True)
        except (NoSuchModuleError, ImportError) as exc:
            raise StoreError(
                f"database URL {describe_url(parsed)} needs a driver that is not installed ({exc}); "
                "install it or use SQLite"
            ) from exc
    path = sqlite_path(url)
    check_sqlite_file(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the folder {path.parent} for the database ({exc.strerror})") from exc
    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def configure_connection(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        (journal_mode,) = cursor.execute("PRAGMA journal_mode").fetchone()
        if journal_mode.lower() != "wal":
            (journal_mode,) = cursor.execute("PRAGMA journal_mode = WAL").fetchone()
            if journal_mode.lower() != "wal":
                logger.warning(
                    "%s cannot use write-ahead logging (journal mode stays %s); readers may wait for writers",
                    path,
                    journal_mode,
                )
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def begin_transaction(connection: Connection) -> None:
        writing = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")

    return engine


def writer_engine(engine: Engine) -> Engine:
    """A view of `engine` (same pool) whose transactions take the write lock up front on SQLite."""
    return engine.execution_options(**{WRITE_OPTION: True})


def driver_executemany_sql(engine: Engine, statement: Insert, keys: Sequence[str]) -> str | None:
    """SQL for handing many rows (tuples in `keys` order) straight to the SQLite driver's executemany.

    Skips SQLAlchemy's per-row parameter handling, which costs about as much as
    the insert itself. Returns None for other databases, where SQLAlchemy's own
    batching (multi-row VALUES) is the faster path.
    """
    if engine.dialect.name != "sqlite":
        return None
    compiled = statement.compile(dialect=engine.dialect, column_keys=list(keys))
    if not compiled.positional or tuple(compiled.positiontup) != tuple(keys):
        return None
    return compiled.string


def lock_for_migration(connection: Connection) -> None:
    """In a write transaction: make processes that migrate at once take turns.

    SQLite's BEGIN IMMEDIATE already does; PostgreSQL gets a transaction-scoped advisory lock.
    """
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")


def foreign_key_violations(connection: Connection) -> list[tuple]:
    """Rows that break a foreign key (checked after migrations, which run with SQLite's checks off)."""
    if connection.dialect.name != "sqlite":
        return []
    return [tuple(row) for row in connection.exec_driver_sql("PRAGMA foreign_key_check")]
