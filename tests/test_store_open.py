"""Opening a store: engine settings, files that are not ours, and migrations between schema revisions (on SQLite
and PostgreSQL)."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, text

from storage import QUEUED, open_store
from storage.engine import create_store_engine
from storage.migrate import current_revision, head_revision, upgrade_database
from storage.schema import VERSION_TABLE, Base
from workbench.errors import StoreError

FIRST_REVISION = "0001_initial"


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


# -- engine settings ----------------------------------------------------------------------------


def test_default_database_lives_in_the_home_folder_with_wal_and_pragmas(tmp_path, monkeypatch):
    monkeypatch.delenv("WORKBENCH_DATABASE_URL", raising=False)
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "env-home"))
    with open_store() as store:
        assert store.home == (tmp_path / "env-home").resolve()
        assert (store.home / "workbench.db").is_file()
        with store.engine.connect() as conn:
            settings = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "foreign_keys", "synchronous", "busy_timeout")
            }
    assert settings == {"journal_mode": "wal", "foreign_keys": 1, "synchronous": 1, "busy_timeout": 30000}


def test_db_argument_overrides_the_home_database(tmp_path):
    elsewhere = tmp_path / "shared" / "runs.db"
    with open_store(tmp_path / "home", db=sqlite_url(elsewhere)) as store:
        store.create_run({"a": 1}, name="x")
    assert elsewhere.is_file()
    assert not (tmp_path / "home" / "workbench.db").exists()


def test_in_memory_sqlite_is_refused(tmp_path):
    with pytest.raises(StoreError, match="is not a SQLite file"):
        open_store(tmp_path, db="sqlite://")


@pytest.mark.parametrize(
    ("db", "message"),
    [
        ("not a url", "is not a database URL; pass --db like sqlite:////"),
        ("postgresql+nosuchdriver://user:secret@host/db", "needs a driver that is not installed"),
    ],
)
def test_bad_database_urls_get_a_clear_message(tmp_path, db, message):
    with pytest.raises(StoreError, match=message) as raised:
        open_store(tmp_path, db=db)
    assert "secret" not in str(raised.value)


def test_a_database_path_under_a_file_gets_a_clear_message(tmp_path):
    (tmp_path / "plain-file").write_text("x")
    with pytest.raises(StoreError, match="cannot create the folder .*plain-file"):
        open_store(tmp_path, db=sqlite_url(tmp_path / "plain-file" / "workbench.db"))


def test_write_transactions_take_the_lock_up_front(tmp_path):
    """A writer waits for another writer instead of failing on a lock upgrade."""
    with open_store(tmp_path) as store:
        run_id = store.create_run({}, name="x")
        with store._writer.begin() as conn:
            blocker = sqlite3.connect(tmp_path / "workbench.db", timeout=0)
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                blocker.execute("BEGIN IMMEDIATE")
            assert blocker.execute("SELECT name FROM runs").fetchall() == [("x",)]
            blocker.close()
            conn.execute(text("UPDATE runs SET name = 'y' WHERE id = :id"), {"id": run_id})
        assert store.get_run(run_id).name == "y"


# -- files that are not workbench databases ----------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        os.urandom(4096),
        b"run,loss\n1,0.5\n2,0.4\n" * 50,
        b"SQLite format 3\x00" + os.urandom(2000),
    ],
    ids=["random-bytes", "text-file", "damaged-sqlite"],
)
def test_a_file_that_is_not_a_database_is_refused_and_left_untouched(tmp_path, content):
    database = tmp_path / "workbench.db"
    database.write_bytes(content)
    before = database.stat()
    with pytest.raises(StoreError) as raised:
        open_store(tmp_path)
    message = str(raised.value)
    assert str(database) in message
    assert "is not a" in message and "move it away or pass --db" in message
    assert database.read_bytes() == content
    assert database.stat().st_mtime_ns == before.st_mtime_ns
    assert sorted(p.name for p in tmp_path.iterdir()) == ["workbench.db"]


def test_a_non_database_file_says_so(tmp_path):
    (tmp_path / "workbench.db").write_text("not a database at all\n" * 10)
    with pytest.raises(StoreError, match=r"is not a workbench database \(file is not a SQLite database\)"):
        open_store(tmp_path)


def test_a_folder_at_the_database_path_is_refused(tmp_path):
    (tmp_path / "workbench.db").mkdir()
    with pytest.raises(StoreError, match="is a folder"):
        open_store(tmp_path)


def test_another_programs_sqlite_database_is_refused_and_left_untouched(tmp_path):
    database = tmp_path / "workbench.db"
    foreign = sqlite3.connect(database)
    foreign.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    foreign.execute("INSERT INTO invoices (total) VALUES (9.5)")
    foreign.commit()
    foreign.close()
    content = database.read_bytes()

    with pytest.raises(StoreError, match=r"SQLite database of another program \(tables: invoices\)"):
        open_store(tmp_path)
    assert database.read_bytes() == content
    check = sqlite3.connect(database)
    assert check.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    check.close()


def test_an_empty_file_becomes_a_new_database(tmp_path):
    (tmp_path / "workbench.db").touch()
    with open_store(tmp_path) as store:
        assert store.list_runs() == []


def test_a_database_from_a_newer_release_is_refused(tmp_path, db_url):
    with open_store(tmp_path, db=db_url) as store, store.engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0099_from_the_future'"))
    with pytest.raises(StoreError, match="schema revision '0099_from_the_future'.*does not know.*upgrade workbench"):
        open_store(tmp_path, db=db_url)


# -- migrations ---------------------------------------------------------------------------------


def test_models_match_the_newest_migration(tmp_path, db_url):
    """The ORM classes and the migration scripts describe the same schema."""
    with open_store(tmp_path, db=db_url) as store, store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, Base.metadata) == []
        assert current_revision(conn) == head_revision()


def fill_first_revision(engine: Engine) -> dict[str, list[tuple]]:
    """Write runs, metrics and artifacts the way the first schema revision stores them."""
    run_rows = [
        ("resnet20", "fig6", "twin", "completed", '{"depth": 20}', "2025-01-02 03:04:05.000000", 64000, 0.0875, False),
        ("plain20", "fig6", "twin", "interrupted", '{"depth": 20, "plain": true}', "2025-01-02 03:04:06.000000",
         3000, None, True),
        ("resnet110", None, None, "queued", '{"depth": 110}', "2025-01-03 00:00:00.000000", 0, None, False),
    ]
    run_keys = ("name", "group_name", "group_kind", "status", "spec", "created_at", "iteration", "best_test_error",
                "cancel_requested")
    metric_keys = ("run_id", "iteration", "epoch", "split", "name", "value", "wall_time")
    metric_rows = [(run_id, i, i / 391, "train", "loss", 1 / (i + 1), 1.7e9 + i)
                   for run_id in (1, 2) for i in range(500)]
    with engine.begin() as connection:
        for table, keys, rows in (("runs", run_keys, run_rows), ("metrics", metric_keys, metric_rows)):
            connection.execute(
                text(f"INSERT INTO {table} ({', '.join(keys)}) VALUES ({', '.join(':' + key for key in keys)})"),
                [dict(zip(keys, row, strict=True)) for row in rows],
            )
        connection.execute(text(
            "INSERT INTO artifacts (run_id, kind, path, size, sha256, created_at) VALUES "
            "(1, 'checkpoint', '/runs/1/last.pt', 123, 'ab', '2025-01-02 04:00:00.000000')"
        ))
    return table_rows(engine)


def table_rows(engine: Engine) -> dict[str, list[tuple]]:
    with engine.connect() as connection:
        return {table: [tuple(row) for row in connection.execute(text(f"SELECT * FROM {table} ORDER BY id"))]
                for table in ("runs", "metrics", "artifacts")}


def test_a_first_revision_database_with_data_upgrades_keeping_every_row(tmp_path, db_url):
    url = db_url or sqlite_url(tmp_path / "workbench.db")
    upgrade_database(url, FIRST_REVISION)
    engine = create_store_engine(url)
    before = fill_first_revision(engine)

    with open_store(tmp_path, db=db_url) as store:
        after = table_rows(engine)
        for table, rows in before.items():
            width = len(rows[0])
            assert [row[:width] for row in after[table]] == rows, table
        with engine.connect() as connection:
            if db_url is None:
                assert connection.exec_driver_sql("PRAGMA integrity_check").fetchone() == ("ok",)
                assert connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall() == []
            assert connection.scalar(text(f"SELECT version_num FROM {VERSION_TABLE}")) == head_revision()
        engine.dispose()

        runs = {run.name: run for run in store.list_runs()}
        assert runs["resnet20"].best_test_error == 0.0875 and runs["resnet20"].spec == {"depth": 20}
        assert runs["plain20"].cancel_requested is True
        assert all(run.notes == "" and run.tags == [] and run.parent_run_id is None for run in runs.values())
        assert all(run.job_id is None and run.best_val_error is None and run.test_error_at_best is None
                   for run in runs.values()), "the columns of 0005 and 0006 start empty"
        assert runs["resnet20"].created_at.isoformat() == "2025-01-02T03:04:05+00:00"
        curves = store.fetch_metrics_since({1: 0, 2: 0})
        assert [len(curves[run_id].rows) for run_id in (1, 2)] == [500, 500]

        store.set_notes(1, "migrated")
        store.add_analysis(1, "lesion", {}, {"ok": True})
        assert store.claim_next_run("worker").name == "resnet110"
        assert store.create_run({}, name="new", parent_run_id=1) == 4
        store.append_metrics(4, [{"iteration": 0, "split": "train", "name": "loss", "value": 1.0}])
        store.delete_run(2)
        assert len(store.fetch_metrics_since({1: 0})[1].rows) == 500
        sweep_id = store.create_sweep("migrated", "tpe", {})  # the table of 0007
        assert store.add_sweep_trial(sweep_id, {"data": {"name": "cifar10"}}, name="trial 1", expected_trials=0,
                                     max_in_flight=1) == 5


def test_reopening_an_up_to_date_database_changes_nothing(tmp_path):
    with open_store(tmp_path) as store:
        store.create_run({}, name="x")
    database = tmp_path / "workbench.db"
    checkpointed = sqlite3.connect(database)
    checkpointed.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    checkpointed.close()
    content = database.read_bytes()
    with open_store(tmp_path) as store:
        assert [run.status for run in store.list_runs()] == [QUEUED]
    assert database.read_bytes() == content


def open_and_create(home: str, db: str | None, name: str) -> None:
    with open_store(home, db=db) as store:
        store.create_run({}, name=name)


@pytest.mark.timeout(60)
def test_processes_opening_a_new_database_at_once_migrate_it_once(tmp_path, db_url):
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=open_and_create, args=(str(tmp_path), db_url, f"p{i}")) for i in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(50)
    assert [process.exitcode for process in processes] == [0, 0, 0]
    with open_store(tmp_path, db=db_url) as store:
        assert sorted(run.name for run in store.list_runs()) == ["p0", "p1", "p2"]
        with store.engine.connect() as conn:
            assert conn.scalar(text(f"SELECT count(*) FROM {VERSION_TABLE}")) == 1
