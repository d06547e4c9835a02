"""Run store speed next to the bare driver: sqlite3 (same schema, same PRAGMAs) or psycopg 3 with --db.

    python bench/store.py [--rows 200000] [--batch 1000] [--runs 8] [--points 20000] [--db URL]

With `--db postgresql+psycopg://...` the same figures are measured on that PostgreSQL database (new
runs are added to it) beside raw psycopg executemany and selects.

Measures (1) rows/s appending metric rows in batches, one transaction per
batch, and (2) the time to fetch the new rows of several runs: first the whole
history (a chart opening) and then a poll after a few new rows per run. The last
line printed is JSON: [{"bench", "ours", "reference", "ratio", "unit"}, ...].
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storage import RunStore, open_store  # noqa: E402
from storage.engine import BUSY_TIMEOUT_MS  # noqa: E402

INSERT_SQL = (
    "INSERT INTO metrics (run_id, iteration, epoch, split, name, value, wall_time) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
SELECT_SQL = (
    "SELECT id, run_id, iteration, epoch, split, name, value, wall_time FROM metrics "
    "WHERE run_id = ? AND id > ? ORDER BY id"
)
METRIC_NAMES = ("loss", "error", "lr", "grad_norm")


def raw_connection(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection with the PRAGMAs the store uses."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    connection.execute("PRAGMA foreign_keys = ON")
    return connection


def metric_rows(count: int, start_iteration: int = 0) -> list[dict]:
    """Rows shaped like what a training sink sends."""
    now = time.time()
    return [
        {
            "iteration": start_iteration + index // len(METRIC_NAMES),
            "epoch": (start_iteration + index) / 391.0,
            "split": "train",
            "name": METRIC_NAMES[index % len(METRIC_NAMES)],
            "value": 1.0 / (index + 1),
            "wall_time": now + index * 1e-3,
        }
        for index in range(count)
    ]


def as_tuples(run_id: int, rows: list[dict]) -> list[tuple]:
    return [
        (run_id, row["iteration"], row["epoch"], row["split"], row["name"], row["value"], row["wall_time"])
        for row in rows
    ]


DB_URL: str | None = None


def new_store(folder: Path) -> RunStore:
    """A store in a fresh home folder: a fresh SQLite file, or the --db database."""
    return open_store(folder, DB_URL)


def raw_connect(store: RunStore) -> tuple[Any, str]:
    """The bare driver's connection to the store's database and how it begins a write transaction."""
    url = store.engine.url
    if url.get_backend_name() == "sqlite":
        return raw_connection(Path(url.database)), "BEGIN IMMEDIATE"
    import psycopg

    plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
    return psycopg.connect(plain, autocommit=True), "BEGIN"


def driver_sql(connection: Any, sql: str) -> str:
    return sql if isinstance(connection, sqlite3.Connection) else sql.replace("?", "%s")


def append_ours(folder: Path, batches: list[list[dict]]) -> float:
    """Seconds for RunStore.append_metrics to store every batch into a fresh database."""
    store = new_store(folder)
    run_id = store.create_run({"bench": "append"}, name="append")
    started = time.perf_counter()
    for batch in batches:
        store.append_metrics(run_id, batch)
    elapsed = time.perf_counter() - started
    store.close()
    return elapsed


def append_reference(folder: Path, batches: list[list[dict]]) -> float:
    """Seconds for the bare driver's executemany (rows already tuples) into a database of the same schema."""
    store = new_store(folder)
    run_id = store.create_run({"bench": "append"}, name="append")
    connection, begin = raw_connect(store)
    store.close()
    tuple_batches = [as_tuples(run_id, batch) for batch in batches]
    insert = driver_sql(connection, INSERT_SQL)
    started = time.perf_counter()
    for batch in tuple_batches:
        connection.execute(begin)
        connection.cursor().executemany(insert, batch)
        connection.execute("COMMIT")
    elapsed = time.perf_counter() - started
    connection.close()
    return elapsed


def bench_append(folder: Path, total_rows: int, batch_size: int, rounds: int) -> tuple[float, float]:
    """Best rows/s of the store and of raw executemany over interleaved rounds (noise hits both alike)."""
    rows = metric_rows(total_rows)
    batches = [rows[start : start + batch_size] for start in range(0, total_rows, batch_size)]
    ours, reference = [], []
    for round_index in range(rounds):
        ours.append(append_ours(folder / f"append_ours_{round_index}", batches))
        reference.append(append_reference(folder / f"append_reference_{round_index}", batches))
    return total_rows / min(ours), total_rows / min(reference)


