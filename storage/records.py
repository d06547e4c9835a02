"""Plain records the store returns: detached from any session, safe to keep and pass between threads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run as stored; see `storage.schema.Run` for what each field means."""

    id: int
    name: str
    group_name: str | None
    group_kind: str | None
    status: str
    spec: dict[str, Any]
    preset: str | None
    dataset: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    device: str | None
    worker_id: str | None
    heartbeat_at: datetime | None
    iteration: int
    total_iterations: int | None
    epoch: float | None
    best_test_error: float | None
    last_test_error: float | None
    last_train_error: float | None
    images_per_s: float | None
    error_message: str | None
    traceback: str | None
    cancel_requested: bool
    checkpoint_path: str | None
    notes: str
    tags: list[str]
    parent_run_id: int | None
    job_id: str | None
    best_val_error: float | None
    test_error_at_best: float | None


METRIC_FIELDS = ("id", "run_id", "iteration", "epoch", "split", "name", "value", "wall_time")


@dataclass(frozen=True, slots=True)
class MetricBatch:
    """Rows of one run newer than the caller's cursor, and the cursor to pass next time.

    Each row is a named tuple (a SQLAlchemy `Row`, detached from any session)
    with the fields in METRIC_FIELDS; `value` is None where training produced NaN.
    """

    rows: Sequence[Row]
    cursor: int


@dataclass(frozen=True, slots=True)
class ArtifactRecord:
    """A file a run produced."""

    id: int
    run_id: int
    kind: str
    path: str
    size: int | None
    sha256: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class AnalysisRecord:
    """A science tool applied to a run: its job status and, once completed, its result."""

    id: int
    run_id: int
    kind: str
    params: dict[str, Any]
    result: Any
    created_at: datetime
    status: str
    worker_id: str | None
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    progress: float
    cancel_requested: bool
    error_message: str | None
    traceback: str | None


@dataclass(frozen=True, slots=True)
class SweepRecord:
    """A sweep: the spec of the search whose trials are the runs of `group_name`."""

    id: int
    group_name: str
    method: str
    spec: dict[str, Any]
    created_at: datetime
    finished_at: datetime | None
    error_message: str | None
