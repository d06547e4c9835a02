"""The run store: everything a user does (runs, curves, checkpoints, analyses) kept in one database.

Use `open_store(home, db)` to get a `RunStore`; see `storage.store` for the API
and `storage.status` for the run statuses and the moves allowed between them.
"""

from storage.records import METRIC_FIELDS, AnalysisRecord, ArtifactRecord, MetricBatch, RunRecord, SweepRecord
from storage.status import (
    ALL_STATUSES,
    ALLOWED_TRANSITIONS,
    CANCELLED,
    COMPLETED,
    FAILED,
    FINISHED_STATUSES,
    INTERRUPTED,
    QUEUED,
    RUNNING,
)
from storage.store import RunStore, open_store

__all__ = [
    "ALL_STATUSES",
    "ALLOWED_TRANSITIONS",
    "AnalysisRecord",
    "ArtifactRecord",
    "CANCELLED",
    "COMPLETED",
    "FAILED",
    "FINISHED_STATUSES",
    "INTERRUPTED",
    "METRIC_FIELDS",
    "MetricBatch",
    "QUEUED",
    "RUNNING",
    "RunRecord",
    "RunStore",
    "SweepRecord",
    "open_store",
]
