"""RunStore: the one API the UI, the CLI and the workers use to read and change runs.

Every method runs in its own short transaction and returns plain records
(`storage.records`), never ORM objects tied to a session. File paths inside the home
folder are stored relative to it (a home mounted elsewhere still works) and returned
absolute. Changes of status are
single conditional UPDATEs, so they stay correct when several processes act on
the same run at once. Open one store per process (connections do not survive
a fork).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, case, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from storage.engine import create_store_engine, driver_executemany_sql, writer_engine
from storage.migrate import upgrade_database
from storage.records import METRIC_FIELDS, AnalysisRecord, ArtifactRecord, MetricBatch, RunRecord, SweepRecord
from storage.schema import Analysis, Artifact, Metric, Run, Sweep, utc_now
from storage.status import (
    ALL_STATUSES,
    ALLOWED_TRANSITIONS,
    ARTIFACT_KINDS,
    CANCELLED,
    COMPLETED,
    FINISHED_STATUSES,
    GROUP_KINDS,
    INTERRUPTED,
    METRIC_SPLITS,
    QUEUED,
    RUNNING,
    SWEEP,
    sources_of,
)
from workbench.errors import IllegalTransition, RunNotFound, StoreError
from workbench.paths import database_url, home_dir, runs_dir

logger = logging.getLogger(__name__)

runs = Run.__table__
metrics = Metric.__table__
artifacts = Artifact.__table__
analyses = Analysis.__table__
sweeps = Sweep.__table__

RUN_COLUMNS = tuple(runs.c)
METRIC_COLUMNS = tuple(getattr(metrics.c, field) for field in METRIC_FIELDS)
METRIC_INSERT_KEYS = ("run_id", "iteration", "epoch", "split", "name", "value", "wall_time")

PROGRESS_FIELDS = frozenset({"iteration", "total_iterations", "epoch", "images_per_s"})
TRANSITION_FIELDS = PROGRESS_FIELDS | {
    "device",
    "checkpoint_path",
    "error_message",
    "traceback",
    "best_test_error",
    "last_test_error",
    "last_train_error",
    "best_val_error",
    "test_error_at_best",
}
NAME_MAX_LENGTH = 200
INT_FIELDS = frozenset({"iteration", "total_iterations"})
FLOAT_FIELDS = frozenset({"epoch", "images_per_s", "best_test_error", "last_test_error", "last_train_error",
                          "best_val_error", "test_error_at_best"})
# Integer columns are 32-bit on PostgreSQL; larger progress numbers are stored at this cap.
MAX_STORED_INT = 2**31 - 1
# A running run whose worker sent no heartbeat for this long is taken as dead (its worker heartbeats every second).
DEFAULT_STALE_AFTER_S = 15.0


def open_store(home: str | Path | None = None, db: str | None = None) -> RunStore:
    """Open the run store of a home folder, creating or migrating its database as needed.

    `home` defaults to $WORKBENCH_HOME or ./.workbench; `db` (a SQLAlchemy URL)
    defaults to $WORKBENCH_DATABASE_URL or `<home>/workbench.db`.
    """
    home_path = home_dir(home)
    url = database_url(home_path, db)
    upgrade_database(url)
    return RunStore(create_store_engine(url), home_path)


class RunStore:
    """Runs, their metrics, artifacts and analyses in one database, plus their folders under the home."""

    def __init__(self, engine: Engine, home: Path) -> None:
        """Wrap an engine whose database is already at the newest schema (use `open_store`)."""
        self.engine = engine
        self.home = home
        self._writer = writer_engine(engine)
        self._metric_insert_sql = driver_executemany_sql(engine, insert(metrics), METRIC_INSERT_KEYS)

    @classmethod
    def open(cls, home: str | Path | None = None, db: str | None = None) -> RunStore:
        """Same as `open_store`."""
        return open_store(home, db)

    def close(self) -> None:
        """Close all pooled connections."""
        self.engine.dispose()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def run_dir(self, run_id: int) -> Path:
        """The folder for a run's checkpoints and logs (not created here)."""
        return runs_dir(self.home) / str(run_id)

    # -- creating and reading runs ---------------------------------------------------------

    def create_run(
        self,
        spec: Mapping[str, Any] | Any,
        *,
        name: str,
        group_name: str | None = None,
        group_kind: str | None = None,
        preset: str | None = None,
        dataset: str | None = None,
        total_iterations: int | None = None,
        parent_run_id: int | None = None,
        notes: str = "",
        tags: Sequence[str] = (),
        status: str = QUEUED,
    ) -> int:
        """Store a new run and return its id.

        `spec` is a JSON-compatible mapping or a pydantic model (dumped in JSON
        mode). `group_kind` is one of GROUP_KINDS or None. A run is
        normally created `queued`; any status but `running` is accepted, for
        importing finished runs.
        """
        values = _new_run_values(spec, name=name, group_name=group_name, group_kind=group_kind, preset=preset,
                                 dataset=dataset, total_iterations=total_iterations, parent_run_id=parent_run_id,
                                 notes=notes, tags=tags, status=status)
        try:
            with self._write() as conn:
                result = conn.execute(insert(runs).values(values))
                return result.inserted_primary_key[0]
        except IntegrityError as exc:
            raise RunNotFound(f"parent run {parent_run_id} does not exist") from exc

    def get_run(self, run_id: int) -> RunRecord:
        """The run with this id; RunNotFound if there is none."""
        with self._read() as conn:
            return self._fetch_run(conn, run_id)

    def list_runs(
        self,
        *,
        status: str | Iterable[str] | None = None,
        group_name: str | None = None,
        search: str | None = None,
        limit: int = 500,
        offset: int = 0,
    ) -> list[RunRecord]:
        """Runs newest first, optionally only those with a status (or any of several),
        in a group, or whose name, preset, dataset or notes contain `search` (any case)."""
        query = select(*RUN_COLUMNS)
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            query = query.where(runs.c.status.in_(wanted))
        if group_name is not None:
            query = query.where(runs.c.group_name == group_name)
        if search:
            query = query.where(
                or_(
                    *(
                        column.icontains(search, autoescape=True)
                        for column in (runs.c.name, runs.c.preset, runs.c.dataset, runs.c.notes)
                    )
                )
            )
        query = query.order_by(runs.c.id.desc()).limit(limit).offset(offset)
        with self._read() as conn:
            return [self._run_record(row) for row in conn.execute(query)]

    def list_groups(self) -> list[tuple[str, str | None]]:
        """Distinct (group name, group kind) pairs of stored runs, by name."""
        query = (
            select(runs.c.group_name, runs.c.group_kind)
            .where(runs.c.group_name.is_not(None))
            .distinct()
            .order_by(runs.c.group_name)
        )
        with self._read() as conn:
            return [tuple(row) for row in conn.execute(query)]

    # -- editing ---------------------------------------------------------------------------

    def rename_run(self, run_id: int, name: str) -> None:
        """Give a run a new display name."""
        self._update_run(run_id, name=_checked_name(name))

    def set_notes(self, run_id: int, notes: str) -> None:
        """Replace a run's free-text notes."""
        self._update_run(run_id, notes=notes)

    def set_tags(self, run_id: int, tags: Sequence[str]) -> None:
        """Replace a run's tags (kept in the given order, duplicates dropped)."""
        self._update_run(run_id, tags=_checked_tags(tags))

    # -- the life of a run -----------------------------------------------------------------

    def claim_next_run(
        self,
        worker_id: str,
        device: str | None = None,
        *,
        stale_after_s: float | None = None,
        requeue_interrupted: bool = False,
    ) -> RunRecord | None:
        """Move the oldest queued run to `running` for this worker and return it; None if the queue is empty.

        Two workers never get the same run: the UPDATE only succeeds while the
        run is still queued, and a worker that loses the race tries the next one.
        With `stale_after_s`, running runs without a heartbeat for that long are first
        marked interrupted (as `mark_stale_interrupted` does), and with
        `requeue_interrupted` interrupted runs are queued again (auto-resume), all
        in the same transaction as the claim.
        """
        while True:
            with self._write() as conn:
                if stale_after_s is not None:
                    self._mark_stale(conn, stale_after_s)
                if requeue_interrupted:
                    self._requeue_interrupted(conn)
                # SKIP LOCKED (PostgreSQL; SQLite's write lock already serializes claims): workers racing for
                # the queue each take a different row instead of queueing behind one.
                candidate = conn.scalar(select(runs.c.id).where(runs.c.status == QUEUED).order_by(runs.c.id)
                                        .limit(1).with_for_update(skip_locked=True))
                if candidate is None:
                    return None
                if self._start(conn, candidate, worker_id, device):
                    return self._fetch_run(conn, candidate)
            logger.debug("worker %s lost run %s to another worker; trying the next", worker_id, candidate)

    def claim_run(self, run_id: int, worker_id: str, device: str | None = None) -> RunRecord:
        """Move one given queued run to `running` for this worker (IllegalTransition if it is not queued)."""
        with self._write() as conn:
            if self._start(conn, run_id, worker_id, device):
                return self._fetch_run(conn, run_id)
            raise self._refusal(conn, run_id, RUNNING, worker_id)

    def transition(self, run_id: int, new_status: str, *, worker_id: str | None = None, **fields: Any) -> RunRecord:
        """Move a run to `new_status`, storing `fields` with it, and return the updated run.

        Allowed moves: queued -> running | cancelled; running -> completed | failed |
        cancelled | interrupted; interrupted | cancelled | failed -> queued (resume or
        retry). Anything else raises IllegalTransition naming both statuses. When
        `worker_id` is given, a running run only moves if that worker holds it.
        `fields` may be progress, summary, device, checkpoint_path, error_message
        and traceback. Moving to `running` is done by `claim_run`.
        """
        if new_status not in ALL_STATUSES:
            raise StoreError(f"status {new_status!r} is unknown; use one of {', '.join(ALL_STATUSES)}")
        allowed_fields = {"device"} if new_status == RUNNING else TRANSITION_FIELDS
        unknown = set(fields) - allowed_fields
        if unknown:
            raise TypeError(
                f"transition() got fields it cannot store: {', '.join(sorted(unknown))}; "
                f"allowed: {', '.join(sorted(allowed_fields))}"
            )
        if new_status == RUNNING:
            if worker_id is None:
                raise StoreError(f"run {run_id} needs a worker id to start running; use claim_run")
            return self.claim_run(run_id, worker_id, fields.get("device"))
        values = {**_storable_numbers(fields), "status": new_status, **_entry_values(new_status)}
        if "checkpoint_path" in values:
            values["checkpoint_path"] = self._relative(values["checkpoint_path"])
        conditions = [runs.c.id == run_id, runs.c.status.in_(sources_of(new_status))]
        if worker_id is not None:
            conditions.append(or_(runs.c.status != RUNNING, runs.c.worker_id == worker_id))
        with self._write() as conn:
            if conn.execute(update(runs).where(*conditions).values(values)).rowcount != 1:
                raise self._refusal(conn, run_id, new_status, worker_id)
            return self._fetch_run(conn, run_id)

    def heartbeat(
        self,
        run_id: int,
        worker_id: str,
        *,
        iteration: int | None = None,
        total_iterations: int | None = None,
        epoch: float | None = None,
        images_per_s: float | None = None,
    ) -> bool:
        """Record that the worker is alive (and its progress); return whether cancel was requested.

        Raises IllegalTransition when the run is no longer running under this
        worker (for example it was marked interrupted as stale): the worker should stop.
        """
        progress = {
            "iteration": iteration,
            "total_iterations": total_iterations,
            "epoch": epoch,
            "images_per_s": images_per_s,
        }
        values = {key: value for key, value in _storable_numbers(progress).items() if value is not None}
        values["heartbeat_at"] = utc_now()
        with self._write() as conn:
            result = conn.execute(
                update(runs)
                .where(runs.c.id == run_id, runs.c.status == RUNNING, runs.c.worker_id == worker_id)
                .values(values)
            )
            if result.rowcount != 1:
                current = conn.execute(select(runs.c.status, runs.c.worker_id).where(runs.c.id == run_id)).first()
                if current is None:
                    raise _not_found(run_id)
                raise IllegalTransition(
                    f"run {run_id} is no longer running under worker {worker_id} "
                    f"(it is {current.status}, worker {current.worker_id}); stop working on it"
                )
            return bool(conn.scalar(select(runs.c.cancel_requested).where(runs.c.id == run_id)))

    def update_summary(self, run_id: int, *, train_error: float | None = None, test_error: float | None = None,
                       best_val_error: float | None = None, test_error_at_best: float | None = None) -> None:
        """Record the latest train/test error; the best test error keeps the lowest seen. `best_val_error` and
        `test_error_at_best` describe the best checkpoint as the training loop chose it, and are written as given."""
        values: dict[str, Any] = {}
        train_error, test_error = _storable_float(train_error), _storable_float(test_error)
        if train_error is not None:
            values["last_train_error"] = train_error
        if test_error is not None:
            values["last_test_error"] = test_error
            values["best_test_error"] = _lowest(runs.c.best_test_error, test_error)
        for key, value in (("best_val_error", best_val_error), ("test_error_at_best", test_error_at_best)):
            if _storable_float(value) is not None:
                values[key] = _storable_float(value)
        if values:
            self._update_run(run_id, **values)

    def request_cancel(
        self, run_id: int, *, stale_after_s: float = DEFAULT_STALE_AFTER_S, reason: str | None = None
    ) -> str:
        """Cancel a run and return its status afterwards.

        A queued run becomes `cancelled` at once, and so does a running run whose worker
        sent no heartbeat for `stale_after_s` seconds (nobody would read a flag); a
        running run gets a flag its worker sees at the next heartbeat, and the worker
        then checkpoints and moves it to `cancelled`. `reason` (a pruned sweep trial's)
        is kept as the run's message. Finished runs raise IllegalTransition.
        """
        message = {} if reason is None else {"error_message": reason}
        with self._write() as conn:
            cancelled_now = conn.execute(
                update(runs)
                .where(runs.c.id == run_id, or_(runs.c.status == QUEUED, _stale_condition(stale_after_s)))
                .values(status=CANCELLED, **_entry_values(CANCELLED), **message)
            ).rowcount
            if cancelled_now:
                return CANCELLED
            flagged = conn.execute(
                update(runs).where(runs.c.id == run_id, runs.c.status == RUNNING)
                .values(cancel_requested=True, **message)
            ).rowcount
            if flagged:
                return RUNNING
            status = conn.scalar(select(runs.c.status).where(runs.c.id == run_id))
            if status is None:
                raise _not_found(run_id)
            raise IllegalTransition(f"run {run_id} is {status}; only queued or running runs can be cancelled")

    def is_cancel_requested(self, run_id: int) -> bool:
        """Whether someone asked to cancel this run."""
        with self._read() as conn:
            flag = conn.scalar(select(runs.c.cancel_requested).where(runs.c.id == run_id))
        if flag is None:
            raise _not_found(run_id)
        return bool(flag)

    def assign_job(self, run_id: int, job_id: str) -> bool:
        """Record the cluster job about to execute a queued run; False when the run is no longer queued or
        already has a job (another dispatcher took it), so a run is submitted once."""
        with self._write() as conn:
            return conn.execute(
                update(runs).where(runs.c.id == run_id, runs.c.status == QUEUED, runs.c.job_id.is_(None))
                .values(job_id=job_id)
            ).rowcount == 1

    def release_job(self, run_id: int, job_id: str, message: str | None = None) -> bool:
        """Forget the job of a still queued run (it was never submitted, or the cluster lost it) so it is
        submitted again; `message` says why. False when the run moved on meanwhile."""
        with self._write() as conn:
            return conn.execute(
                update(runs).where(runs.c.id == run_id, runs.c.status == QUEUED, runs.c.job_id == job_id)
                .values(job_id=None, error_message=message)
            ).rowcount == 1

    def note_waiting(self, run_id: int, message: str | None) -> None:
        """Say why a queued run has not started yet (e.g. no node has the GPUs it asks for); cleared when it starts."""
        with self._write() as conn:
            conn.execute(update(runs).where(runs.c.id == run_id, runs.c.status == QUEUED)
                         .values(error_message=message))

    def find_stale_runs(self, older_than_s: float) -> list[RunRecord]:
        """Running runs whose last heartbeat is older than `older_than_s` seconds."""
        with self._read() as conn:
            rows = conn.execute(select(*RUN_COLUMNS).where(_stale_condition(older_than_s)).order_by(runs.c.id))
            return [self._run_record(row) for row in rows]

    def mark_stale_interrupted(self, older_than_s: float) -> list[int]:
        """Move running runs with no heartbeat for `older_than_s` seconds to `interrupted`; return their ids.

        They can then be resumed (interrupted -> queued) from their last checkpoint. A stale
        run whose cancel was requested becomes `cancelled` instead (and is not in the list).
        Each move is a conditional UPDATE, so two processes never both take the same run.
        Any process that reads runs (a worker, the app, `runs`, `resume`) calls this.
        """
        with self._read() as conn:
            if conn.scalar(select(runs.c.id).where(_stale_condition(older_than_s)).limit(1)) is None:
                return []
        with self._write() as conn:
            return self._mark_stale(conn, older_than_s)

    def requeue_interrupted(self) -> list[int]:
        """Queue every interrupted run again (auto-resume); return their ids."""
        with self._read() as conn:
            if conn.scalar(select(runs.c.id).where(runs.c.status == INTERRUPTED).limit(1)) is None:
                return []
        with self._write() as conn:
            return self._requeue_interrupted(conn)

    def resume_run(self, run_id: int, *, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> RunRecord:
        """Queue an interrupted, cancelled or failed run again; return it.

        A run still `running` whose heartbeat is older than `stale_after_s` is first
        marked interrupted (its worker is gone), so it can be resumed at once.
        """
        self.mark_stale_interrupted(stale_after_s)
        return self.transition(run_id, QUEUED)

    def delete_run(self, run_id: int) -> None:
        """Delete a run with its metrics, artifacts and analyses, its run folder and its artifact files.

        Refused while the run is running (cancel it first). Artifact files outside
        the home folder are left in place.
        """
        with self._write() as conn:
            paths = [self._absolute(path) for path in conn.scalars(select(artifacts.c.path)
                                                                   .where(artifacts.c.run_id == run_id))]
            deleted = conn.execute(delete(runs).where(runs.c.id == run_id, runs.c.status != RUNNING)).rowcount
            if not deleted:
                status = conn.scalar(select(runs.c.status).where(runs.c.id == run_id))
                if status is None:
                    raise _not_found(run_id)
                raise StoreError(
                    f"run {run_id} is running and cannot be deleted; cancel it, wait until it "
                    "has stopped, then delete it"
                )
        self._remove_files(run_id, paths)

    # -- metrics ---------------------------------------------------------------------------

    def append_metrics(
        self, run_id: int, rows: Iterable[Mapping[str, Any]], *, worker_id: str | None = None
    ) -> int:
        """Store a batch of metric rows in one transaction; return how many.

        Each row has `iteration`, `split` (train/test/val), `name` and `value`,
        and may have `epoch` and `wall_time` (Unix seconds, default now). NaN
        values are stored as None. The batch is stored whole or not at all.
        With `worker_id`, the batch is only stored while the run is running under
        that worker (IllegalTransition otherwise), so a worker that lost its run
        never adds rows after another worker has resumed it.
        """
        params = _metric_params(run_id, rows)
        if not params:
            return 0
        try:
            with self._write() as conn:
                if worker_id is not None:
                    owner = conn.execute(select(runs.c.status, runs.c.worker_id).where(runs.c.id == run_id)).first()
                    if owner is None:
                        raise _not_found(run_id)
                    if owner.status != RUNNING or owner.worker_id != worker_id:
                        raise IllegalTransition(
                            f"run {run_id} is no longer running under worker {worker_id} (it is {owner.status}, "
                            f"worker {owner.worker_id}); its metrics were not stored"
                        )
                if self._metric_insert_sql is not None:
                    conn.exec_driver_sql(self._metric_insert_sql, params)
                else:
                    conn.execute(insert(metrics), [dict(zip(METRIC_INSERT_KEYS, row, strict=True)) for row in params])
        except IntegrityError as exc:
            raise _not_found(run_id) from exc
        return len(params)

    def delete_metrics_after(self, run_id: int, iteration: int) -> int:
        """Remove a run's metric rows logged after `iteration` (a resumed run re-logs them); return how many."""
        with self._write() as conn:
            return conn.execute(
                delete(metrics).where(metrics.c.run_id == run_id, metrics.c.iteration > iteration)
            ).rowcount

    def fetch_metrics_since(
        self, cursors: Mapping[int, int], names: Iterable[str] | None = None, splits: Iterable[str] | None = None
    ) -> dict[int, MetricBatch]:
        """For each run id in `cursors`, its metric rows with id above the cursor, in id order.

        Start with cursor 0 and pass back each batch's `cursor` to get only newer
        rows next time (use the same `names` and `splits` filters each time). All runs
        are read from one consistent snapshot.
        """
        wanted_names = None if names is None else list(names)
        wanted_splits = None if splits is None else list(splits)
        batches = {}
        with self._read() as conn:
            for run_id, after_id in cursors.items():
                query = select(*METRIC_COLUMNS).where(metrics.c.run_id == run_id, metrics.c.id > after_id)
                if wanted_names is not None:
                    query = query.where(metrics.c.name.in_(wanted_names))
                if wanted_splits is not None:
                    query = query.where(metrics.c.split.in_(wanted_splits))
                rows = conn.execute(query.order_by(metrics.c.id)).all()
                batches[run_id] = MetricBatch(rows, rows[-1].id if rows else after_id)
        return batches

    def latest_metric_values(self, run_ids: Iterable[int], name: str) -> dict[int, float]:
        """The newest stored value of metric `name` of each of these runs that has one (one query)."""
        wanted = list(run_ids)
        if not wanted:
            return {}
        newest = (select(func.max(metrics.c.id)).where(metrics.c.run_id.in_(wanted), metrics.c.name == name)
                  .group_by(metrics.c.run_id))
        with self._read() as conn:
            rows = conn.execute(select(metrics.c.run_id, metrics.c.value).where(metrics.c.id.in_(newest))).all()
        return {row.run_id: row.value for row in rows if row.value is not None}

    # -- artifacts and analyses --------------------------------------------------------------

    def add_artifact(
        self,
        run_id: int,
        kind: str,
        path: str | Path,
        *,
        size: int | None = None,
        sha256: str | None = None,
        resumable: bool | None = None,
    ) -> int:
        """Record a file a run produced and return the artifact id.

        Size and SHA-256 are read from the file when not given. Recording a path
        the run already has updates that artifact (a checkpoint rewritten every
        epoch stays one row). A `checkpoint` also becomes the run's checkpoint to
        resume from unless `resumable=False` (a best-so-far snapshot).
        """
        if kind not in ARTIFACT_KINDS:
            raise StoreError(f"artifact kind {kind!r} is unknown; use one of {', '.join(ARTIFACT_KINDS)}")
        file_path = Path(path).resolve()
        if size is None or sha256 is None:
            if not file_path.is_file():
                raise StoreError(f"artifact file {file_path} does not exist; write it before recording it")
            size = file_path.stat().st_size if size is None else size
            sha256 = _sha256_of(file_path) if sha256 is None else sha256
        stored_path = self._relative(file_path)
        values = {
            "run_id": run_id,
            "kind": kind,
            "path": stored_path,
            "size": size,
            "sha256": sha256,
            "created_at": utc_now(),
        }
        if resumable is None:
            resumable = kind == "checkpoint"
        try:
            with self._write() as conn:
                artifact_id = conn.scalar(
                    select(artifacts.c.id).where(artifacts.c.run_id == run_id, artifacts.c.path == stored_path)
                )
                if artifact_id is None:
                    artifact_id = conn.execute(insert(artifacts).values(values)).inserted_primary_key[0]
                else:
                    conn.execute(update(artifacts).where(artifacts.c.id == artifact_id).values(values))
                if resumable:
                    conn.execute(update(runs).where(runs.c.id == run_id).values(checkpoint_path=stored_path))
                return artifact_id
        except IntegrityError as exc:
            raise _not_found(run_id) from exc

    def list_artifacts(self, run_id: int, kind: str | None = None) -> list[ArtifactRecord]:
        """A run's artifacts, oldest first, optionally of one kind."""
        query = select(*artifacts.c).where(artifacts.c.run_id == run_id)
        if kind is not None:
            query = query.where(artifacts.c.kind == kind)
        with self._read() as conn:
            return [ArtifactRecord(**{**row._mapping, "path": self._absolute(row.path)})
                    for row in conn.execute(query.order_by(artifacts.c.id))]

    def add_analysis(self, run_id: int, kind: str, params: Mapping[str, Any], result: Any) -> int:
        """Store a finished analysis (computed outside the job queue) and return its id."""
        now = utc_now()
        values = {
            **self._analysis_values(run_id, kind, params), "result": _json_checked(result, "analysis result"),
            "status": COMPLETED, "started_at": now, "finished_at": now, "progress": 1.0,
        }
        return self._insert_analysis(run_id, values)

    def create_analysis(self, run_id: int, kind: str, params: Mapping[str, Any]) -> int:
        """Queue an analysis of a run for the workers; returns its id."""
        return self._insert_analysis(run_id, {**self._analysis_values(run_id, kind, params), "status": QUEUED})

    def get_analysis(self, analysis_id: int) -> AnalysisRecord:
        with self._read() as conn:
            return self._fetch_analysis(conn, analysis_id)

    def list_analyses(
        self, run_id: int | None = None, kind: str | None = None, status: str | Iterable[str] | None = None,
    ) -> list[AnalysisRecord]:
        """Analyses oldest first: of one run, of one kind, with a status (or any of several)."""
        query = select(*analyses.c)
        if run_id is not None:
            query = query.where(analyses.c.run_id == run_id)
        if kind is not None:
            query = query.where(analyses.c.kind == kind)
        if status is not None:
            query = query.where(analyses.c.status.in_([status] if isinstance(status, str) else list(status)))
        with self._read() as conn:
            return [AnalysisRecord(**row._mapping) for row in conn.execute(query.order_by(analyses.c.id))]

    def claim_next_analysis(self, worker_id: str, *, stale_after_s: float | None = None) -> AnalysisRecord | None:
        """Move the oldest queued analysis to `running` for this worker and return it; None if there is none.

        With `stale_after_s`, running analyses without a heartbeat for that long are first queued again.
        """
        if stale_after_s is not None:
            self.requeue_stale_analyses(stale_after_s)
        while True:
            with self._write() as conn:
                candidate = conn.scalar(
                    select(analyses.c.id).where(analyses.c.status == QUEUED).order_by(analyses.c.id).limit(1)
                    .with_for_update(skip_locked=True)
                )
                if candidate is None:
                    return None
                try:
                    return self._claim_analysis(conn, candidate, worker_id)
                except IllegalTransition:
                    continue

    def claim_analysis(self, analysis_id: int, worker_id: str) -> AnalysisRecord:
        """Move one given queued analysis to `running` for this worker (IllegalTransition if it is not queued)."""
        with self._write() as conn:
            return self._claim_analysis(conn, analysis_id, worker_id)

    def analysis_heartbeat(self, analysis_id: int, worker_id: str, progress: float | None = None) -> bool:
        """Record that the worker is alive (and the share done); return whether cancel was requested.

        Raises IllegalTransition when the analysis is no longer running under this worker.
        """
        values: dict[str, Any] = {"heartbeat_at": utc_now()}
        if progress is not None and math.isfinite(progress):
            values["progress"] = min(1.0, max(0.0, float(progress)))
        with self._write() as conn:
            self._update_owned_analysis(
                conn, analysis_id, worker_id, values,
                "is no longer running under worker {worker} (it is {status}); stop working on it")
            return bool(conn.scalar(select(analyses.c.cancel_requested).where(analyses.c.id == analysis_id)))

    def finish_analysis(
        self, analysis_id: int, worker_id: str, status: str, *, result: Any = None, error_message: str | None = None,
        traceback: str | None = None,
    ) -> AnalysisRecord:
        """Move a running analysis of this worker to completed (with its result), failed or cancelled."""
        if status not in FINISHED_STATUSES:
            raise StoreError(f"an analysis finishes as one of {', '.join(sorted(FINISHED_STATUSES))}, not {status!r}")
        values = {"status": status, "finished_at": utc_now(), "error_message": error_message, "traceback": traceback}
        if status == COMPLETED:
            values.update(result=_json_checked(result, "analysis result"), progress=1.0)
        with self._write() as conn:
            self._update_owned_analysis(conn, analysis_id, worker_id, values,
                                        f"cannot go from {{status}} to {status} for worker {{worker}}")
            return self._fetch_analysis(conn, analysis_id)

    def _update_owned_analysis(self, conn: Connection, analysis_id: int, worker_id: str, values: dict[str, Any],
                               refusal: str) -> None:
        """Update an analysis only while it runs under this worker; otherwise IllegalTransition with `refusal`
        (formatted with the current `status` and the `worker`)."""
        owned = (analyses.c.id == analysis_id, analyses.c.status == RUNNING, analyses.c.worker_id == worker_id)
        if conn.execute(update(analyses).where(*owned).values(values)).rowcount != 1:
            current = self._fetch_analysis(conn, analysis_id)
            raise IllegalTransition(
                f"analysis {analysis_id} " + refusal.format(status=current.status, worker=worker_id))

    def request_analysis_cancel(self, analysis_id: int) -> str:
        """Cancel a queued analysis now, or flag a running one for its worker; returns its status afterwards."""
        with self._write() as conn:
            if conn.execute(
                update(analyses).where(analyses.c.id == analysis_id, analyses.c.status == QUEUED)
                .values(status=CANCELLED, finished_at=utc_now())
            ).rowcount:
                return CANCELLED
            if conn.execute(
                update(analyses).where(analyses.c.id == analysis_id, analyses.c.status == RUNNING)
                .values(cancel_requested=True)
            ).rowcount:
                return RUNNING
            current = self._fetch_analysis(conn, analysis_id)
            raise IllegalTransition(f"analysis {analysis_id} is {current.status}; only a queued or running one "
                                    "can be cancelled")

    def release_analysis(self, analysis_id: int, worker_id: str) -> None:
        """Queue again an analysis this worker holds but will not finish (the worker is stopping)."""
        with self._write() as conn:
            conn.execute(update(analyses).where(
                analyses.c.id == analysis_id, analyses.c.status == RUNNING, analyses.c.worker_id == worker_id,
            ).values(status=QUEUED, worker_id=None, heartbeat_at=None, started_at=None, progress=0.0))

    def requeue_stale_analyses(self, older_than_s: float) -> list[int]:
        """Queue again the running analyses whose worker stopped heartbeating (an analysis keeps no partial
        state, so it simply starts over); returns their ids. Atomic: two callers never both requeue one."""
        cutoff = utc_now() - timedelta(seconds=older_than_s)
        beat = analyses.c.heartbeat_at
        stale = (analyses.c.status == RUNNING) & or_(beat.is_(None), beat < cutoff)
        with self._read() as conn:
            if conn.scalar(select(analyses.c.id).where(stale).limit(1)) is None:
                return []
        with self._write() as conn:
            ids = list(conn.scalars(select(analyses.c.id).where(stale)))
            if ids:
                conn.execute(update(analyses).where(analyses.c.id.in_(ids), stale).values(
                    status=QUEUED, worker_id=None, heartbeat_at=None, started_at=None, progress=0.0,
                    error_message="its worker stopped; queued again to start over"))
        if ids:
            logger.warning("queued stale analyses again: %s", ids)
        return ids

    def _claim_analysis(self, conn: Connection, analysis_id: int, worker_id: str) -> AnalysisRecord:
        started = conn.execute(
            update(analyses).where(analyses.c.id == analysis_id, analyses.c.status == QUEUED)
            .values(status=RUNNING, worker_id=worker_id, **_entry_values(RUNNING), progress=0.0)
        ).rowcount
        current = self._fetch_analysis(conn, analysis_id)
        if not started:
            raise IllegalTransition(f"analysis {analysis_id} is {current.status}, not queued; it cannot be claimed")
        return current

    def _analysis_values(self, run_id: int, kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"run_id": run_id, "kind": kind, "params": _json_checked(dict(params), "analysis params"),
                "created_at": utc_now()}

    def _insert_analysis(self, run_id: int, values: dict[str, Any]) -> int:
        try:
            with self._write() as conn:
                return conn.execute(insert(analyses).values(values)).inserted_primary_key[0]
        except IntegrityError as exc:
            raise _not_found(run_id) from exc

    def _fetch_analysis(self, conn: Connection, analysis_id: int) -> AnalysisRecord:
        row = conn.execute(select(*analyses.c).where(analyses.c.id == analysis_id)).first()
        if row is None:
            raise StoreError(f"analysis {analysis_id} does not exist (its run may have been deleted)")
        return AnalysisRecord(**row._mapping)

    # -- sweeps ------------------------------------------------------------------------------

    def create_sweep(self, group_name: str, method: str, spec: Mapping[str, Any] | Any) -> int:
        """Record the sweep behind the group `group_name` (before its trials are queued); returns its id."""
        values = {"group_name": _checked_name(group_name), "method": method,
                  "spec": _spec_as_json(spec), "created_at": utc_now()}
        try:
            with self._write() as conn:
                return conn.execute(insert(sweeps).values(values)).inserted_primary_key[0]
        except IntegrityError:
            raise StoreError(f"a sweep named {group_name!r} exists already; give the new one another name") from None

    def get_sweep(self, group_name: str) -> SweepRecord | None:
        """The sweep behind a group, None when the group is not a sweep."""
        with self._read() as conn:
            row = conn.execute(select(*sweeps.c).where(sweeps.c.group_name == group_name)).first()
        return None if row is None else SweepRecord(**row._mapping)

    def unfinished_sweeps(self) -> list[SweepRecord]:
        """The sweeps still being stepped, oldest first."""
        query = select(*sweeps.c).where(sweeps.c.finished_at.is_(None)).order_by(sweeps.c.id)
        with self._read() as conn:
            return [SweepRecord(**row._mapping) for row in conn.execute(query)]

    def finish_sweep(self, sweep_id: int, error_message: str | None = None) -> None:
        """Stop stepping a sweep: all its trials ended, or (with `error_message`) it cannot go on."""
        with self._write() as conn:
            conn.execute(update(sweeps).where(sweeps.c.id == sweep_id, sweeps.c.finished_at.is_(None))
                         .values(finished_at=utc_now(), error_message=error_message))

    def add_sweep_trial(
        self, sweep_id: int, spec: Mapping[str, Any] | Any, *, name: str, preset: str | None = None,
        expected_trials: int, max_in_flight: int,
    ) -> int | None:
        """Queue a trial of an unfinished sweep while its group has exactly `expected_trials` runs (the ones the
        trial was chosen from) and fewer than `max_in_flight` queued, running or interrupted ones; returns the run
        id, or None when nothing was added.

        The counts and the insert are one transaction holding the sweep's row, so processes stepping the same
        sweep at once never add the same trial twice."""
        with self._write() as conn:
            sweep = conn.execute(select(sweeps.c.group_name, sweeps.c.finished_at).where(sweeps.c.id == sweep_id)
                                 .with_for_update()).first()
            if sweep is None or sweep.finished_at is not None:
                return None
            statuses = list(conn.scalars(select(runs.c.status).where(runs.c.group_name == sweep.group_name)))
            in_flight = sum(status in (QUEUED, RUNNING, INTERRUPTED) for status in statuses)
            if len(statuses) != expected_trials or in_flight >= max_in_flight:
                return None
            values = _new_run_values(spec, name=name, group_name=sweep.group_name, group_kind=SWEEP, preset=preset,
                                     dataset=_spec_as_json(spec)["data"]["name"], total_iterations=None,
                                     parent_run_id=None, notes="", tags=(), status=QUEUED)
            return conn.execute(insert(runs).values(values)).inserted_primary_key[0]

    # -- internals ---------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A transaction that holds the write lock from its start (BEGIN IMMEDIATE on SQLite)."""
        with self._writer.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read-only snapshot; rolled back at the end."""
        with self.engine.connect() as conn:
            yield conn

    def _fetch_run(self, conn: Connection, run_id: int) -> RunRecord:
        row = conn.execute(select(*RUN_COLUMNS).where(runs.c.id == run_id)).first()
        if row is None:
            raise _not_found(run_id)
        return self._run_record(row)

    def _run_record(self, row: Any) -> RunRecord:
        values = dict(row._mapping)
        values["checkpoint_path"] = self._absolute(values["checkpoint_path"])
        return RunRecord(**values)

    def _relative(self, path: str | Path | None) -> str | None:
        """How a path is stored: relative to the home folder when inside it, else absolute."""
        if path is None:
            return None
        resolved = Path(path).resolve()
        home = self.home.resolve()
        return resolved.relative_to(home).as_posix() if resolved.is_relative_to(home) else str(resolved)

    def _absolute(self, stored: str | None) -> str | None:
        """A stored path as an absolute path under this store's home."""
        return None if stored is None else str(self.home / stored)

    def _update_run(self, run_id: int, **values: Any) -> None:
        with self._write() as conn:
            if conn.execute(update(runs).where(runs.c.id == run_id).values(values)).rowcount != 1:
                raise _not_found(run_id)

    def _mark_stale(self, conn: Connection, older_than_s: float) -> list[int]:
        """In a write transaction: stale running runs become interrupted (cancelled if a cancel was asked)."""
        marked = []
        stale = conn.execute(
            select(runs.c.id, runs.c.worker_id, runs.c.heartbeat_at, runs.c.cancel_requested)
            .where(_stale_condition(older_than_s))
            .order_by(runs.c.id)
        ).all()
        for run in stale:
            last_seen = _utc_text(run.heartbeat_at) if run.heartbeat_at else "never"
            if run.cancel_requested:
                status = CANCELLED
                message = f"cancelled; worker {run.worker_id} had stopped sending heartbeats (last: {last_seen})"
            else:
                status = INTERRUPTED
                message = (
                    f"worker {run.worker_id} stopped sending heartbeats (last: {last_seen}); "
                    "resume the run to continue from its last checkpoint"
                )
            result = conn.execute(
                update(runs)
                .where(runs.c.id == run.id, _stale_condition(older_than_s))
                .values(status=status, error_message=message, **_entry_values(status))
            )
            if result.rowcount == 1:
                logger.warning("run %d: %s", run.id, message)
                if status == INTERRUPTED:
                    marked.append(run.id)
        return marked

    def _requeue_interrupted(self, conn: Connection) -> list[int]:
        """In a write transaction: interrupted runs go back to the queue."""
        ids = list(conn.scalars(select(runs.c.id).where(runs.c.status == INTERRUPTED).order_by(runs.c.id)))
        requeued = []
        for run_id in ids:
            result = conn.execute(
                update(runs)
                .where(runs.c.id == run_id, runs.c.status == INTERRUPTED)
                .values(status=QUEUED, **_entry_values(QUEUED))
            )
            if result.rowcount == 1:
                requeued.append(run_id)
        if requeued:
            logger.info("queued interrupted runs again to resume from their checkpoints: %s", requeued)
        return requeued

    def _start(self, conn: Connection, run_id: int, worker_id: str, device: str | None) -> bool:
        values = {"status": RUNNING, "worker_id": worker_id, **_entry_values(RUNNING)}
        if device is not None:
            values["device"] = device
        result = conn.execute(update(runs).where(runs.c.id == run_id, runs.c.status == QUEUED).values(values))
        return result.rowcount == 1

    def _refusal(self, conn: Connection, run_id: int, new_status: str, worker_id: str | None) -> StoreError:
        """The error explaining why a conditional status update changed nothing."""
        current = conn.execute(select(runs.c.status, runs.c.worker_id).where(runs.c.id == run_id)).first()
        if current is None:
            return _not_found(run_id)
        if current.status in sources_of(new_status):
            return IllegalTransition(
                f"run {run_id} is running under worker {current.worker_id}, not {worker_id}; "
                f"only its own worker can move it to {new_status}"
            )
        allowed = ", ".join(sorted(ALLOWED_TRANSITIONS[current.status])) or "no other status"
        return IllegalTransition(
            f"run {run_id} cannot go from {current.status} to {new_status}; "
            f"from {current.status} it can go to {allowed}"
        )

    def _remove_files(self, run_id: int, artifact_paths: list[str]) -> None:
        """Remove a deleted run's folder and its artifact files inside the home folder."""
        folder = self.run_dir(run_id)
        home = self.home.resolve()
        try:
            if folder.exists():
                shutil.rmtree(folder)
            for raw_path in artifact_paths:
                path = Path(raw_path)
                if not path.is_relative_to(home):
                    logger.info("run %s: leaving artifact %s in place (outside %s)", run_id, path, home)
                elif path.is_file():
                    path.unlink()
        except OSError as exc:
            raise StoreError(
                f"run {run_id} was deleted, but {exc.filename} could not be removed ({exc.strerror}); remove it by hand"
            ) from exc


def _new_run_values(spec: Mapping[str, Any] | Any, *, name: str, group_name: str | None, group_kind: str | None,
                    preset: str | None, dataset: str | None, total_iterations: int | None, parent_run_id: int | None,
                    notes: str, tags: Sequence[str], status: str) -> dict[str, Any]:
    """The checked column values of a new run (see `RunStore.create_run`)."""
    spec_data = _spec_as_json(spec)
    if status not in ALL_STATUSES or status == RUNNING:
        raise StoreError(
            f"a new run cannot start as {status!r}; use one of "
            f"{', '.join(s for s in ALL_STATUSES if s != RUNNING)} (workers claim queued runs)"
        )
    if group_kind is not None and group_kind not in GROUP_KINDS:
        raise StoreError(f"group kind {group_kind!r} is unknown; use one of {', '.join(GROUP_KINDS)}")
    values = {
        "name": _checked_name(name),
        "group_name": group_name,
        "group_kind": group_kind,
        "status": status,
        "spec": spec_data,
        "preset": preset,
        "dataset": dataset,
        "created_at": utc_now(),
        "total_iterations": _storable_int(total_iterations),
        "parent_run_id": parent_run_id,
        "notes": notes,
        "tags": _checked_tags(tags),
    }
    if status in FINISHED_STATUSES:
        values["finished_at"] = values["created_at"]
    return values


def _entry_values(status: str) -> dict[str, Any]:
    """Columns set whenever a run enters `status`."""
    now = utc_now()
    if status == RUNNING:
        return {
            "started_at": now,
            "heartbeat_at": now,
            "finished_at": None,
            "cancel_requested": False,
            "error_message": None,
            "traceback": None,
        }
    if status == QUEUED:
        return {
            "worker_id": None,
            "job_id": None,
            "heartbeat_at": None,
            "started_at": None,
            "finished_at": None,
            "cancel_requested": False,
            "error_message": None,
            "traceback": None,
        }
    return {"finished_at": now}


def _stale_condition(older_than_s: float) -> ColumnElement[bool]:
    cutoff = utc_now() - timedelta(seconds=older_than_s)
    return (runs.c.status == RUNNING) & or_(runs.c.heartbeat_at.is_(None), runs.c.heartbeat_at < cutoff)


def _storable_int(value: Any) -> int | None:
    """An integer progress number the database can hold: clamped to 0..MAX_STORED_INT; None for NaN or non-numbers."""
    if value is None:
        return None
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    except (TypeError, ValueError):
        return None
    if math.isnan(number):
        return None
    if number >= MAX_STORED_INT:
        return MAX_STORED_INT
    return max(int(value) if isinstance(value, int) else int(number), 0)


def _storable_float(value: Any) -> float | None:
    """A finite float, or None for NaN, infinities and things that are not numbers."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _storable_numbers(fields: Mapping[str, Any]) -> dict[str, Any]:
    """`fields` with progress and summary numbers made storable, so a heartbeat or a move never fails on them.

    A number that cannot be stored at all (NaN, not a number) is left out rather than written as NULL.
    """
    cleaned = dict(fields)
    for key, value in fields.items():
        if key in INT_FIELDS or key in FLOAT_FIELDS:
            stored = _storable_int(value) if key in INT_FIELDS else _storable_float(value)
            if stored is None and value is not None:
                del cleaned[key]
            else:
                cleaned[key] = stored
    return cleaned


def _lowest(column: ColumnElement[float], value: float) -> ColumnElement[float]:
    """SQL for min(column, value) that treats a NULL column as 'no value yet'."""
    return case((column.is_(None), value), (column > value, value), else_=column)


def _metric_params(run_id: int, rows: Iterable[Mapping[str, Any]]) -> list[tuple]:
    """Checked rows as tuples in METRIC_INSERT_KEYS order (numpy scalars become Python numbers)."""
    now = time.time()
    params: list[tuple] = []
    try:
        for row in rows:
            value = float(row["value"])
            epoch = row.get("epoch")
            wall_time = row.get("wall_time")
            params.append(
                (
                    run_id,
                    int(row["iteration"]),
                    None if epoch is None else float(epoch),
                    row["split"],
                    row["name"],
                    None if math.isnan(value) else value,
                    now if wall_time is None else float(wall_time),
                )
            )
    except KeyError as exc:
        raise StoreError(
            f"metric row {len(params)} lacks {exc.args[0]!r}; each row needs iteration, split, name and value"
        ) from exc
    except (TypeError, ValueError) as exc:
        raise StoreError(f"metric row {len(params)} has a field that is not a number: {exc}") from exc
    bad_splits = {row[3] for row in params} - set(METRIC_SPLITS)
    if bad_splits:
        raise StoreError(f"metric split {sorted(bad_splits)[0]!r} is unknown; use one of {', '.join(METRIC_SPLITS)}")
    return params


def _not_found(run_id: int) -> RunNotFound:
    return RunNotFound(f"run {run_id} does not exist (it may have been deleted)")


def _checked_name(name: str) -> str:
    cleaned = name.strip()
    if not cleaned:
        raise StoreError("a run name cannot be empty")
    if len(cleaned) > NAME_MAX_LENGTH:
        raise StoreError(f"a run name can have at most {NAME_MAX_LENGTH} characters (got {len(cleaned)})")
    return cleaned


def _checked_tags(tags: Sequence[str]) -> list[str]:
    if isinstance(tags, str):
        raise StoreError(f"tags must be a list of strings, not the single string {tags!r}")
    cleaned = [tag.strip() for tag in tags if tag.strip()]
    return list(dict.fromkeys(cleaned))


def _spec_as_json(spec: Mapping[str, Any] | Any) -> dict[str, Any]:
    if hasattr(spec, "model_dump"):
        spec = spec.model_dump(mode="json")
    if not isinstance(spec, Mapping):
        raise StoreError(f"a run spec must be a mapping or a pydantic model, not {type(spec).__name__}")
    return _json_checked(dict(spec), "run spec")


def _json_checked(value: Any, what: str) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what} cannot be stored as JSON: {exc}") from exc
    return value


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _utc_text(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"