def raw_fetch(connection: Any, cursors: dict[int, int]) -> dict[int, list[tuple]]:
    select = driver_sql(connection, SELECT_SQL)
    connection.execute("BEGIN")
    fetched = {run_id: connection.execute(select, (run_id, after)).fetchall() for run_id, after in cursors.items()}
    connection.execute("COMMIT")
    return fetched


def median_ms_pair(ours: Callable[[], object], reference: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median milliseconds of two actions, timed alternately so load changes hit both."""
    timings: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for action, found in ((ours, timings[0]), (reference, timings[1])):
            started = time.perf_counter()
            action()
            found.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings[0]), statistics.median(timings[1])


def bench_fetch(folder: Path, run_count: int, points: int, repeats: int) -> dict[str, tuple[float, float]]:
    """Milliseconds to fetch all rows of `run_count` runs, then only the rows added since."""
    store = new_store(folder / "fetch")
    run_ids = [store.create_run({"bench": "fetch"}, name=f"run {index}") for index in range(run_count)]
    for run_id in run_ids:
        for start in range(0, points, 1000):
            store.append_metrics(run_id, metric_rows(min(1000, points - start), start))
    connection, _ = raw_connect(store)
    from_start = dict.fromkeys(run_ids, 0)

    expected = sum(len(rows) for rows in raw_fetch(connection, from_start).values())
    got = sum(len(batch.rows) for batch in store.fetch_metrics_since(from_start).values())
    assert got == expected == run_count * points, (got, expected)
    results = {
        "fetch_all": median_ms_pair(
            lambda: store.fetch_metrics_since(from_start), lambda: raw_fetch(connection, from_start), repeats
        )
    }

    latest = {run_id: batch.cursor for run_id, batch in store.fetch_metrics_since(from_start).items()}
    for run_id in run_ids:
        store.append_metrics(run_id, metric_rows(20, points))
    results["fetch_new"] = median_ms_pair(
        lambda: store.fetch_metrics_since(latest), lambda: raw_fetch(connection, latest), repeats * 10
    )
    connection.close()
    store.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="metric rows to append")
    parser.add_argument("--batch", type=int, default=1000, help="rows per append batch")
    parser.add_argument("--runs", type=int, default=8, help="runs to fetch at once")
    parser.add_argument("--points", type=int, default=20_000, help="metric rows per fetched run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved append rounds (best of)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per fetch (median)")
    parser.add_argument("--db", default=None, metavar="URL",
                        help="measure on this database (postgresql+psycopg://...) instead of fresh SQLite files")
    args = parser.parse_args()
    global DB_URL
    DB_URL = args.db
    driver = "sqlite3" if args.db is None else "psycopg"

    with tempfile.TemporaryDirectory(prefix="bench-store-") as scratch:
        folder = Path(scratch)
        append_rate, append_reference_rate = bench_append(folder, args.rows, args.batch, args.rounds)
        fetches = bench_fetch(folder, args.runs, args.points, args.repeats)

    label = f"{args.runs} runs x {args.points}"
    results = [
        {
            "bench": f"append_metrics ({args.rows} rows, batches of {args.batch})",
            "ours": append_rate,
            "reference": append_reference_rate,
            "unit": "rows/s",
        },
        {
            "bench": f"fetch_metrics_since all rows ({label})",
            "ours": fetches["fetch_all"][0],
            "reference": fetches["fetch_all"][1],
            "unit": "ms",
        },
        {
            "bench": f"fetch_metrics_since 20 new rows per run ({label})",
            "ours": fetches["fetch_new"][0],
            "reference": fetches["fetch_new"][1],
            "unit": "ms",
        },
    ]
    print(f"{'benchmark':<60} {'ours':>12} {driver:>12} {'ratio':>7}  unit")
    for result in results:
        result["ratio"] = result["ours"] / result["reference"]
        print(
            f"{result['bench']:<60} {result['ours']:>12.1f} {result['reference']:>12.1f} "
            f"{result['ratio']:>7.2f}  {result['unit']}"
        )
    print(
        f"targets: append >= 0.5x raw {driver}; fetching the new rows of the runs (a chart poll) < 50 ms.\n"
        f"The whole-history fetch (a chart opening) is shown for scale next to raw {driver}."
    )
    print(
        json.dumps(
            [
                {key: (round(value, 3) if isinstance(value, float) else value) for key, value in result.items()}
                for result in results
            ]
        )
    )


if __name__ == "__main__":
    main()
