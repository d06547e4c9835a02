"""Run statuses, the moves allowed between them, and the other small vocabularies the store accepts."""

from __future__ import annotations

QUEUED = "queued"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
INTERRUPTED = "interrupted"

ALL_STATUSES = (QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED, INTERRUPTED)
FINISHED_STATUSES = frozenset({COMPLETED, FAILED, CANCELLED, INTERRUPTED})

ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({RUNNING, CANCELLED}),
    RUNNING: frozenset({COMPLETED, FAILED, CANCELLED, INTERRUPTED}),
    INTERRUPTED: frozenset({QUEUED}),
    CANCELLED: frozenset({QUEUED}),
    FAILED: frozenset({QUEUED}),
    COMPLETED: frozenset(),
}

TWIN = "twin"
LADDER = "ladder"
SWEEP = "sweep"
SEEDS = "seeds"
ARCHITECTURES = "architectures"
GROUP_KINDS = (TWIN, LADDER, SWEEP, SEEDS, ARCHITECTURES)
ARTIFACT_KINDS = ("checkpoint", "export", "log", "analysis")
METRIC_SPLITS = ("train", "test", "val", "system")


def sources_of(status: str) -> list[str]:
    """Statuses from which a run may move to `status`."""
    return [source for source, targets in ALLOWED_TRANSITIONS.items() if status in targets]
